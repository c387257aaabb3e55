"""What the benchmarks in bench/ share: the command line they record, a child process that
measures one configuration, and the result file naming the machine (stdlib only).

Every result file starts with the same fields: `benchmark`, `command` (how to rerun it),
`cpu` (model name and widest vector extension), `bf16_flags` (the CPU's bfloat16 features),
`cores` and `date` (UTC, ISO 8601); the benchmark's own fields follow. Files are written
atomically (`records.files.write_json_atomic`).

The scripts run as `python bench/NAME.py` and put the repository root on `sys.path` before
they import this module as `bench.common`, so it also loads when a script is imported as a
module (a child started with `python -c`, a test).

Example:
```python
from bench.common import command_line, run_child, write_result

command = command_line(argv)
measured = run_child(__file__, {"size": 224}, what="Xception at 224 px")
write_result(args.out, "tower_speed", command, rows=[measured])
```
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MACHINE_FIELDS = ("cpu", "bf16_flags", "cores", "date")


def command_line(argv=None) -> str:
    """The shell command that reran this benchmark: `python SCRIPT ARGS...`, each word quoted
    for the shell. `argv` is what `main` parsed (None: this process's own arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *args])


def run_child(script, spec: dict, *, env=None, cwd=None, what: str | None = None) -> dict:
    """Run `python SCRIPT --child JSON(spec)` in a fresh process and return the dict on the
    last line of its standard output that starts with `{`.

    `env` is the child's whole environment (None: this process's), `cwd` its working folder.
    A child that fails or prints no such line stops the benchmark: `SystemExit` with an
    `error:` line naming `what` (default: the script), the spec and the child's last line of
    standard error (exit status 1, no traceback).
    """
    text = json.dumps(spec)
    done = subprocess.run([sys.executable, str(script), "--child", text], env=env, cwd=cwd,
                          capture_output=True, text=True)
    found = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("{")]
    if done.returncode == 0 and found:
        return json.loads(found[-1])
    errors = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    last = errors[-1] if errors else (f"exit status {done.returncode}" if done.returncode
                                      else "it printed no result")
    label = what or f"the child run of {pathlib.Path(script).name}"
    raise SystemExit(f"error: {label} failed (spec {text}): {last}")


def machine_fields() -> dict:
    """The fields naming where and when a timing ran: `cpu`, `bf16_flags`, `cores`, `date`."""
    from records.machine import bf16_flags, cpu_model

    now = datetime.datetime.now(datetime.timezone.utc)
    return {"cpu": cpu_model(), "bf16_flags": bf16_flags(), "cores": os.cpu_count(),
            "date": now.isoformat(timespec="seconds")}


def result_record(benchmark: str, command: str, /, **fields) -> dict:
    """A result: `benchmark`, `command`, the machine fields, then the benchmark's `fields`
    (which may not reuse those names: ValueError)."""
    clash = sorted({"benchmark", "command", *MACHINE_FIELDS} & set(fields))
    if clash:
        raise ValueError(f"result fields {clash} are recorded by bench.common")
    return {"benchmark": benchmark, "command": command, **machine_fields(), **fields}


def save_result(path, record: dict) -> None:
    """Write `record` as indented JSON to `path` atomically (making its folder) and print
    `wrote PATH`."""
    from records.files import write_json_atomic

    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(str(path), record, indent=2)
    print(f"wrote {path}")


def write_result(path, benchmark: str, command: str, /, **fields) -> dict:
    """Write the result of `benchmark` (see `result_record`) to `path`; returns the record."""
    record = result_record(benchmark, command, **fields)
    save_result(path, record)
    return record

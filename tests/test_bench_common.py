"""bench/common.py: the recorded command line, the child-process measurement and the result
file every benchmark writes (machine fields, atomic write); every bench script uses them."""

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from bench import common

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""\
    import json, sys
    spec = json.loads(sys.argv[2])
    if spec.get("fail"):
        print("some log line", file=sys.stderr)
        raise SystemExit("ValueError: " + spec["fail"])
    print("noise before the result")
    print(json.dumps({"twice": 2 * spec["n"]}))
    if spec.get("trailing"):
        print("not json")
""")


def test_command_line_quotes_each_word(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench/x.py", "--from-argv"])
    assert common.command_line(["--name", "a b", "--n", "3"]) == \
        "python bench/x.py --name 'a b' --n 3"
    assert common.command_line() == "python bench/x.py --from-argv"
    assert common.command_line([]) == "python bench/x.py"


def test_run_child_returns_the_last_json_line(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    assert common.run_child(script, {"n": 4}) == {"twice": 8}
    assert common.run_child(script, {"n": 5, "trailing": True}, cwd=tmp_path) == {"twice": 10}


def test_run_child_names_what_failed_the_spec_and_the_last_error_line(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with pytest.raises(SystemExit) as info:
        common.run_child(script, {"n": 1, "fail": "no such tower"}, what="the measurement of x")
    message = str(info.value.code)
    assert message.startswith("error: the measurement of x failed")
    assert '{"n": 1, "fail": "no such tower"}' in message
    assert message.endswith("ValueError: no such tower")
    quiet = tmp_path / "quiet.py"
    quiet.write_text("print('no result here')\n")
    with pytest.raises(SystemExit, match="quiet.py failed .*printed no result"):
        common.run_child(quiet, {})


def test_write_result_records_the_machine_and_writes_atomically(tmp_path, capsys):
    out = tmp_path / "deeper" / "r.json"
    record = common.write_result(out, "demo", "python bench/demo.py", rows=[1, 2],
                                 pair=(3, 4))
    assert capsys.readouterr().out == f"wrote {out}\n"
    data = json.loads(out.read_text())
    assert list(data)[:6] == ["benchmark", "command", "cpu", "bf16_flags", "cores", "date"]
    assert data["benchmark"] == "demo" and data["command"] == "python bench/demo.py"
    assert data["cpu"] and isinstance(data["bf16_flags"], list) and data["cores"] >= 1
    assert data["date"].endswith("+00:00") and data["rows"] == [1, 2]
    assert data["pair"] == [3, 4] and record["rows"] == [1, 2]
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary left
    with pytest.raises(ValueError, match="cores"):
        common.result_record("demo", "python x", cores=3)


def test_common_loads_without_tensorflow():
    code = ("import sys; sys.path.insert(0, %r); import bench.common; "
            "assert 'tensorflow' not in sys.modules" % str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-1000:]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")
                                          if p.name != "common.py"))
def test_every_bench_script_writes_through_common(script):
    text = (ROOT / "bench" / script).read_text()
    assert "from bench.common import" in text and "command_line(argv)" in text
    assert "write_result(" in text or "save_result(" in text
    assert "shlex" not in text and "write_text(json" not in text

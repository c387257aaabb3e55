"""Run many bad-input cases of one CLI in a single fresh process (one TensorFlow start at most).

    python tests/reliability/cli_driver.py MODULE '[["--flag", "value"], ...]'

For each argv: `MODULE.main(argv)` with stdout/stderr captured; prints one JSON line
{"argv", "rc", "stderr", "tf"} where "tf" says whether TensorFlow had been imported by then.
Order the cases so that those expected to stay TensorFlow-free come first.
"""

import contextlib
import importlib
import io
import json
import sys

module = importlib.import_module(sys.argv[1])
for argv in json.loads(sys.argv[2]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = module.main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException as exc:  # noqa: BLE001 - reported, the test fails on it
            rc = f"crash: {type(exc).__name__}: {exc}"
    print(json.dumps({"argv": argv, "rc": rc, "stderr": err.getvalue(),
                      "tf": "tensorflow" in sys.modules}), flush=True)

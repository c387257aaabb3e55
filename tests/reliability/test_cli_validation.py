"""Every CLI given bad input exits with status 2 and one `error:` line naming the bad value,
before TensorFlow starts work (not even imported, for the cases that need no model).

Cases run through `cli_driver.py`, one fresh process per CLI; plus one real process per CLI
for the exit status and stderr of the program itself."""

import json
import os

import pytest

from faultkit import ROOT, run_cli, set_args

HERE = os.path.dirname(os.path.abspath(__file__))


def drive(module, cases, timeout=300):
    """{case name: result} for `cases` = [(name, argv)] run in one process."""
    proc = run_cli([os.path.join(HERE, "cli_driver.py"), module,
                    json.dumps([argv for _, argv in cases])], timeout=timeout,
                   env={"PYTHONPATH": str(ROOT)})
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(cases), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {name: row for (name, _), row in zip(cases, rows)}


def check(results, expectations):
    """expectations: {name: (needle in the message, TensorFlow may be imported by then)}."""
    problems = []
    for name, (needle, tf_ok) in expectations.items():
        row = results[name]
        lines = row["stderr"].strip().splitlines()
        if row["rc"] != 2:
            problems.append(f"{name}: exit {row['rc']!r}, stderr {row['stderr'][-300:]!r}")
        elif len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{name}: not one 'error:' line: {row['stderr'][-500:]!r}")
        elif needle not in lines[0]:
            problems.append(f"{name}: {needle!r} not named in {lines[0]!r}")
        elif row["tf"] and not tf_ok:
            problems.append(f"{name}: imported TensorFlow before rejecting the input")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def files(tmp_path_factory, synthetic_records, reference_run):
    """Paths the cases refer to: records, a saved model, an index, class maps, weights."""
    import numpy as np

    from dualencoder.search import store as index_lib
    from records.schema import read_manifest

    root = tmp_path_factory.mktemp("cli")
    idx = root / "index"
    index_lib.write_embeddings_index(idx, np.eye(5, 8, dtype=np.float32),
                                     [f"p{i}.jpg" for i in range(5)], fingerprint="x")
    classes = read_manifest(synthetic_records["zeroshot"])["class_names"]
    dup = root / "dup.map"
    dup.write_text(f"{classes[0]},same\n{classes[1]},same\n")
    empty_classes = root / "no-classes"
    empty_classes.mkdir()
    wrong = root / "wrong.weights.h5"
    import keras

    keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)]).save_weights(str(wrong))
    return {"records": synthetic_records["train"], "zeroshot": synthetic_records["zeroshot"],
            "model": reference_run["workdir"], "index": str(idx), "dup": str(dup),
            "no_classes": str(empty_classes), "wrong": str(wrong), "root": str(root)}


def test_train_cli(files):
    r, w = files["records"], os.path.join(files["root"], "w")
    base = ["--records", r, "--workdir", w]
    cases = [
        ("batch 0", base + ["--batch-size", "0"]),
        ("batch -3", base + ["--set", "data.batch_size=-3"]),
        ("unknown key", base + ["--set", "run.nope=1"]),
        ("missing records", ["--records", "/nonexistent/recs", "--workdir", w]),
        ("missing val", base + ["--val-records", "/nonexistent/val"]),
        ("missing config", base + ["--config", "/nonexistent/c.json"]),
        ("missing weights", base + ["--set", "model.image_weights=/nonexistent/w.h5"]),
        ("bad choice", base + ["--set", "model.loss=nope"]),
        ("epochs -1", base + ["--epochs", "-1"]),
        ("wrong image tower", base + set_args(["model.image_tower=notanet"])),
        ("wrong text tower", base + set_args(["model.text_tower=/nonexistent/bert"])),
        ("wrong-shape weights", base + set_args([f"model.image_weights={files['wrong']}"])),
    ]
    check(drive("train", cases), {
        "batch 0": ("data.batch_size=0", False), "batch -3": ("data.batch_size=-3", False),
        "unknown key": ("run.nope", False), "missing records": ("/nonexistent/recs", False),
        "missing val": ("/nonexistent/val", False), "missing config": ("/nonexistent/c.json", False),
        "missing weights": ("/nonexistent/w.h5", False), "bad choice": ("model.loss='nope'", False),
        "epochs -1": ("optim.epochs=-1", False), "wrong image tower": ("notanet", True),
        "wrong text tower": ("/nonexistent/bert", True),
        "wrong-shape weights": (files["wrong"], True),
    })
    assert not os.path.exists(os.path.join(w, "checkpoints"))  # nothing trained



def test_train_cli_refuses_runs_that_would_train_nothing(synthetic_records, tmp_path):
    """Inputs that used to train 0 steps (or at 1x1 px), or crash with a traceback, stop
    before training with one line naming the cause, and write nothing."""
    r, w = synthetic_records["train"], str(tmp_path / "w")
    base = ["--records", r, "--workdir", w]
    binary, invalid, listed, big = (tmp_path / n for n in ("b", "i.json", "l.json", "g.json"))
    binary.write_bytes(bytes(range(256)) * 4)
    invalid.write_text('{"optim": {"lr": 1e-3,}}')
    listed.write_text("[1, 2, 3]")
    big.write_text(json.dumps({"data": {"batch_size": 200}}))
    cases = [
        ("binary config", base + ["--config", str(binary)]),
        ("invalid config", base + ["--config", str(invalid)]),
        ("list config", base + ["--config", str(listed)]),
        ("huge lr", base + set_args(["optim.lr=1e308"])),
        ("image size 1", base + ["--set", "model.image_size=1"]),
        ("batch > data", base + ["--set", "data.batch_size=1000000"]),
        ("config batch > data", base + ["--config", str(big)]),
        ("no captions", ["--records", synthetic_records["zeroshot"], "--workdir", w]),
    ]
    check(drive("train", cases), {
        "binary config": (str(binary), False), "invalid config": ("not valid JSON", False),
        "list config": ("expected a JSON object", False),
        "huge lr": ("optim.lr=1e+308: must be > 0 and <= 1", False),
        "image size 1": ("model.image_size=1: xception needs at least 71 px", False),
        "batch > data": ("data.batch_size=1000000 is larger than the 128 training pairs",
                         True),
        "config batch > data": ("data.batch_size=200 is larger than the 128", True),
        "no captions": ("has no captioned images", True),
    })
    assert not os.path.exists(w)  # nothing written

def test_evaluate_cli(files):
    out = os.path.join(files["root"], "out")
    m, zs, r = files["model"], files["zeroshot"], files["records"]
    cases = [
        ("batch 0", ["retrieval", "--model", m, "--data", r, "--out", out, "--batch-size", "0"]),
        ("k 0", ["retrieval", "--model", m, "--data", r, "--out", out, "--ks", "0"]),
        ("k -1", ["retrieval", "--model", m, "--data", r, "--out", out, "--ks", "1,-1"]),
        ("missing model", ["zeroshot", "--model", "/nonexistent/m", "--data", zs, "--out", out]),
        ("shots 0", ["kshot", "--model", m, "--train", zs, "--test", zs, "--out", out,
                     "--shots", "0"]),
        ("missing data", ["zeroshot", "--model", m, "--data", "/nonexistent/d", "--out", out]),
        ("empty classes", ["zeroshot", "--model", m, "--data", files["no_classes"],
                           "--out", out]),
        ("duplicate classes", ["zeroshot", "--model", m, "--data", zs, "--out", out,
                               "--class-map", files["dup"]]),
        ("k > gallery", ["retrieval", "--model", m, "--data", r, "--out", out, "--ks", "5000"]),
        ("wrong arch", ["baseline", "--arch", "notanet", "--weights", "none", "--train", zs,
                        "--test", zs, "--out", out]),
        ("wrong-shape weights", ["baseline", "--arch", "xception", "--weights", files["wrong"],
                                 "--train", zs, "--test", zs, "--out", out]),
    ]
    check(drive("dualencoder.cli.evaluate", cases), {
        "batch 0": ("0", False), "k 0": ("'0'", False), "k -1": ("1,-1", False),
        "missing model": ("/nonexistent/m", False), "missing data": ("/nonexistent/d", True),
        "empty classes": ("no class folders", True), "shots 0": ("'0'", False),
        "duplicate classes": ("duplicate class name 'same'", True),
        "k > gallery": ("5000", True), "wrong arch": ("notanet", True),
        "wrong-shape weights": (files["wrong"], True),
    })
    assert not os.path.exists(out)


def test_retrieval_cli(files):
    idx, m = files["index"], files["model"]
    cases = [
        ("k 0", ["search", "--index", idx, "--query", "a dog", "-k", "0"]),
        ("k -2", ["search", "--index", idx, "--query", "a dog", "-k", "-2"]),
        ("k text", ["search", "--index", idx, "--query", "a dog", "-k", "many"]),
        ("k > gallery", ["search", "--index", idx, "--query", "a dog", "-k", "6"]),
        ("empty query", ["search", "--index", idx, "--query", "  "]),
        ("missing index", ["search", "--index", "/nonexistent/idx", "--query", "a dog"]),
        ("missing image", ["search", "--index", idx, "--image", "/nonexistent/q.jpg"]),
        ("missing model", ["index", "--model", "/nonexistent/m", "--images", files["root"],
                           "--out", os.path.join(files["root"], "i2")]),
        ("missing images", ["index", "--model", m, "--images", "/nonexistent/photos",
                            "--out", os.path.join(files["root"], "i3")]),
        ("batch 0", ["index", "--model", m, "--images", files["root"], "--out",
                     os.path.join(files["root"], "i4"), "--batch-size", "0"]),
    ]
    check(drive("retrieval", cases), {
        "k 0": ("'0'", False), "k -2": ("'-2'", False), "k text": ("'many'", False),
        "k > gallery": ("-k 6", False), "empty query": ("empty query", False),
        "missing index": ("/nonexistent/idx", False), "missing image": ("/nonexistent/q.jpg", False),
        "missing model": ("/nonexistent/m", False), "missing images": ("/nonexistent/photos", False),
        "batch 0": ("'0'", False),
    })


def test_records_cli(files):
    out = os.path.join(files["root"], "rec-out")
    a_file = os.path.join(files["root"], "a-file")
    with open(a_file, "w") as fh:
        fh.write("not a directory")
    cases = [
        ("out is a file", ["build", "synthetic", "--out", a_file, "--num-images", "4"]),
        ("shard 0", ["build", "synthetic", "--out", out, "--shard-size", "0"]),
        ("num -5", ["build", "synthetic", "--out", out, "--num-images", "-5"]),
        ("unknown source", ["build", "nosuch", "--out", out]),
        ("missing dir", ["verify", "/nonexistent/recs"]),
        ("missing inspect", ["inspect", "/nonexistent/recs2"]),
        ("missing csv", ["build", "csv", "/nonexistent/c.csv", "--out", out]),
        ("out under a file", ["build", "synthetic", "--out", os.path.join(a_file, "sub"),
                              "--num-images", "4"]),
    ]
    check(drive("records.__main__", cases), {
        "shard 0": ("'0'", False), "num -5": ("'-5'", False), "unknown source": ("nosuch", False),
        "missing dir": ("/nonexistent/recs", False), "missing inspect": ("/nonexistent/recs2", False),
        "missing csv": ("/nonexistent/c.csv", True),
        "out is a file": ("a-file: exists and is not a directory", False),
        "out under a file": ("a-file", True),
    })
    assert not os.path.exists(out)


@pytest.mark.parametrize("argv, needle", [
    (["train.py", "--set", "data.batch_size=0"], "data.batch_size=0"),
    (["evaluate.py", "retrieval", "--model", "m", "--data", "d", "--out", "o", "--ks", "0"], "0"),
    (["retrieval.py", "search", "--index", "/nonexistent/i", "--query", "x", "-k", "0"], "'0'"),
    (["-m", "records", "build", "synthetic", "--out", "o", "--shard-size", "0"], "'0'"),
])
def test_real_process_exit_status_and_one_line(argv, needle):
    proc = run_cli(argv, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines

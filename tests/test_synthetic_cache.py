"""The synthetic default is built once into the cache, also when several runs start together."""

import json
import os
import subprocess
import sys

from records.verify import verify_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = ("import sys; from dualencoder.train.setup import synthetic_default; "
         "synthetic_default(sys.argv[1], 16, image_size=32, log=lambda *_: None)")


def _splits(cache):
    from dualencoder.train.setup import synthetic_default

    return synthetic_default(str(cache), 16, image_size=32, log=lambda *_: None)


def test_runs_started_together_share_one_complete_build(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path)], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    dirs = _splits(tmp_path)
    for split, out in dirs.items():
        verify_records(out)
    (root,) = os.listdir(tmp_path)
    assert sorted(os.listdir(tmp_path / root)) == ["train", "val", "zeroshot"]  # no leftovers


def test_a_broken_split_is_rebuilt(tmp_path):
    dirs = _splits(tmp_path)
    manifest = os.path.join(dirs["val"], "manifest.json")
    with open(manifest) as fh:
        expected = json.load(fh)["num_records"]
    shard = next(f for f in os.listdir(dirs["val"]) if f.endswith(".tfrecord"))
    with open(os.path.join(dirs["val"], shard), "r+b") as fh:
        fh.truncate(10)
    again = _splits(tmp_path)
    assert again == dirs
    verify_records(again["val"])
    with open(manifest) as fh:
        assert json.load(fh)["num_records"] == expected

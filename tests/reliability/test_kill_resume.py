"""SIGKILL mid-epoch, then the same command: nothing lost, nothing seen twice, same weights;
on the streaming path and on the boundary-cached one (frozen parts' outputs read from disk)."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from faultkit import (ROOT, STEPS_PER_EPOCH, assert_ledgers_match, assert_same_arrays,
                      checkpoint_arrays, read_ledger, run_cli, set_args)


def _ledger_steps(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return sum(1 for line in fh if line.endswith("\n"))
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("path", ["streaming", "boundary-cached"])
def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(request, tmp_path, path):
    reference_run = request.getfixturevalue(
        "reference_run" if path == "streaming" else "boundary_reference_run")
    # A random mid-epoch step (never an epoch boundary); RELIABILITY_KILL_STEP pins it.
    choices = [s for s in range(3, 2 * STEPS_PER_EPOCH - 2) if s % STEPS_PER_EPOCH]
    target = int(os.environ.get("RELIABILITY_KILL_STEP") or random.choice(choices))
    workdir = str(tmp_path / "killed")
    argv = ["train.py", "--records", reference_run["records"], "--workdir", workdir] + set_args(
        reference_run.get("extra", ()))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ledger = os.path.join(workdir, "ledger.jsonl")
    deadline = time.time() + 240
    try:
        while _ledger_steps(ledger) < target:
            assert proc.poll() is None, f"train.py ended before step {target}: {proc.stderr.read()}"
            assert time.time() < deadline, "train.py made no progress"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = read_ledger(workdir)
    killed_at = before[-1]["step"]
    assert target <= killed_at < 2 * STEPS_PER_EPOCH, (target, killed_at)

    done = run_cli(argv)
    assert done.returncode == 0, done.stderr[-2000:]
    m = re.search(r"resuming .* from ckpt-(\d+): epoch (\d+), batch (\d+) of the epoch, "
                  r"step (\d+)", done.stdout)
    assert m, done.stdout[-2000:]
    resumed_from, epoch, batch = int(m.group(4)), int(m.group(2)), int(m.group(3))
    # The newest complete checkpoint: at most one interval (checkpoint_every=2) is redone.
    assert killed_at - 2 <= resumed_from <= killed_at, (killed_at, resumed_from)
    assert (epoch - 1) * STEPS_PER_EPOCH + batch == resumed_from  # data position restored
    rows = read_ledger(workdir)
    assert rows[len(before)]["step"] == resumed_from + 1  # continues right after it
    assert len(rows) - len(before) == 2 * STEPS_PER_EPOCH - resumed_from

    assert_ledgers_match(rows, reference_run["ledger"])
    assert_same_arrays(checkpoint_arrays(workdir), reference_run["final"])

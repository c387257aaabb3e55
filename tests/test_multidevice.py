"""MirroredStrategy on two logical CPU devices and MultiWorkerMirroredStrategy with two local
worker processes on loopback: the same global batch gives the same loss and the same update
as one device. Each mode runs in its own process (tests/multidevice_worker.py)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multidevice_worker.py")


def _env(**extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(mode, out, timeout=300):
    subprocess.run([sys.executable, WORKER, mode, str(out)], check=True, env=_env(),
                   timeout=timeout, capture_output=True)
    return json.loads(out.read_text())


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run("single", tmp_path_factory.mktemp("single") / "out.json")


def _assert_same(a, b):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    np.testing.assert_allclose(b["weights"], a["weights"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b["weights_abs"], a["weights_abs"], rtol=1e-5, atol=1e-5)


def test_mirrored_two_devices_matches_one(single, tmp_path):
    mirrored = _run("mirrored", tmp_path / "out.json")
    assert mirrored["replicas"] == 2
    _assert_same(single, mirrored)


def test_multi_worker_two_processes_matches_one(single, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, "multi_worker", str(tmp_path / f"w{index}.json"), str(index)],
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, out.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    for r in results:
        assert r["replicas"] == 2
        _assert_same(single, r)

"""The machine description benchmark tables and recipe reports print."""

import os

from records import machine


def test_cpu_model_reads_proc_cpuinfo_model_name():
    name = machine.cpu_model()
    assert isinstance(name, str) and name.strip() == name and name
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            first = next((ln for ln in fh if ln.startswith("model name")), None)
        if first is not None:
            assert name == first.split(":", 1)[1].strip()


def test_cpu_model_falls_back_without_proc_cpuinfo(monkeypatch):
    def missing(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", missing)
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    assert machine.cpu_model() == "unknown CPU"
    monkeypatch.setattr(machine.platform, "processor", lambda: "arm")
    assert machine.cpu_model() == "arm"


def test_tensorflow_defaults_enable_onednn_on_x86_and_keep_user_values(monkeypatch):
    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert machine.tensorflow_defaults(env) == {"KERAS_BACKEND": "tensorflow",
                                                "TF_ENABLE_ONEDNN_OPTS": "1"}
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0", "KERAS_BACKEND": "tensorflow",
                   "TF_ENABLE_ONEDNN_OPTS": "1"}
    env = {"TF_ENABLE_ONEDNN_OPTS": "0"}  # a user's choice wins
    machine.tensorflow_defaults(env)
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_tensorflow_defaults_leave_onednn_alone_off_x86(monkeypatch):
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64")
    env = {}
    machine.tensorflow_defaults(env)
    assert "TF_ENABLE_ONEDNN_OPTS" not in env and env["KERAS_BACKEND"] == "tensorflow"

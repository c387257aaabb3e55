"""The machine description benchmark tables and recipe reports print."""

import os

from dualencoder import machine


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

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
            assert name.startswith(first.split(":", 1)[1].strip())


def test_cpu_model_names_the_vector_extension(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    for flags, expected in [("fpu sse2 avx avx2 avx512f avx512bw", "AMD EPYC (AVX-512)"),
                            ("fpu sse2 avx avx2 fma", "AMD EPYC (AVX2)"),
                            ("fpu sse2", "AMD EPYC")]:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n")
        assert machine.cpu_model() == expected


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
    monkeypatch.setattr(machine, "nvidia_driver", lambda: True)
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


def test_tensorflow_defaults_skip_cuda_without_an_nvidia_driver(monkeypatch):
    monkeypatch.setattr(machine, "nvidia_driver", lambda: False)
    monkeypatch.setattr(machine.sys, "platform", "linux")
    env = {}
    machine.tensorflow_defaults(env)
    assert env["TF_ENABLED_DEVICE_TYPES"] == "CPU"
    env = {"TF_ENABLED_DEVICE_TYPES": "CPU,GPU"}
    machine.tensorflow_defaults(env)
    assert env["TF_ENABLED_DEVICE_TYPES"] == "CPU,GPU"


def test_startup_noise_follows_the_log_level():
    info = (b"I0000 00:00:1796562051.483141   14255 port.cc:153] oneDNN custom operations are "
            b"on. You may see ...\n")
    error = b"E0000 00:00:1796562055.549023   14255 cuda_platform.cc:52] failed call to cuInit\n"
    banner = (b"WARNING: All log messages before absl::InitializeLog() is called are written "
              b"to STDERR\n")
    assert machine.startup_noise(info, 2) and machine.startup_noise(banner, 2)
    assert not machine.startup_noise(error, 2) and machine.startup_noise(error, 3)
    assert not machine.startup_noise(info, 0) and not machine.startup_noise(banner, 0)
    assert not machine.startup_noise(b"Traceback (most recent call last):\n", 3)


def test_programs_that_load_tensorflow_print_no_startup_noise(synthetic_records, tmp_path):
    """`train.py` on class-folder records loads TensorFlow (to count captions), then stops
    with one error line: stderr holds that line and nothing of TensorFlow's start-up."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLED_DEVICE_TYPES", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = root
    proc = subprocess.run([sys.executable, "train.py", "--records", synthetic_records["zeroshot"],
                           "--workdir", str(tmp_path / "w")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no captioned images" in lines[0], proc.stderr

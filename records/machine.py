"""What machine a measurement ran on, for benchmark tables and recipe reports (stdlib only)."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import platform
import re
import sys
import tempfile


def cpu_model() -> str:
    """The CPU's model name and widest vector extension, e.g. "AMD EPYC (AVX-512)": Linux's
    /proc/cpuinfo (model name, flags), else `platform.processor()`, else "unknown CPU".

    The extension matters for every timing (TensorFlow's CPU kernels differ between AVX2 and
    AVX-512, about 2x on the towers), and a model name such as "AMD EPYC" covers both.

    Example:
    ```python
    from records.machine import cpu_model
    print(f"2 cores of {cpu_model()}")   # e.g. "2 cores of AMD EPYC (AVX-512)"
    ```
    """
    name = flags = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if name is None and line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif flags is None and line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if name is not None and flags is not None:
                    break
    except OSError:
        pass
    if not name:
        return platform.processor() or "unknown CPU"
    extension = vector_extension(flags or set())
    return f"{name} ({extension})" if extension else name


def bf16_flags() -> list[str]:
    """The CPU's bfloat16 feature flags (amx_bf16, avx512_bf16) from /proc/cpuinfo; [] when
    it has none or the file is unreadable. Recorded beside every timing."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return sorted({"amx_bf16", "avx512_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def vector_extension(flags: set) -> str:
    """The widest x86 SIMD extension among /proc/cpuinfo `flags`: "AVX-512", "AVX2" or ""."""
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else ""


def tensorflow_defaults(environ=None) -> dict:
    """Set TensorFlow's environment defaults; call before TensorFlow is imported (the
    command-line programs do, first thing in `main`). A variable already set is kept.

    - `KERAS_BACKEND=tensorflow`, `TF_CPP_MIN_LOG_LEVEL=2` (no C++ info logs or warnings).
    - `TF_ENABLE_ONEDNN_OPTS=1` on x86-64: TensorFlow turns its oneDNN kernels on by default
      only on CPUs with AVX-512 VNNI/BF16 or AMX, so this changes AVX2-only CPUs. On a 2-core
      AMD AVX2 machine (a measurement not kept as a result file) they ran Xception
      inference ~1.15x faster at 299 and 224 px, with far fewer page faults;
      `bench/onednn.py` measures both settings on the machine at hand.
    - `TF_ENABLED_DEVICE_TYPES=CPU` on Linux without an NVIDIA driver (no /proc/driver/nvidia):
      TensorFlow then does not try CUDA ("failed call to cuInit: ... (303)" on every start).
      (`CUDA_VISIBLE_DEVICES=""` does not stop that call.)

    Called with the process environment, it also applies `TF_CPP_MIN_LOG_LEVEL` to what
    TensorFlow logs while it loads: its C++ libraries log at load time, before their logging
    is set up, so lines below the level ("oneDNN custom operations are on", "Could not find
    cuda drivers", each twice, under "All log messages before absl::InitializeLog() ...")
    reached stderr whatever the level. The import of `tensorflow` runs with stderr (fd 2)
    captured, and the lines that are not such start-up logs are written back afterwards.

    Args:
        environ: the mapping to update (default `os.environ`).

    Returns:
        The variables this call set (name -> value).

    Example:
    ```python
    from records.machine import tensorflow_defaults
    tensorflow_defaults()        # before `import tensorflow`
    import tensorflow as tf
    ```
    """
    real = environ is None
    environ = os.environ if environ is None else environ
    wanted = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if platform.machine().lower() in ("x86_64", "amd64"):
        wanted["TF_ENABLE_ONEDNN_OPTS"] = "1"
    if sys.platform.startswith("linux") and not nvidia_driver():
        wanted["TF_ENABLED_DEVICE_TYPES"] = "CPU"
    set_now = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(set_now)
    if real and "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    return set_now


def nvidia_driver() -> bool:
    """Whether an NVIDIA kernel driver is loaded (Linux: /proc/driver/nvidia exists)."""
    return os.path.exists("/proc/driver/nvidia")


# A line of TensorFlow's C++ logging: severity (I, W, E, F), date, time, thread, file:line.
_LOG_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def startup_noise(line: bytes, min_level: int) -> bool:
    """Whether `line` is a C++ log line below `min_level` (0 info .. 3 fatal), or the absl
    banner above such lines (dropped from level 1 on)."""
    match = _LOG_LINE.match(line)
    if match:
        return "IWEF".index(match.group(1).decode()) < min_level
    return min_level >= 1 and line.strip() == _BANNER


@contextlib.contextmanager
def filtered_stderr(min_level: int):
    """Capture fd 2 in a temporary file for the block, then write back its lines except
    `startup_noise`. Without a usable fd 2, the block runs unfiltered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True)
                    if not startup_noise(ln, min_level)]
            if kept:
                os.write(2, b"".join(kept))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` (once) with a loader that imports it under `filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    """A loader that runs `loader`'s `exec_module` under `filtered_stderr`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        except ValueError:
            level = 0
        with filtered_stderr(level):
            self.loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)

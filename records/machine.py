"""What machine a measurement ran on, for benchmark tables and recipe reports (stdlib only)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name: Linux's /proc/cpuinfo, else `platform.processor()`, else
    "unknown CPU".

    Example:
    ```python
    from records.machine import cpu_model
    print(f"2 cores of {cpu_model()}")   # e.g. "2 cores of AMD EPYC"
    ```
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tensorflow_defaults(environ=None) -> dict:
    """Set TensorFlow's environment defaults; call before TensorFlow is imported (the
    command-line programs do, first thing in `main`). A variable already set is kept.

    - `KERAS_BACKEND=tensorflow`, `TF_CPP_MIN_LOG_LEVEL=2` (no C++ info logs).
    - `TF_ENABLE_ONEDNN_OPTS=1` on x86-64: TensorFlow turns its oneDNN kernels on by default
      only on CPUs with AVX-512 VNNI/BF16 or AMX, so this changes AVX2-only CPUs. On a 2-core
      AMD AVX2 machine (a measurement not kept as a result file) they ran Xception
      inference ~1.15x faster at 299 and 224 px, with far fewer page faults;
      `bench/onednn.py` measures both settings on the machine at hand.

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
    environ = os.environ if environ is None else environ
    wanted = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if platform.machine().lower() in ("x86_64", "amd64"):
        wanted["TF_ENABLE_ONEDNN_OPTS"] = "1"
    set_now = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(set_now)
    return set_now

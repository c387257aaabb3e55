"""What machine a measurement ran on, for benchmark tables and recipe reports (stdlib only)."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name: Linux's /proc/cpuinfo, else `platform.processor()`, else
    "unknown CPU".

    Example:
    ```python
    from dualencoder.machine import cpu_model
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

"""Progress of long passes, for every program: a live bar on a terminal, a few plain lines in
a log.

On a terminal (the stream's `isatty()`, stderr by default) it is a tqdm bar. Anywhere else (a
pipe, a file) it writes whole lines, no carriage returns or terminal codes: one when each
further tenth of the work is done (at most one every `min_interval` seconds) and one when the
pass completes, with the count and the time taken (a pass that fails or stops early ends
without it, and so does one that took under a second). `enabled=False` shows nothing.

Example:
```python
from records.progress import progress_bar, track

for batch in track(batches, total=len(batches), desc="encoding", unit="batch"):
    ...
with progress_bar(total=n, desc="embedding", unit="img") as bar:
    bar.update(32)
```
"""

from __future__ import annotations

import sys
import time

PARTS = 10  # a plain line at each further tenth of the work
MIN_INTERVAL = 3.0  # seconds between two plain lines at least (the last line excepted)
UNKNOWN_INTERVAL = 10.0  # seconds between plain lines when the total is not known
QUICK = 1.0  # a pass done within this many seconds, with no line yet, ends without one


def is_terminal(stream) -> bool:
    """True when `stream` is an interactive terminal (a live bar is welcome there)."""
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(total: int | None = None, *, desc: str, unit: str = "it", enabled: bool = True,
                 leave: bool = False, stream=None, min_interval: float = MIN_INTERVAL):
    """A progress bar with `update(n)`, `set_postfix(**values)` and `close()` (also a context
    manager): tqdm on a terminal, `LineProgress` elsewhere, `NoProgress` when not `enabled`."""
    if not enabled:
        return NoProgress()
    stream = stream or sys.stderr
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=stream,
                    dynamic_ncols=True)
    return LineProgress(total, desc=desc, unit=unit, stream=stream, min_interval=min_interval)


def track(iterable, *, total: int | None = None, desc: str, unit: str = "it",
          enabled: bool = True, leave: bool = False, stream=None):
    """The items of `iterable`, counted on a `progress_bar` (closed when the loop ends)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    bar = progress_bar(total, desc=desc, unit=unit, enabled=enabled, leave=leave, stream=stream)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    except BaseException:
        discard(bar)
        raise
    finally:
        bar.close()


def discard(bar) -> None:
    """End `bar` after a failure: a log gets no closing line (a terminal's bar just closes)."""
    if isinstance(bar, LineProgress):
        bar.closed = True
    bar.close()


class NoProgress:
    """A progress bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            discard(self)
        self.close()


class LineProgress(NoProgress):
    """Progress as plain lines (`desc: 40/100 img (40%), 2.1 s`) for logs and pipes."""

    def __init__(self, total, *, desc: str, unit: str, stream,
                 min_interval: float = MIN_INTERVAL, clock=time.monotonic):
        self.total = int(total) if total else None
        self.desc, self.unit, self.stream = desc, unit, stream
        self.min_interval, self.clock = float(min_interval), clock
        self.done, self.postfix, self.closed, self.lines = 0, "", False, 0
        self.start = self.last = clock()
        self.next_part = 1  # the next line is due when `next_part` tenths are done

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        now = self.clock()
        if self.total:
            if self.done >= self.total or self.done * PARTS < self.next_part * self.total:
                return  # the end has its own line (close)
            self.next_part = self.done * PARTS // self.total + 1
            if now - self.last < self.min_interval:
                return
        elif now - self.last < max(self.min_interval, UNKNOWN_INTERVAL):
            return
        self._line(f"{self._count()}, {now - self.start:.1f} s", now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if (self.done and (self.total is None or self.done >= self.total)
                and (self.lines or now - self.start >= QUICK)):
            self._line(f"{self._count()} in {now - self.start:.1f} s", now)

    def _count(self) -> str:
        if not self.total:
            return f"{self.done} {self.unit}"
        return f"{self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)"

    def _line(self, text: str, now: float) -> None:
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {text}{extra}", file=self.stream, flush=True)
        self.last = now
        self.lines += 1

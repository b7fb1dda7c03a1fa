"""Progress output that reads well in a terminal and in a log file.

On a terminal: a tqdm bar. Elsewhere (output piped to a file, CI): one plain line every
`every_s` seconds and one at the end, instead of a bar redrawn into thousands of lines.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "it",
                 enabled: bool = True, every_s: float = 10.0,
                 stream: TextIO | None = None) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.enabled, self.every_s = enabled, every_s
        self.stream = stream or sys.stderr
        self._postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._rate_from: tuple[float, int] | None = None  # (time, n) the rate counts from
        self._bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             file=self.stream)

    def update(self, n: int = 1) -> None:
        if self._rate_from is None:  # the first item carries start-up costs (an
            self._rate_from = (time.monotonic(), self.n + n)  # evaluation): not in the rate
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and (time.monotonic() - self._last >= self.every_s
                               or self.n >= self.total):
            self._print_line()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def write(self, message: str) -> None:
        """A message above the bar (or just a line), on standard output."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def line(self) -> str:
        now = time.monotonic()
        elapsed = now - self._start
        since, first = self._rate_from or (now, self.n)
        done = self.n - first
        left = (self.total - self.n) * (now - since) / done if done > 0 else float("nan")
        extra = "".join(f" {k}={v}" for k, v in self._postfix.items())
        percent = 100 * self.n / self.total if self.total else 100.0
        return (f"{self.desc} {self.n}/{self.total} {self.unit} ({percent:.0f}%), "
                f"{_clock(elapsed)} elapsed, ~{_clock(left)} left{extra}")

    def _print_line(self) -> None:
        self._last = time.monotonic()
        print(self.line(), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan: no rate yet
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

"""The progress bar shared by ``fastadam demo`` and ``fastadam bench``."""

from __future__ import annotations

import sys
import time


class Progress:
    """A minimal progress bar on a stream (stderr): redrawn in place on a terminal;
    otherwise only the lines given to :meth:`log` are written (logs stay readable).
    ``enabled=False`` writes nothing at all."""

    def __init__(self, total: int, stream=None, width: int = 30, enabled: bool = True):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = ""
        self.t0 = time.perf_counter()

    def set_label(self, label: str) -> None:
        self.label = label
        self._draw()

    def advance(self, k: int = 1) -> None:
        self.done = min(self.done + k, self.total)
        if self.tty:
            self._draw()

    def tick(self, label: str) -> None:
        """Advance by one and show ``label``."""
        self.label = label
        self.advance()

    def log(self, line: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        self._draw()

    def _draw(self) -> None:
        if not self.tty:
            return
        frac = self.done / self.total
        fill = int(round(frac * self.width))
        bar = "#" * fill + "-" * (self.width - fill)
        self.stream.write(f"\r\033[K[{bar}] {100 * frac:5.1f}%  {self.label}  "
                          f"{time.perf_counter() - self.t0:5.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

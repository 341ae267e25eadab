"""Progress of a long step: items done of the total and their rate, on stderr.

On a terminal, one line redrawn in place as a bar; in a log file (a workflow job's stderr), a
plain line every ``interval`` seconds and one at the end, so that a log shows how far a step got
and how fast, without carriage returns. Steps that finish within ``interval`` seconds print only
the final line.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """Count items of ``total`` as they are done: ``with Progress("decode", n, "files") as p:
    ... p.advance()``."""

    def __init__(self, label: str, total: int, unit: str = "items", interval: float = 10.0,
                 stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.bar = self.stream.isatty()
        self.interval = 0.2 if self.bar else interval
        self.done = 0
        self.start = self.last = time.perf_counter()

    def __enter__(self):
        return self

    def advance(self, count: float = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now, final=False)

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self._write(time.perf_counter(), final=True)
        elif self.bar:
            self.stream.write("\n")
        return False

    def _write(self, now: float, final: bool) -> None:
        seconds = max(now - self.start, 1e-9)
        rate = self.done / seconds
        share = self.done / self.total if self.total else 1.0
        shown_rate = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
        text = (f"{self.label}: {self.done:,.0f}/{self.total:,.0f} {self.unit} ({share:.0%}), "
                f"{shown_rate} {self.unit}/s, {seconds:.0f} s")
        if not final and rate > 0:
            text += f", {(self.total - self.done) / rate:.0f} s left"
        if self.bar:
            filled = round(24 * share)
            self.stream.write(f"\r[{'#' * filled}{'.' * (24 - filled)}] {text}\x1b[K"
                              + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

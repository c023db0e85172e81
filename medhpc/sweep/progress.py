"""Live progress of a sweep: per-stage done / running / queued / failed counts, as a tqdm bar
on a terminal, or one logged line per change elsewhere (a SLURM log, CI, a pipe).

:func:`count_stages` is the one place the counts are computed: the driver's live line, the
final table of ``python -m medhpc.sweep run|status`` and ``status --watch`` all use it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from tqdm import tqdm

log = logging.getLogger(__name__)

#: The count names, in the order they are shown.
FIELDS = ("done", "running", "queued", "failed", "total")

Counts = dict[str, dict[str, int]]


def count_stages(kinds: Mapping[str, str], done: Iterable[str], recorded: Mapping[str, Any]) -> Counts:
    """Done, running, queued, failed and total jobs per kind.

    ``kinds``: job key -> kind (in graph order, so the stages come out in order); ``done``:
    the keys whose outputs exist; ``recorded``: the driver's record by key (``{"state":
    "running" | "failed", ...}``). A done job counts as done whatever its record says; a job
    neither done nor recorded is queued.
    """
    done = set(done)
    counts: Counts = {}
    for key, kind in kinds.items():
        c = counts.setdefault(kind, dict.fromkeys(FIELDS, 0))
        c["total"] += 1
        state = "done" if key in done else recorded.get(key, {}).get("state", "queued")
        c[state if state in ("done", "running", "failed") else "queued"] += 1
    return counts


def finished(counts: Counts) -> bool:
    """Whether nothing is left to wait for: every job done, or none running and some failed
    (the driver stops then; the queued jobs wait on the failed ones)."""
    if all(c["done"] == c["total"] for c in counts.values()):
        return True
    return not any(c["running"] for c in counts.values()) and any(c["failed"] for c in counts.values())


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def stage_text(counts: Counts) -> str:
    """``prepare 1/1 done · train 2/4 done, 2 running · ...``."""
    parts = []
    for kind, c in counts.items():
        extra = [f"{c[k]} {k}" for k in ("running", "queued", "failed") if c[k]]
        parts.append(f"{kind} {c['done']}/{c['total']} done" + "".join(f", {e}" for e in extra))
    return " · ".join(parts)


class Progress:
    """Shows a sequence of per-stage counts: a tqdm bar (all jobs; the stages in its postfix)
    on a terminal, else one INFO line whenever the counts change.

    The time left is estimated from the jobs done since this reporter started (jobs done by an
    earlier run say nothing about the rate), so it is absent until one finishes.
    """

    def __init__(self, file: IO[str] | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.file = file if file is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.file, "isatty", lambda: False)())
        self.clock = clock
        self.started = clock()
        self.first_done: int | None = None
        self.last: Counts | None = None
        self.bar: Any = None

    def left_s(self, counts: Counts) -> float | None:
        """Seconds left at the rate jobs were done since the start, or None before any was."""
        done = sum(c["done"] for c in counts.values())
        total = sum(c["total"] for c in counts.values())
        if self.first_done is None:
            self.first_done = done
        finished_here = done - self.first_done
        if finished_here <= 0:
            return None
        return (self.clock() - self.started) / finished_here * (total - done)

    def line(self, counts: Counts) -> str:
        """The non-TTY line: the stages, the elapsed time and the estimate."""
        left = self.left_s(counts)
        tail = f"elapsed {_duration(self.clock() - self.started)}"
        if left is not None:
            tail += f", ~{_duration(left)} left"
        return f"progress: {stage_text(counts)} ({tail})"

    def update(self, counts: Counts) -> None:
        """Show ``counts`` (a non-TTY line only if they differ from the last ones)."""
        if not self.tty:
            if counts != self.last:
                log.info("%s", self.line(counts))
            else:
                self.left_s(counts)
            self.last = {k: dict(v) for k, v in counts.items()}
            return
        total = sum(c["total"] for c in counts.values())
        done = sum(c["done"] for c in counts.values())
        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, file=self.file, unit="job", desc="sweep", dynamic_ncols=True)
        self.bar.total = total  # grows once the attack jobs are known
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(stage_text(counts), refresh=True)
        self.last = counts

    def close(self) -> None:
        """End the bar (so the final table starts on its own line)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def watch(counts: Callable[[], Counts], interval_s: float, progress: Progress | None = None,
          sleep: Callable[[float], None] = time.sleep) -> Counts:  # fmt: skip
    """Show ``counts()`` every ``interval_s`` until :func:`finished`, or Ctrl-C;
    returns the last counts."""
    progress = progress or Progress()
    try:
        while True:
            now = counts()
            progress.update(now)
            if finished(now):
                return now
            sleep(interval_s)
    except KeyboardInterrupt:
        return progress.last or {}
    finally:
        progress.close()


__all__ = ["FIELDS", "Progress", "count_stages", "finished", "stage_text", "watch"]

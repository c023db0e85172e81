"""The self-test's frame: checks, their scale, running them, and the pass/fail table.

A check is a function of the :class:`Context` that returns a one-line detail (what it measured)
or raises: :class:`CheckFailed` for a failed comparison, any other exception for a crash. Both
are reported as a failure with the message, and the run goes on to the next check, so one
report shows everything that is wrong with a node.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class CheckFailed(AssertionError):
    """A self-test comparison did not hold (the message says which numbers)."""


@dataclass(frozen=True)
class Scale:
    """Problem sizes: the paper's scale on a GPU, small ones on the CPU (CI runs those)."""

    name: str
    vib_batch: int
    vib_latent: int
    vib_samples: int
    spsa_batch: int
    spsa_image: tuple[int, int, int]
    spsa_count: int
    large_batch: int
    large_image: tuple[int, int, int]
    large_count: int
    train_batch: int
    train_size: int
    resume_images: int
    resume_epochs: int
    attack_batch: int
    attack_size: int
    spsa_samples: int
    attack_steps: int


GPU_SCALE = Scale(
    name="gpu",
    vib_batch=256, vib_latent=257, vib_samples=12,
    spsa_batch=8, spsa_image=(3, 224, 224), spsa_count=64,
    # 32 images at 3 x 299^2 with 256 probes each: 2.2e9 elements, past int32 indexing.
    large_batch=32, large_image=(3, 299, 299), large_count=128,
    train_batch=32, train_size=224, resume_images=96, resume_epochs=3,
    attack_batch=4, attack_size=224, spsa_samples=256, attack_steps=3,
)  # fmt: skip

CPU_SCALE = Scale(
    name="cpu",
    vib_batch=16, vib_latent=33, vib_samples=3,
    spsa_batch=2, spsa_image=(3, 16, 16), spsa_count=8,
    large_batch=2, large_image=(3, 32, 32), large_count=4,
    train_batch=2, train_size=32, resume_images=40, resume_epochs=2,
    attack_batch=2, attack_size=32, spsa_samples=16, attack_steps=2,
)  # fmt: skip


@dataclass
class Context:
    """What every check gets: the device, the sizes, a scratch folder, and the options."""

    device: torch.device
    scale: Scale
    workdir: Path
    require_cuda_kernels: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        """Wait for the device (so a timing covers the work, not just its launch)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class Check:
    """One named check: ``run(ctx)`` returns its detail line or raises."""

    name: str
    what: str
    run: Callable[[Context], str]


@dataclass
class Outcome:
    """One row of the report."""

    name: str
    ok: bool
    seconds: float
    detail: str
    what: str = ""
    error: str | None = field(default=None, repr=False)


def run_checks(checks: Iterable[Check], ctx: Context, progress: Callable[[Check], None] | None = None) -> list[Outcome]:
    """Run every check in order; a failure or crash is recorded and the next check runs."""
    outcomes = []
    for check in checks:
        if progress is not None:
            progress(check)
        started = time.perf_counter()
        try:
            detail = check.run(ctx)
            ctx.sync()
            ok, error = True, None
        except CheckFailed as exc:
            ok, detail, error = False, str(exc), None
        except Exception as exc:  # a crash is a failure of the node, reported, not raised
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            error = traceback.format_exc()
            log.debug("%s crashed:\n%s", check.name, error)
        finally:
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode("default")
        seconds = time.perf_counter() - started
        outcomes.append(Outcome(check.name, ok, seconds, detail.splitlines()[0] if detail else "", check.what, error))
        log.info("%s %s (%.1f s): %s", "PASS" if ok else "FAIL", check.name, seconds, outcomes[-1].detail)
    return outcomes


def table(outcomes: Sequence[Outcome], header: str) -> str:
    """The pass/fail table as aligned text, with the totals last."""
    width = max([len(o.name) for o in outcomes] + [5])
    lines = [header, "", f"{'check':<{width}}  result  seconds  detail", f"{'-' * width}  ------  -------  ------"]
    for o in outcomes:
        lines.append(f"{o.name:<{width}}  {'PASS' if o.ok else 'FAIL':<6}  {o.seconds:7.1f}  {o.detail}")
    failed = [o.name for o in outcomes if not o.ok]
    total = sum(o.seconds for o in outcomes)
    lines.append("")
    lines.append(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} checks passed in {total:.1f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return "\n".join(lines)


def as_json(outcomes: Sequence[Outcome], facts: dict[str, object]) -> str:
    """The report as JSON: the node's facts, one object per check, and the verdict."""
    rows = [{k: v for k, v in asdict(o).items() if k != "error" or v is not None} for o in outcomes]
    return json.dumps({**facts, "ok": all(o.ok for o in outcomes), "checks": rows}, indent=2)

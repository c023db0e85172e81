"""Self-test of training: one bf16 step of ResNet50, and a train / kill / resume round trip
that must end with the same weights as an uninterrupted run (what SLURM requeue relies on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from medhpc.models import ModelConfig, build_model
from medhpc.selftest.runner import Check, CheckFailed, Context

#: Seconds a training subprocess may take before the round trip is called failed.
RUN_TIMEOUT = 300


def check_train_step(ctx: Context) -> str:
    """One optimiser step of ResNet50 under bf16 autocast: finite loss and gradients, weights move."""
    sc = ctx.scale
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet50")).to(ctx.device)
    if ctx.cuda:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        torch.cuda.reset_peak_memory_stats(ctx.device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(sc.train_batch, 3, sc.train_size, sc.train_size, generator=g).to(ctx.device)
    y = (torch.arange(sc.train_batch) % 2).to(ctx.device)
    before = [p.detach().clone() for p in model.parameters()]
    started = time.perf_counter()
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
        out = model.forward_train(x)
    loss = F.cross_entropy(out.logits.float(), y)
    if out.logits.dtype != torch.bfloat16:
        raise CheckFailed(f"autocast did not run the model in bf16 (logits are {out.logits.dtype})")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not bool(torch.isfinite(p.grad).all())]
    if not bool(torch.isfinite(loss)) or bad:
        raise CheckFailed(f"loss {float(loss):.4g}; missing or non-finite gradients in {bad[:3]}")
    opt.step()
    ctx.sync()
    seconds = time.perf_counter() - started
    moved = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    if moved == 0 or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise CheckFailed(f"after the step {moved} tensors moved; some weights may be non-finite")
    memory = f", peak {torch.cuda.max_memory_allocated(ctx.device) / 2**30:.1f} GiB" if ctx.cuda else ""
    return (
        f"{sc.train_batch}x3x{sc.train_size}^2, loss {float(loss):.3f}, {moved} tensors updated, "
        f"{seconds:.2f} s{memory}"
    )


def _train_config(cache: Path, out: Path, ctx: Context) -> dict[str, Any]:
    return {
        "model": {"arch": "resnet50", "head": "vib", "vib": {"latent": 16}},
        "data": {"cache": str(cache)},
        "optim": {"name": "adam", "lr": 1e-3},
        "epochs": ctx.scale.resume_epochs,
        "batch_size": 8,
        "out": str(out),
        "device": str(ctx.device),
        # Bit-identical weights after a resume on a GPU need deterministic kernels.
        "deterministic": True,
    }


def _start(config: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "medhpc.train", str(config), "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], what: str) -> str:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CheckFailed(f"{what} did not finish within {RUN_TIMEOUT} s") from None
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        raise CheckFailed(f"{what} failed: {tail}")
    return out.strip().splitlines()[-1]


def check_resume(ctx: Context) -> str:
    """Train a tiny VIB model to the end; train it again, SIGKILL it after its first checkpoint,
    rerun the same command: it must resume and end with bit-identical weights."""
    from medhpc.data import make_synthetic
    from medhpc.data.prepare import prepare
    from medhpc.train.checkpoint import load

    root = ctx.workdir / "resume"
    make_synthetic("aptos", root / "raw", n=ctx.scale.resume_images, size=32, seed=0)
    cache = root / "aptos-32.h5"
    prepare("aptos", root / "raw", cache, size=32, seed=0, progress=False)

    configs = []
    for name in ("whole", "killed"):
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_train_config(cache, root / name, ctx)))
        configs.append(path)
    started = time.perf_counter()
    whole = Path(_finish(_start(configs[0]), "the uninterrupted run"))
    one_run = time.perf_counter() - started

    victim = _start(configs[1])
    run_b = root / "killed" / whole.name
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (run_b / "last.pt").exists():
        if victim.poll() is not None:
            raise CheckFailed(f"the run to be killed ended first: {victim.communicate()[1].strip()[-300:]}")
        if time.monotonic() > deadline:
            victim.kill()
            raise CheckFailed(f"no checkpoint within {RUN_TIMEOUT} s")
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    epoch = load(run_b / "last.pt")["progress"]["epoch"]
    epochs = ctx.scale.resume_epochs
    if epoch >= epochs or (run_b / "metrics.json").exists():
        raise CheckFailed("the run finished before it could be killed (the check needs a slower epoch)")

    resumed = _start(configs[1])
    _finish(resumed, "the resumed run")
    for name in ("last.pt", "best.pt"):
        a, b = load(whole / name)["model"], load(run_b / name)["model"]
        different = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
        if different or a.keys() != b.keys():
            raise CheckFailed(f"{name} after the resume differs from the uninterrupted run in {different[:3]}")
    return f"killed after epoch {epoch} of {epochs}, resumed: weights bit-identical (one run {one_run:.0f} s)"


CHECKS: tuple[Check, ...] = (
    Check("train step bf16", "one bf16 autocast training step of ResNet50", check_train_step),
    Check("train/kill/resume", "SIGKILL mid-run, rerun: same weights as an uninterrupted run", check_resume),
)

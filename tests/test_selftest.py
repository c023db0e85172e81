"""``python -m medhpc selftest``: it passes on this machine (CI runs it on the CPU), and each kind
of check fails, with the culprit named, when what it checks is broken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medhpc
from medhpc.selftest import CHECKS, CPU_SCALE, Check, CheckFailed, Context, check_names, run_checks, select
from medhpc.selftest import attacks as attack_checks
from medhpc.selftest import ops as op_checks
from medhpc.selftest.__main__ import main
from medhpc.selftest.runner import as_json, table

ROOT = Path(__file__).resolve().parents[1]


def ctx(tmp_path: Path) -> Context:
    return Context(torch.device("cpu"), CPU_SCALE, tmp_path)


def test_the_whole_selftest_passes_on_the_cpu() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "medhpc", "selftest", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    failed = [(c["name"], c["detail"]) for c in report["checks"] if not c["ok"]]
    assert proc.returncode == 0 and report["ok"] and not failed, failed or proc.stderr[-2000:]
    assert [c["name"] for c in report["checks"]] == list(check_names())
    assert report["medhpc"] == medhpc.__version__ and report["scale"] == "cpu"


def test_the_table_lists_every_check_and_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "kernels", "--only", "spsa_perturb fp32"]) == 0
    out = capsys.readouterr().out
    assert "kernels" in out and "spsa_perturb fp32" in out and "PASS" in out
    assert "2 of 2 checks passed" in out


def test_a_failure_and_a_crash_are_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    def fails(c: Context) -> str:
        raise CheckFailed("z: 3 of 8 differ")

    def crashes(c: Context) -> str:
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    checks = [Check("a", "", fails), Check("b", "", crashes), Check("c", "", lambda c: "fine")]
    outcomes = run_checks(checks, ctx(tmp_path))
    assert [(o.name, o.ok) for o in outcomes] == [("a", False), ("b", False), ("c", True)]
    assert outcomes[0].detail == "z: 3 of 8 differ"
    assert outcomes[1].detail.startswith("RuntimeError: CUDA error: no kernel image")
    text = table(outcomes, "header")
    assert "1 of 3 checks passed" in text and "FAILED: a, b" in text
    report = json.loads(as_json(outcomes, {"device": "cpu"}))
    assert report["ok"] is False and "Traceback" in report["checks"][1]["error"]


def test_exit_status_is_1_on_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(op_checks, "_ext", _NoExtension())
    assert main(["--only", "kernels"]) == 1


class _NoExtension:
    LOAD_ERROR = "simulated: undefined symbol"

    @staticmethod
    def loaded() -> bool:
        return False

    @staticmethod
    def has_kernel(op: str, device: str) -> bool:
        return False


def test_gpu_without_a_gpu_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--gpu", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "no CUDA device is visible" in report["checks"][0]["detail"]


def test_unknown_check_names_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "nosuchcheck"]) == 2
    err = capsys.readouterr().err
    assert "nosuchcheck" in err and "determinism" in err  # the known names are listed
    assert select(None) == list(CHECKS)


def test_listing_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in check_names())


# --- each check fails when what it checks is wrong --------------------------------------------


def _check(name: str) -> Check:
    return next(c for c in CHECKS if c.name == name)


def test_a_wrong_vib_sample_fails_the_vib_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = op_checks.vib_reparam

    def off_by_a_little(*args: object, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
        z, kl = real(*args, **kw)  # type: ignore[arg-type]
        return z + 1e-3, kl

    monkeypatch.setattr(op_checks, "vib_reparam", off_by_a_little)
    with pytest.raises(CheckFailed, match=r"^z: \d+ of \d+ differ"):
        _check("vib_reparam fp32").run(ctx(tmp_path))


def test_one_flipped_probe_fails_the_spsa_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = op_checks.spsa_perturb

    def one_flip(*args: object, **kw: object) -> torch.Tensor:
        out = real(*args, **kw)  # type: ignore[arg-type]
        out.view(-1)[-1] = 1.0 - out.view(-1)[-1]
        return out

    monkeypatch.setattr(op_checks, "spsa_perturb", one_flip)
    with pytest.raises(CheckFailed, match="not bit-identical"):
        _check("spsa_perturb fp32").run(ctx(tmp_path))
    with pytest.raises(CheckFailed, match="not bit-identical"):
        _check("spsa > 2^31 elements").run(ctx(tmp_path))


def test_run_to_run_drift_fails_the_determinism_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = op_checks.spsa_reduce
    calls = []

    def drifting(*args: object, **kw: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kw) * (1 + 1e-7 * len(calls))  # type: ignore[arg-type]

    monkeypatch.setattr(op_checks, "spsa_reduce", drifting)
    with pytest.raises(CheckFailed, match="spsa estimate: not bit-identical"):
        _check("determinism").run(ctx(tmp_path))


def test_an_attack_leaving_its_ball_fails_the_attack_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = attack_checks.run_attack

    def too_far(model: object, x: torch.Tensor, y: object, cfg: object, seed: int = 0, **kw: object) -> object:
        res = real(model, x, y, cfg, seed=seed, **kw)  # type: ignore[arg-type]
        if res.linf.numel():
            res.linf[0] = 0.5
        return res

    monkeypatch.setattr(attack_checks, "run_attack", too_far)
    with pytest.raises(CheckFailed, match="fgsm: L-inf 0.5 leaves the eps-ball"):
        _check("attacks linear").run(ctx(tmp_path))


def test_every_registered_attack_gets_a_short_config() -> None:
    from medhpc.attacks import ATTACKS

    for spec in ATTACKS.values():
        for stochastic in (False, True):
            cfg = attack_checks.attack_config(spec, Context(torch.device("cpu"), CPU_SCALE, Path(".")), stochastic)
            assert cfg.attack == spec.name
            if cfg.steps is not None:
                assert cfg.steps <= CPU_SCALE.attack_steps

"""``attack_to_shard`` stores exactly what the attack produced, batch by batch, with the clean and
adversarial probabilities (every draw for a stochastic model), reproducibly."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medhpc.attacks.common import derive_seed
from medhpc.attacks.config import AttackConfig, run_attack
from medhpc.config import config_hash, to_dict
from medhpc.data import make_synthetic, prepare
from medhpc.data.cache import CacheDataset
from medhpc.store import ShardError, ShardReader, verify_shard
from medhpc.sweep.produce import attack_to_shard, cache_batches


def _batches(
    n: int, sizes: list[int], image: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, image, image, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    out, at = [], 0
    for size in sizes:
        out.append((x[at : at + size], y[at : at + size]))
        at += size
    return x, y, out


def test_shard_holds_exactly_what_the_attack_returned(tmp_path: Path, tiny_model: nn.Module) -> None:
    cfg = AttackConfig("pgd", eps=0.03, steps=3)
    _, y, batches = _batches(5, [3, 2])
    ids = [f"p{i}" for i in range(10, 15)]
    info = attack_to_shard(
        tmp_path / "s.h5", tiny_model, batches, cfg, start=10, split="test", seed=4, model_hash="tiny", ids=ids
    )
    assert (info.start, info.stop, info.samples) == (10, 15, 0) and "clean_sample_probs" not in info.fields
    got = ShardReader(info.path).read()
    assert got["index"].tolist() == list(range(10, 15)) and list(got["ids"]) == ids
    at = 0
    for xb, yb in batches:
        n = len(yb)
        res = run_attack(tiny_model, xb, yb, cfg, seed=derive_seed(4, 10 + at))
        rows = slice(at, at + n)
        np.testing.assert_array_equal(got["x_adv"][rows], res.x_adv.numpy())
        np.testing.assert_array_equal(got["success"][rows], res.success.numpy())
        np.testing.assert_array_equal(got["adv_pred"][rows], res.pred.numpy())
        np.testing.assert_array_equal(got["l2"][rows], res.l2.numpy())
        np.testing.assert_array_equal(got["linf"][rows], res.linf.numpy())
        with torch.no_grad():
            clean = torch.softmax(tiny_model(xb), -1).numpy()
            adv = torch.softmax(tiny_model(res.x_adv), -1).numpy()
        np.testing.assert_allclose(got["clean_probs"][rows], clean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["adv_probs"][rows], adv, rtol=0, atol=1e-6)
        at += n
    np.testing.assert_array_equal(got["labels"], y.numpy())
    np.testing.assert_array_equal(got["attack_labels"], y.numpy())
    np.testing.assert_array_equal(got["clean_pred"], got["clean_probs"].argmax(1))
    assert got["linf"].max() <= 0.03 + 1e-6
    assert info.attrs["attack_config"] == to_dict(cfg) and info.attrs["seed"] == 4
    assert verify_shard(info.path) == []  # (a set starts at 0: verify_dir would report [0, 10) missing)


def test_targeted_attack_records_its_targets(tmp_path: Path, tiny_model: nn.Module) -> None:
    _, y, batches = _batches(4, [4])
    cfg = AttackConfig("fgsm", eps=0.05, targeted=True)
    info = attack_to_shard(
        tmp_path / "t.h5", tiny_model, batches, cfg, start=0, split="val", model_hash="tiny", ids=list("abcd")
    )
    got = ShardReader(info.path).read(["labels", "attack_labels", "adv_pred", "success"])
    np.testing.assert_array_equal(got["attack_labels"], (y.numpy() + 1) % 2)
    np.testing.assert_array_equal(got["success"], got["adv_pred"] == got["attack_labels"])


def test_cw_stores_its_per_image_constant(tmp_path: Path, tiny_model: nn.Module) -> None:
    _, _, batches = _batches(4, [4])
    cfg = AttackConfig("cw_l2", steps=5, search_steps=2)
    info = attack_to_shard(
        tmp_path / "c.h5", tiny_model, batches, cfg, start=0, split="test", model_hash="tiny", ids=list("abcd")
    )
    got = ShardReader(info.path).read(["const", "success"])
    assert got["const"].shape == (4,)
    assert np.isnan(got["const"][~got["success"]]).all() and np.isfinite(got["const"][got["success"]]).all()


def test_the_worst_case_stores_which_member_broke_each_image_and_its_norm(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    _, _, batches = _batches(6, [4, 2])
    members = (AttackConfig("fgsm", eps=0.05), AttackConfig("pgd", eps=0.05, steps=3))
    cfg = AttackConfig("worst_case", eps=0.05, members=members)
    info = attack_to_shard(
        tmp_path / "w.h5", tiny_model, batches, cfg, start=0, split="test", model_hash="tiny", ids=list("abcdef")
    )
    got = ShardReader(info.path).read(["broken_by", "min_norm", "success", "linf"])
    assert got["broken_by"].dtype == np.int64 and got["broken_by"].shape == (6,)
    np.testing.assert_array_equal(got["broken_by"] >= 0, got["success"])
    assert set(got["broken_by"].tolist()) <= {-1, 0, 1}
    np.testing.assert_array_equal(got["min_norm"][got["success"]], got["linf"][got["success"]])
    assert np.isinf(got["min_norm"][~got["success"]]).all()


def test_stochastic_model_stores_every_draw_reproducibly(tmp_path: Path, vib_model: nn.Module) -> None:
    _, _, batches = _batches(3, [2, 1], image=32)
    cfg = AttackConfig("fgsm", eps=0.02)
    kwargs: dict[str, Any] = {"start": 0, "split": "test", "seed": 1, "ids": ["a", "b", "c"]}
    info = attack_to_shard(tmp_path / "v1.h5", vib_model, batches, cfg, **kwargs)
    assert info.samples == 12 and info.attrs["model_config"] == to_dict(vib_model.cfg)
    assert info.model_hash == config_hash(vib_model.cfg)
    got = ShardReader(info.path).read()
    for name in ("clean_sample_probs", "adv_sample_probs"):
        assert got[name].shape == (12, 3, 2)
        np.testing.assert_allclose(got[name].sum(-1), 1.0, atol=1e-5)
    # The stored draws are the ones the prediction averaged (this model averages probabilities).
    np.testing.assert_allclose(got["clean_probs"], got["clean_sample_probs"].mean(0), atol=1e-5)
    np.testing.assert_allclose(got["adv_probs"], got["adv_sample_probs"].mean(0), atol=1e-5)
    assert got["clean_sample_probs"].std(0).max() > 0  # the draws differ
    again = ShardReader(attack_to_shard(tmp_path / "v2.h5", vib_model, batches, cfg, **kwargs).path).read()
    for name, value in got.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_batches_from_a_prepared_cache(tmp_path: Path, tiny_model: nn.Module) -> None:
    make_synthetic("aptos", tmp_path / "aptos", n=40, size=24, seed=0)
    cache = tmp_path / "aptos.h5"
    prepare("aptos", tmp_path / "aptos", cache, size=24, workers=0, progress=False)
    ds = CacheDataset(cache, "test")
    n = len(ds)
    assert n >= 4
    batches = cache_batches(cache, "test", 1, n, batch_size=2)
    info = attack_to_shard(
        tmp_path / "c.h5", tiny_model, batches, AttackConfig("none"), start=1, split="test", model_hash="tiny",
        dataset=str(cache), set_size=n,
    )  # fmt: skip
    got = ShardReader(info.path).read(["x_adv", "ids", "labels", "index"])
    assert list(got["ids"]) == ds.ids[1:n] and got["index"].tolist() == list(range(1, n))
    np.testing.assert_array_equal(got["labels"], ds.labels[1:n])
    images = ds.read_batch(np.arange(1, n))[0]
    np.testing.assert_array_equal(got["x_adv"], images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    with pytest.raises(ShardError, match=r"slice \[0, 999\)"):
        next(cache_batches(cache, "test", 0, 999))


def test_bad_batches_are_refused_and_leave_no_file(tmp_path: Path, tiny_model: nn.Module) -> None:
    _, _, batches = _batches(4, [4])
    cfg = AttackConfig("fgsm", eps=0.02)
    with pytest.raises(ShardError, match="no ids"):
        attack_to_shard(tmp_path / "a.h5", tiny_model, batches, cfg, start=0, split="test", model_hash="tiny")
    x, y = batches[0]
    with pytest.raises(ShardError, match=r"4 images but labels of shape \(3,\)"):
        attack_to_shard(
            tmp_path / "a.h5", tiny_model, [(x, y[:3])], cfg, start=0, split="test", model_hash="tiny", ids=list("abcd")
        )
    with pytest.raises(ShardError, match="4 images but 2 ids"):
        attack_to_shard(
            tmp_path / "a.h5", tiny_model, [(x, y, ["a", "b"])], cfg, start=0, split="test", model_hash="tiny"
        )
    with pytest.raises(ShardError, match="model_hash"):
        attack_to_shard(tmp_path / "a.h5", tiny_model, batches, cfg, start=0, split="test", ids=list("abcd"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
def test_cuda_model_writes_the_same_shard_as_on_the_cpu(tmp_path: Path, tiny_model: nn.Module) -> None:
    """Batches on the host, model on the GPU: the shard is written from host copies, and holds
    what the CPU run holds up to float rounding."""
    _, _, batches = _batches(6, [4, 2])
    cfg = AttackConfig("pgd", eps=0.03, steps=3)
    kw: dict[str, Any] = {"start": 0, "split": "test", "seed": 2, "model_hash": "tiny", "ids": list("abcdef")}
    cpu = ShardReader(attack_to_shard(tmp_path / "cpu.h5", tiny_model, batches, cfg, **kw).path).read()
    gpu_model = copy.deepcopy(tiny_model).cuda()  # the session's CPU model stays where it is
    info = attack_to_shard(tmp_path / "gpu.h5", gpu_model, batches, cfg, **kw)
    assert verify_shard(info.path) == []
    gpu = ShardReader(info.path).read()
    assert gpu["linf"].max() <= 0.03 + 1e-6
    np.testing.assert_allclose(gpu["clean_probs"], cpu["clean_probs"], atol=1e-4)
    np.testing.assert_array_equal(gpu["labels"], cpu["labels"])


def test_without_a_bar_each_batch_is_logged(tmp_path: Path, tiny_model: nn.Module, caplog: Any) -> None:
    """A SLURM log or CI has no terminal for the bar: the attack job says how far it is."""
    _, _, batches = _batches(5, [3, 2])
    with caplog.at_level("INFO", logger="medhpc.sweep.produce"):
        attack_to_shard(tmp_path / "s.h5", tiny_model, batches, AttackConfig("fgsm", eps=0.03), start=0,
                        split="test", seed=0, model_hash="tiny", ids=[str(i) for i in range(5)],
                        progress=False)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attack ")]
    assert len(lines) == 2
    assert lines[0].startswith("attack fgsm-linf-eps0.03: batch 1/2 done, 3 images in ")
    assert lines[1].startswith("attack fgsm-linf-eps0.03: batch 2/2 done, 5 images in ")


def test_an_adaptive_shard_records_its_detector_and_the_validation_scores_it_was_fitted_on(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    """The detector fitted on a split scores each image exactly as a shard of that split stores
    it (the same draws under the same seed), so the report counts the same rejections."""
    from medhpc.attacks.detector import calibrate, score_values

    _, _, batches = _batches(40, [16, 16, 8], seed=3)
    det = calibrate(tiny_model, batches, score="predictive_entropy", fpr=0.1, seed=2)
    kwargs: dict[str, Any] = {"start": 0, "seed": 2, "model_hash": "tiny", "ids": [str(i) for i in range(40)]}
    val = attack_to_shard(tmp_path / "val.h5", tiny_model, batches, AttackConfig("none"), split="val", **kwargs)
    stored = ShardReader(val.path).read(["clean_probs"])
    assert int(det.rejects(score_values(det.score, stored["clean_probs"], None)).sum()) == det.rejected == 4

    cfg = AttackConfig("adaptive", eps=0.05, steps=3, search_steps=2, fpr=0.1)
    info = attack_to_shard(tmp_path / "a.h5", tiny_model, batches, cfg, split="test", detector=det, **kwargs)
    assert info.attrs["meta"]["detector"] == det.to_dict()
    got = ShardReader(info.path).read(["const", "success", "linf"])
    assert got["const"].shape == (40,) and (got["linf"] <= 0.05 + 1e-6).all()
    with pytest.raises(ShardError, match="give the fitted detector"):
        attack_to_shard(tmp_path / "b.h5", tiny_model, batches, cfg, split="test", **kwargs)
    with pytest.raises(ShardError, match="only for calibrated attacks"):
        attack_to_shard(tmp_path / "c.h5", tiny_model, batches, AttackConfig("none"), split="test", detector=det,
                        **kwargs)  # fmt: skip
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "c.h5").exists()

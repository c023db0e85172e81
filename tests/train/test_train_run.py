"""Training runs: outputs, the kept model, skip on rerun, exact resume after SIGKILL, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medhpc.config import ConfigError
from medhpc.data.errors import DataError
from medhpc.train import checkpoint, events, from_mapping, run_dir, train
from medhpc.train.checkpoint import CheckpointError, Progress
from medhpc.train.checkpoint import load as load_ckpt
from medhpc.train.loop import class_weights, record_epoch

ROOT = Path(__file__).resolve().parents[2]


def config(cache: Path, out: Path, **extra: object) -> dict:
    base = {
        "model": {"arch": "resnet50", "head": "linear"},
        "data": {"cache": str(cache)},
        "optim": {"name": "adam", "lr": 1e-3},
        "epochs": 3,
        "batch_size": 16,
        "out": str(out),
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


@pytest.fixture(scope="module")
def finished_run(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return train(from_mapping(config(tiny_cache, out, epochs=3)), progress=False)


def test_a_run_writes_config_checkpoints_history_and_metrics(finished_run: Path) -> None:
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "last.pt", "best.pt", "history.json", "metrics.json"} <= names
    assert {"predictions-val.npz", "predictions-test.npz"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    metrics = json.loads((finished_run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        keys = ("accuracy", "accuracy_ci95", "precision", "recall", "f1", "roc_auc", "tp", "fp", "fn", "tn", "loss")
        for key in keys:
            assert key in m, key
        assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == m["n"]
    pred = np.load(finished_run / "predictions-test.npz")
    assert pred["logits"].shape == (metrics["test"]["n"], 2)


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per tag as TensorBoard shows the run folder: all its event files, purges applied."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every value
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def history_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """history.json as the scalars it should give (TensorBoard stores float32); the robust
    validation tags only where the run is adversarial."""
    history = json.loads((run / "history.json").read_text())
    return {
        tag: [(h["epoch"], float(np.float32(h[key]))) for h in history if h[key] is not None]
        for key, tag in events.TAGS.items()
        if any(key in h for h in history)
    }


def test_a_run_writes_one_tensorboard_scalar_per_tag_and_epoch(finished_run: Path) -> None:
    """Train/val loss, val accuracy and balanced accuracy, lr, throughput: the values of history.json."""
    assert list(finished_run.glob("events.out.tfevents.*"))
    got, want = tensorboard_scalars(finished_run), history_scalars(finished_run)
    assert all(len(v) == 3 for v in want.values()), want  # every tag, every epoch (3)
    assert got == want


class Killed(BaseException):
    """Stands in for SIGKILL inside the process (not an Exception: nothing catches it)."""


def test_a_run_killed_between_its_events_and_its_checkpoint_has_one_scalar_per_epoch(
    tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 2's events are flushed, its checkpoint is not: the resumed run runs epoch 2 again,
    and its event file's purge_step hides the first one, so TensorBoard shows each epoch once."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    cfg = from_mapping(config(tiny_cache, tmp_path, epochs=3))
    save = checkpoint.save

    def save_or_die(path: Path, **kw: object) -> None:
        if kw["progress"].epoch == 2:
            raise Killed
        save(path, **kw)

    monkeypatch.setattr(checkpoint, "save", save_or_die)
    with pytest.raises(Killed):
        train(cfg, progress=False)
    monkeypatch.setattr(checkpoint, "save", save)
    run = run_dir(cfg)
    assert load_ckpt(run / "last.pt")["progress"]["epoch"] == 1
    train(cfg, progress=False)

    files = sorted(run.glob("events.out.tfevents.*"))
    assert len(files) == 2
    raw = [e.step for f in files for e in EventFileLoader(str(f)).Load() for v in e.summary.value
           if v.tag == "loss/train"]  # fmt: skip
    assert raw == [1, 2, 2, 3]  # epoch 2 twice on disk: the purge is what removes one
    got, want = tensorboard_scalars(run), history_scalars(run)
    assert all([step for step, _ in v] == [1, 2, 3] for v in want.values()), want
    assert got == want


def test_events_without_tensorboard_warn_once_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    monkeypatch.setattr(events, "_warned_missing", False)
    record = {"epoch": 1, "train_loss": 0.5}
    for name in ("a", "b"):
        log = events.EpochEvents(tmp_path / name, first_epoch=1)
        log.write(record)
        log.write({**record, "epoch": 2})
        log.close()
    assert caplog.text.count("TensorBoard events are not written") == 1
    assert not list(tmp_path.rglob("*"))


def test_an_event_write_error_is_logged_and_ends_only_the_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    class Broken:
        def __init__(self, folder: str, purge_step: int) -> None:
            calls.append(f"open {purge_step}")

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            calls.append("close")

    monkeypatch.setattr(events, "_summary_writer", lambda: Broken)
    log = events.EpochEvents(tmp_path, first_epoch=4)
    log.write({"epoch": 4, "train_loss": 0.5})
    log.write({"epoch": 5, "train_loss": 0.4})  # off after the error: not retried
    log.close()
    assert calls == ["open 4", "close"]
    assert "TensorBoard events stopped after an error: [Errno 28] No space left on device" in caplog.text


def test_the_kept_model_is_the_one_with_the_best_validation_loss(finished_run: Path) -> None:
    history = json.loads((finished_run / "history.json").read_text())
    best_epoch = 1 + int(np.argmin([h["val_loss"] for h in history]))
    best = load_ckpt(finished_run / "best.pt")
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert best["epoch"] == best_epoch == metrics["best_epoch"]
    # The final evaluation really ran on the kept weights: its validation loss is the best one.
    assert metrics["val"]["loss"] == pytest.approx(min(h["val_loss"] for h in history), rel=1e-5)
    if best_epoch != len(history):
        last = load_ckpt(finished_run / "last.pt")
        assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_a_finished_run_is_skipped_on_rerun(finished_run: Path) -> None:
    cache = Path(json.loads((finished_run / "metrics.json").read_text())["cache"])
    cfg = from_mapping(config(cache, finished_run.parent))
    stamps = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    assert train(cfg, progress=False) == finished_run
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == stamps


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


#: ``python -m medhpc.train`` with the test-only ``tiny`` architecture registered first (conftest.py).
TINY_MAIN = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import conftest; from medhpc.models import registry; "
    "registry.ARCHS[conftest.TINY.name] = conftest.TINY; from medhpc.train.__main__ import main; sys.exit(main())"
)


def run_cli(cfg: Path, tiny: bool = False, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = ["-c", TINY_MAIN, str(Path(__file__).parent)] if tiny else ["-m", "medhpc.train"]
    return subprocess.Popen(
        [sys.executable, *command, str(cfg), "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("adversarial", [None, {"method": "trades", "eps": 0.03, "steps": 2, "val_steps": 2}],
                         ids=["plain", "trades"])  # fmt: skip
def test_a_run_killed_midway_resumes_to_identical_weights(
    tiny_cache: Path, tmp_path: Path, adversarial: dict | None, request: pytest.FixtureRequest
) -> None:
    """Also during adversarial training (TRADES on a VIB model whose backbone trains too, on
    the tiny trunk and the blob images to stay fast): its attacks' seeds derive from the epoch
    and batch, so the resumed run crafts the same examples."""
    tiny = adversarial is not None
    cache = request.getfixturevalue("blob_cache") if tiny else tiny_cache
    data = config(cache, tmp_path / "a", epochs=3, batch_size=8, model={"head": "vib"})
    data["model"]["vib"] = {"latent": 16}
    if tiny:
        data["model"]["arch"] = request.getfixturevalue("tiny_arch")
        data["batch_size"] = 32
        data["adversarial"] = adversarial
    whole = run_cli(write_config(tmp_path / "a.yaml", data), tiny)
    out_w, err_w = whole.communicate(timeout=600)
    assert whole.returncode == 0, err_w

    data["out"] = str(tmp_path / "b")
    cfg_b = write_config(tmp_path / "b.yaml", data)
    run_b = run_dir(from_mapping(data))
    killed = run_cli(cfg_b, tiny)
    deadline = time.monotonic() + 300
    while not (run_b / "last.pt").exists():  # epoch 1 done; epoch 2 takes seconds
        assert killed.poll() is None, killed.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert load_ckpt(run_b / "last.pt")["progress"]["epoch"] < 3 and not (run_b / "metrics.json").exists()

    resumed = run_cli(cfg_b, tiny)
    out_r, err_r = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err_r
    assert "resuming after epoch" in err_r

    run_a = Path(out_w.strip())
    assert run_a.name == run_b.name  # same config hash: the output folder does not count
    for name in ("last.pt", "best.pt"):
        a, b = load_ckpt(run_a / name), load_ckpt(run_b / name)
        assert a["model"].keys() == b["model"].keys()
        different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
        assert different == [], f"{name}: {different[:5]}"
    ma = json.loads((run_a / "metrics.json").read_text())
    mb = json.loads((run_b / "metrics.json").read_text())
    assert ma["test"] == mb["test"] and ma["best_epoch"] == mb["best_epoch"]
    assert ma.get("val_robust") == mb.get("val_robust") and ("val_robust" in ma) == (adversarial is not None)
    # TensorBoard: each epoch once across the killed and the resumed process's event files.
    assert len(list(run_b.glob("events.out.tfevents.*"))) == 2
    got, want = tensorboard_scalars(run_b), history_scalars(run_b)
    assert all([step for step, _ in v] == [1, 2, 3] for v in want.values()), want
    assert got == want


def test_early_stopping_rule() -> None:
    state = Progress()
    assert record_epoch(state, 1.0, patience=2)
    assert not record_epoch(state, 1.0, patience=2)  # equal is not better
    assert record_epoch(state, 0.5, patience=2)
    assert not record_epoch(state, float("nan"), patience=2)
    assert not state.stopped_early
    assert not record_epoch(state, 0.7, patience=2)
    assert state.stopped_early and state.best_epoch == 3 and state.epoch == 5
    state = Progress()
    assert record_epoch(state, 1.0, None, min_delta=0.1)
    assert not record_epoch(state, 0.95, None, min_delta=0.1)  # not by more than min_delta
    assert record_epoch(state, 0.85, None, min_delta=0.1)


def test_early_stopping_ends_a_run(tiny_cache: Path, tmp_path: Path) -> None:
    # Only the first epoch can improve by more than min_delta: patience 1 stops after epoch 2.
    cfg = from_mapping(config(tiny_cache, tmp_path, epochs=6, patience=1, min_delta=1e9))
    run = train(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert metrics["stopped_early"] and metrics["epochs_run"] == len(history) == 2
    assert metrics["best_epoch"] == 1


def test_class_weights_are_n_over_n_c() -> None:
    w = class_weights(np.array([0, 0, 0, 1]), 2)
    torch.testing.assert_close(w, torch.tensor([4 / 3, 4.0]))
    with pytest.raises(DataError, match=r"class\(es\) \[1\] have no training images"):
        class_weights(np.array([0, 0]), 2)


def test_vib_recipe_trains_the_head_on_a_copied_frozen_backbone(
    finished_run: Path, tiny_cache: Path, tmp_path: Path
) -> None:
    data = config(tiny_cache, tmp_path, preset="vib", epochs=1, init_from=str(finished_run))
    del data["optim"]
    data["model"] = {"arch": "resnet50", "vib": {"latent": 16, "eval_samples": 3}}
    cfg = from_mapping(data)
    assert cfg.model.freeze_backbone and cfg.optim.name == "adam"
    run = train(cfg, progress=False)
    base = load_ckpt(finished_run / "best.pt")["model"]
    vib = load_ckpt(run / "best.pt")["model"]
    backbone = [k for k in base if k.startswith("backbone.")]
    assert backbone and all(torch.equal(base[k], vib[k]) for k in backbone)
    assert json.loads((run / "metrics.json").read_text())["eval_samples"] == 3


def test_bad_inputs_are_named(tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist: .*missing.h5"):
        train(from_mapping(config(tmp_path / "missing.h5", tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="model.classes is 3 but the cache .* has 2 classes"):
        train(from_mapping(config(tiny_cache, tmp_path, model={"classes": 3})), progress=False)
    with pytest.raises(ConfigError, match="inception_v3 needs images of at least 75 px"):
        train(from_mapping(config(tiny_cache, tmp_path, model={"arch": "inception_v3"})), progress=False)
    with pytest.raises(ConfigError, match=r"vit_b_16 needs an image side that is a multiple of 16 .* gives 40"):
        train(from_mapping(config(tiny_cache, tmp_path, model={"arch": "vit_b_16"}, data={"image_size": 40})),
              progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="init_from: .* holds a resnet50 model"):
        bogus = tmp_path / "r"
        bogus.mkdir()
        torch.save({"format": 1, "model": {}, "config": {"model": {"arch": "resnet50"}}}, bogus / "best.pt")
        train(from_mapping(config(tiny_cache, tmp_path, model={"arch": "inception_v3"}, data={"image_size": 75},
                                  init_from=str(bogus))), progress=False)  # fmt: skip


def test_a_damaged_checkpoint_is_named_not_silently_restarted(tiny_cache: Path, tmp_path: Path) -> None:
    cfg = from_mapping(config(tiny_cache, tmp_path, epochs=1))
    run = run_dir(cfg)
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*last.pt"):
        train(cfg, progress=False)
    assert (run / "last.pt").read_bytes() == b"PK\x03\x04 truncated"  # nothing overwritten


def test_cli_reports_bad_config_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {arch: resnet50}\ndata: {cache: c.h5}\noptim: {lr: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "medhpc.train", str(cfg)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("optim.lr: must be > 0, got 0.0") and "Traceback" not in proc.stderr
    assert str(cfg) in proc.stderr


def test_inception_trains_with_aux_logits_on_resized_batches(tiny_cache: Path, tmp_path: Path) -> None:
    """A 32 px cache resized on the fly to InceptionV3's minimum (data.image_size)."""
    cfg = from_mapping(config(tiny_cache, tmp_path, epochs=1, model={"arch": "inception_v3"}, data={"image_size": 75}))
    run = train(cfg, progress=False)
    state = load_ckpt(run / "best.pt")["model"]
    assert any(k.startswith("backbone.AuxLogits.fc") for k in state)
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] > 0

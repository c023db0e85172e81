"""Live progress: the per-stage counts, the non-TTY line once per change, the tqdm bar, and
``status --watch`` on a finished sweep."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import yaml

from medhpc.sweep import __main__ as sweep_main
from medhpc.sweep import run as sweep_run
from medhpc.sweep.progress import Progress, count_stages, finished, watch

KINDS = {"prepare-a": "prepare", "train-1": "train", "train-2": "train", "attack-1": "attack", "attack-2": "attack"}


def test_count_stages_reads_done_from_outputs_and_the_rest_from_the_record() -> None:
    recorded = {"train-1": {"state": "running"}, "train-2": {"state": "failed"}, "prepare-a": {"state": "running"}}
    counts = count_stages(KINDS, {"prepare-a"}, recorded)
    assert list(counts) == ["prepare", "train", "attack"]
    assert counts["prepare"] == {"done": 1, "running": 0, "queued": 0, "failed": 0, "total": 1}
    assert counts["train"] == {"done": 0, "running": 1, "queued": 0, "failed": 1, "total": 2}
    assert counts["attack"] == {"done": 0, "running": 0, "queued": 2, "failed": 0, "total": 2}
    assert not finished(count_stages(KINDS, {"prepare-a"}, {"train-1": {"state": "running"}}))
    assert finished(counts | {"train": {**counts["train"], "running": 0}})
    assert finished(count_stages(KINDS, KINDS, {}))


def test_non_tty_line_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = Progress(file=io.StringIO(), tty=False, clock=lambda: now[0])
    states = [
        count_stages(KINDS, set(), {"prepare-a": {"state": "running"}}),
        count_stages(KINDS, set(), {"prepare-a": {"state": "running"}}),
        count_stages(KINDS, {"prepare-a"}, {"train-1": {"state": "running"}, "train-2": {"state": "running"}}),
        count_stages(KINDS, {"prepare-a"}, {"train-1": {"state": "running"}, "train-2": {"state": "running"}}),
        count_stages(KINDS, set(KINDS), {}),
    ]
    with caplog.at_level(logging.INFO, logger="medhpc.sweep.progress"):
        for state in states:
            now[0] += 60
            progress.update(state)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert len(lines) == 3, lines
    assert lines[0] == (
        "progress: prepare 0/1 done, 1 running · train 0/2 done, 2 queued · attack 0/2 done, 2 queued (elapsed 1m00s)"
    )
    assert "train 0/2 done, 2 running" in lines[1] and "~" in lines[1] and "left" in lines[1]
    assert lines[2] == "progress: prepare 1/1 done · train 2/2 done · attack 2/2 done (elapsed 5m00s, ~0m00s left)"


def test_tty_bar_renders_to_a_stream() -> None:
    out = io.StringIO()
    progress = Progress(file=out, tty=True)
    progress.update(count_stages(KINDS, set(), {"prepare-a": {"state": "running"}}))
    progress.update(count_stages(KINDS, {"prepare-a", "train-1"}, {"train-2": {"state": "running"}}))
    progress.close()
    text = out.getvalue()
    assert "2/5" in text and "train 1/2 done, 1 running" in text


def test_watch_stops_at_ctrl_c() -> None:
    def interrupted() -> dict[str, dict[str, int]]:
        raise KeyboardInterrupt

    assert watch(interrupted, 0.0, Progress(file=io.StringIO(), tty=False)) == {}


def test_status_watch_on_a_finished_sweep_exits_at_once_with_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "datasets": [{"name": "aptos", "kind": "aptos", "root": "synthetic", "size": 32,
                                      "synthetic": {"n": 80, "size": 32}}],
        "models": {"archs": ["resnet50"], "heads": ["linear"]}, "attacks": [{"attack": "none"}],
        "out": str(tmp_path / "out"), "executor": "debug",
    }))  # fmt: skip
    done = count_stages(KINDS, set(KINDS), {})
    calls = []

    def fake_status(cfg: object) -> dict[str, dict[str, int]]:
        calls.append(cfg)
        return done

    monkeypatch.setattr(sweep_run, "status", fake_status)
    monkeypatch.setattr("time.sleep", lambda s: pytest.fail("a finished sweep must not wait"))
    assert sweep_main.main(["status", str(path), "--watch", "--interval", "30"]) == 0
    out = capsys.readouterr().out
    assert len(calls) == 2  # the watch's one read, then the table's
    assert "attack        2 / 2     done     0 running     0 queued     0 failed" in out

"""The helpers every entry point shares: ``--set``, logging, the exit status of a user error,
and config fields added later that keep old hashes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from medhpc.cli import EXIT_USAGE, parse_set, run_main, setup_logging
from medhpc.config import ConfigError, config_hash, hashed_when_set, load
from medhpc.errors import MedhpcError


def test_set_values_are_yaml() -> None:
    # YAML 1.1 reads 1e-3 as a string; the configs' float fields take it (medhpc.config).
    assert parse_set(["optim.lr=1e-3", "epochs=3", "heads=[linear, vib]", "label_mode='true'", "x="]) == {
        "optim.lr": "1e-3", "epochs": 3, "heads": ["linear", "vib"], "label_mode": "true", "x": None,
    }  # fmt: skip
    with pytest.raises(MedhpcError, match="--set expects key=value, got 'epochs'"):
        parse_set(["epochs"])


def test_a_user_error_is_its_message_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise ConfigError("run.yaml: optim.lr: must be > 0, got 0.0")

    assert run_main(body) == EXIT_USAGE == 2
    assert capsys.readouterr().err == "error: run.yaml: optim.lr: must be > 0, got 0.0\n"
    assert run_main(lambda: 0) == 0


def test_logging_keeps_a_host_programs_handlers() -> None:
    root = logging.getLogger()
    handler = logging.NullHandler()
    saved = root.handlers[:]
    root.handlers = [handler]
    try:
        setup_logging(logging.DEBUG)
        assert root.handlers == [handler] and logging.getLogger("medhpc").level == logging.DEBUG
    finally:
        root.handlers = saved
        logging.getLogger("medhpc").setLevel(logging.NOTSET)


@dataclass(frozen=True)
class _Before:
    steps: int = 5


@dataclass(frozen=True)
class _After:
    steps: int = 5
    temperature: float | None = hashed_when_set()


def test_a_field_added_later_keeps_old_hashes_until_set(tmp_path: Path) -> None:
    assert config_hash(_After()) == config_hash(_Before())
    assert config_hash(_After(temperature=0.5)) != config_hash(_Before())
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\n")
    assert load(_After, path, {"temperature": 2.0}) == _After(steps=7, temperature=2.0)  # overrides apply on load

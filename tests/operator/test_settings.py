"""Operator settings from the environment and flags: watched namespaces and the log format."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from maas_operator import main as operator_main
from maas_operator.settings import OperatorSettings


def test_defaults_watch_every_namespace_and_log_text() -> None:
    settings = OperatorSettings.from_environment({})
    assert settings.watch_namespaces == ()
    assert settings.log_format == "text"


def test_watch_namespaces_take_commas_or_spaces_and_drop_repeats() -> None:
    env = {"MAAS_WATCH_NAMESPACES": "team-a, team-b team-a,,"}
    assert OperatorSettings.from_environment(env).watch_namespaces == ("team-a", "team-b")


@pytest.mark.parametrize("bad", ["Team-A", "team-*", "-x", "a" * 64])
def test_a_bad_namespace_names_the_variable_and_the_fix(bad: str) -> None:
    with pytest.raises(SystemExit) as refused:
        OperatorSettings.from_environment({"MAAS_WATCH_NAMESPACES": bad})
    message = str(refused.value)
    assert message.startswith("MAAS_WATCH_NAMESPACES: ")
    assert repr(bad) in message
    assert "globs are not supported" in message


def test_a_bad_log_format_names_the_choices() -> None:
    with pytest.raises(SystemExit) as refused:
        OperatorSettings.from_environment({"MAAS_LOG_FORMAT": "xml"})
    assert str(refused.value) == "MAAS_LOG_FORMAT: 'xml' is not one of text, json"


class RunCapture:
    """Stands in for kopf.run: records what main() would start kopf with."""

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def __call__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@pytest.fixture
def kopf_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunCapture]:
    capture = RunCapture()
    monkeypatch.setattr(kopf, "run", capture)
    for name in ("MAAS_WATCH_NAMESPACES", "MAAS_LOG_FORMAT", "MAAS_LIVENESS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    # main() configures logging process-wide; leave it as pytest had it.
    root, asyncio_logger = logging.getLogger(), logging.getLogger("asyncio")
    saved = (root.handlers[:], root.level, asyncio_logger.handlers[:], asyncio_logger.propagate)
    yield capture
    root.handlers[:], level, asyncio_logger.handlers[:], asyncio_logger.propagate = saved
    root.setLevel(level)


def test_the_environment_scopes_kopf_to_its_namespaces(
    kopf_run: RunCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAAS_WATCH_NAMESPACES", "team-a,team-b")
    assert operator_main.main([]) == 0
    assert kopf_run.kwargs["clusterwide"] is False
    assert kopf_run.kwargs["namespaces"] == ["team-a", "team-b"]
    assert kopf_run.kwargs["memo"].settings.watch_namespaces == ("team-a", "team-b")


def test_flags_override_the_environment(kopf_run: RunCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_WATCH_NAMESPACES", "team-a")
    operator_main.main(["-n", "team-c"])
    assert kopf_run.kwargs["namespaces"] == ["team-c"]
    operator_main.main(["-A", "--liveness", ""])
    assert kopf_run.kwargs["clusterwide"] is True
    assert kopf_run.kwargs["namespaces"] == []
    assert kopf_run.kwargs["liveness_endpoint"] is None


def test_json_logs_are_one_object_per_line(
    kopf_run: RunCapture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAAS_LOG_FORMAT", "json")
    operator_main.main([])
    logging.getLogger("maas_operator.test").info("hello %s", "world")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "hello world"
    assert record["severity"] == "info"

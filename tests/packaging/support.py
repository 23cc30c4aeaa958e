"""Helpers for the packaging tests: the repository's scripts and tools, run as a fresh clone would."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(sys.executable).parent
"""The dev venv's bin folder: hadolint and shellcheck come with the `dev` extra."""


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment less what points Python at this checkout or at another venv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONHOME"}
    }
    return {**env, **extra}


@functools.cache
def uv() -> str:
    """The uv that uv.lock pins (installed once by hack/ensure-uv.sh)."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "ensure-uv.sh")], check=True, capture_output=True, text=True
    )
    return result.stdout.strip().splitlines()[-1]


def base_python() -> str:
    """The interpreter this venv was made from (the images' Python minor version)."""
    return str(getattr(sys, "_base_executable", sys.executable))


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    """(INSTRUCTION, arguments) in order, continuation lines joined."""

    def last(self, instruction: str) -> str | None:
        found = [arguments for name, arguments in self.instructions if name == instruction]
        return found[-1] if found else None

    @property
    def entrypoint(self) -> list[str]:
        raw = self.last("ENTRYPOINT")
        assert raw is not None, f"stage {self.name} has no ENTRYPOINT"
        command: list[str] = json.loads(raw)
        return command


@dataclass
class Dockerfile:
    args: dict[str, str]
    """ARGs declared before the first FROM, with their defaults."""
    stages: dict[str, Stage]


def parse_dockerfile(path: Path = REPO / "Dockerfile") -> Dockerfile:
    """Enough of the Dockerfile grammar for our own file: comments, continuations, ARG, FROM ... AS."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arguments.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = Stage(name=match.group(2), base=match.group(1))
            stages[current.name] = current
        elif current is None:
            assert instruction == "ARG", f"only ARG before the first FROM: {line}"
            name, _, default = arguments.partition("=")
            args[name.strip()] = default.strip()
        else:
            current.instructions.append((instruction, arguments.strip()))
    return Dockerfile(args=args, stages=stages)

"""Package boundaries: no stdlib shadowing, the operator side never loads torch, the runtime never loads kopf."""

from __future__ import annotations

import subprocess
import sys

from tests.manifests import REPO


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    # Run from the repository root: that is where shadowing by the `operator/` folder would show up.
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_import_operator_is_still_the_standard_library() -> None:
    code = "import operator, maas_operator; print(operator.__file__); print(operator.itemgetter)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    assert "maas_operator" not in out.stdout.splitlines()[0]
    assert "itemgetter" in out.stdout


def test_api_imports_neither_kopf_nor_torch() -> None:
    loaded = _modules_loaded_by("import maas_api, maas_api.crd, maas_api.catalog, maas_api.contract")
    assert "torch" not in loaded and "kopf" not in loaded


def test_operator_cli_does_not_import_torch() -> None:
    loaded = _modules_loaded_by("import maas_operator.cli")
    assert "torch" not in loaded


def test_the_whole_operator_does_not_import_torch() -> None:
    loaded = _modules_loaded_by("import maas_operator.handlers, maas_operator.main")
    assert "kopf" in loaded and "torch" not in loaded


def test_the_kubectl_plugin_imports_neither_kopf_nor_torch() -> None:
    loaded = _modules_loaded_by("import maas_operator.kubectl_plugin")
    assert not {"kopf", "torch", "kubernetes_asyncio"} & loaded


def test_the_kubectl_plugin_is_a_console_script_named_as_kubectl_finds_plugins() -> None:
    import importlib
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["kubectl-maas"].split(":")
    assert callable(getattr(importlib.import_module(module), function))

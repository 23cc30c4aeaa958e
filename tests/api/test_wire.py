"""`parse_maasjob` reads a manifest as the API server reads it; `load_manifests` reads YAML as kubectl does.

What the API server does with each case was observed on the local control plane (kube-apiserver 1.36 with
the generated CRD and strict field validation); tests/cluster/test_differential_validation.py keeps
checking the two sides against each other.
"""

from __future__ import annotations

from typing import Any

import pytest
from maas_api import ManifestError, parse_maasjob
from maas_api.job import MAX_ANNOTATIONS_BYTES
from maas_api.manifest_yaml import ManifestYAMLError, load_manifests
from maas_api.spec import SplitSpec


def _job(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {"name": "job", **metadata},
        "spec": {"mode": "Train", "model": {"catalog": "LargeModel"}, **(spec or {})},
    }


def _problems(body: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as raised:
        parse_maasjob(body)
    return raised.value.problems


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"training": {"batch_size": 64}}, "spec.training.batch_size"),
        ({"runPolicy": {"clean_pod_policy": "All"}}, "spec.runPolicy.clean_pod_policy"),
        ({"training": {"steps": "200"}}, "spec.training.steps"),
        ({"runPolicy": {"suspend": "false"}}, "spec.runPolicy.suspend"),
        ({"runPolicy": {"suspend": 0}}, "spec.runPolicy.suspend"),
        ({"resources": {"gpus": True}}, "spec.resources.gpus"),
        ({"mode": "Serve", "serving": {"port": "8080"}}, "spec.serving.port"),
        (
            {"failurePolicy": {"exitCodes": [{"codes": ["42"], "action": "Retry"}]}},
            "spec.failurePolicy.exitCodes[0].codes[0]",
        ),
        ({"image": 5}, "spec.image"),
        ({"resources": {"cpu": 0.5}}, "spec.resources.cpu"),
        ({"resources": {"cpu": 2.0}}, "spec.resources.cpu"),
        ({"split": {"stages": 2.0}}, "spec.split.stages"),
        ({"training": {"steps": 1000.0}}, "spec.training.steps"),
        ({"parallelism": {"replicas": 2147483648}}, "spec.parallelism.replicas"),
        ({"training": {"steps": 2**63}}, "spec.training.steps"),
        ({"training": {"batchSize": 10**18}}, "spec.training.batchSize"),
        ({"parallelism": {"gpuBudget": 10**12}}, "spec.parallelism.gpuBudget"),
        ({"split": {"stages": 10**8}}, "spec.split.stages"),
        ({"data": {"synthetic": {"samples": 2**40}}}, "spec.data.synthetic.samples"),
        ({"training": {"learningRate": float("inf")}}, "spec.training.learningRate"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_what_the_api_server_refuses_is_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    problems = _problems(_job(spec))
    assert any(problem.startswith(f"{field}:") for problem in problems), problems


def test_nulls_are_dropped_and_defaulted_as_the_api_server_does() -> None:
    job = parse_maasjob(
        _job(
            {"split": None, "image": None, "placement": {"nodeSelector": {"team": None}}}, labels={"a": None}
        )
    )
    assert job.spec.split == SplitSpec()
    assert job.spec.image is None
    assert job.spec.placement.node_selector == {}
    assert job.metadata.labels == {"a": ""}  # ObjectMeta reads a null label value as ""


def test_nulls_stay_where_the_schema_is_free_form_or_a_list_item() -> None:
    job = parse_maasjob(_job({"model": {"catalog": "LargeModel", "args": {"extra": None}}}))
    assert job.spec.model.args == {"extra": None}
    assert _problems(_job({"failurePolicy": {"exitCodes": [{"codes": [None], "action": "Retry"}]}})) == [
        "spec.failurePolicy.exitCodes[0].codes[0]: Input should be a valid integer"
    ]


def test_integers_beyond_int64_are_floats_as_the_api_server_reads_them() -> None:
    job = parse_maasjob(_job({"model": {"catalog": "LargeModel", "args": {"width": 2**64}}}))
    assert job.spec.model.args["width"] == float(2**64)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"lables": {"team": "ml"}}, "metadata.lables"),
        ({"labels": {"team": "ml team"}}, "metadata.labels"),
        ({"labels": {"-team": "ml"}}, "metadata.labels"),
        ({"labels": {"Example.com/team": "ml"}}, "metadata.labels"),
        ({"labels": {"team": "x" * 64}}, "metadata.labels"),
        ({"annotations": {"example.com/a b": "x"}}, "metadata.annotations"),
        ({"annotations": {"a/b/c": "x"}}, "metadata.annotations"),
        ({"annotations": {"a": "x" * MAX_ANNOTATIONS_BYTES}}, "metadata.annotations"),
        ({"finalizers": ["a/b/c"]}, "metadata.finalizers"),
        ({"name": "Job"}, "metadata.name"),
        ({"name": None, "generateName": "j" * 41}, "metadata.name"),
        ({"name": None}, "metadata.name"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_metadata_is_checked_as_kubernetes_checks_it(metadata: dict[str, Any], field: str) -> None:
    problems = _problems(_job(**metadata))
    assert any(problem.startswith(f"{field}:") for problem in problems), problems


def test_metadata_the_api_server_accepts() -> None:
    job = parse_maasjob(
        _job(
            name=None,
            generateName="job-",
            labels={"example.com/team": "ml", "empty": ""},
            annotations={"Example.com/Key": "any text"},  # annotation keys are checked in lower case
            finalizers=["maas.dev/cleanup"],
            creationTimestamp=None,
        )
    )
    assert job.metadata.name is None and job.metadata.effective_name() == "job-xxxxx"


def test_api_version_and_kind_are_required_on_the_wire() -> None:
    body = _job()
    del body["apiVersion"], body["kind"]
    assert {problem.split(":")[0] for problem in _problems(body)} == {"apiVersion", "kind"}


def test_yaml_is_read_as_kubectl_reads_it() -> None:
    (document,) = load_manifests(
        "steps: 1e3\nstages: 2.0\nsuspend: y\nday: 2024-01-01\nclock: 1:30\nmask: 0x1F\nold: 017\n"
        "big: 1_000\nfraction: .5\nquoted: '1e3'\nnull_value: ~\n"
    )
    assert document == {
        "steps": 1000,
        "stages": 2,
        "suspend": True,
        "day": "2024-01-01",
        "clock": "1:30",
        "mask": 31,
        "old": 15,
        "big": 1000,
        "fraction": 0.5,
        "quoted": "1e3",
        "null_value": None,
    }


def test_yaml_numbers_that_kubectl_sends_as_integers_validate() -> None:
    text = (
        "apiVersion: maas.dev/v1alpha1\nkind: MaaSJob\nmetadata: {name: job}\n"
        "spec: {mode: Train, model: {catalog: LargeModel}, split: {stages: 2.0}, training: {steps: 1e3}}\n"
    )
    (document,) = load_manifests(text)
    job = parse_maasjob(document)
    assert job.spec.split.stages == 2 and job.spec.training is not None and job.spec.training.steps == 1000


def test_yaml_that_kubectl_cannot_send_is_an_error() -> None:
    with pytest.raises(ManifestYAMLError, match=r"spec\.flops: inf is not a JSON number"):
        list(load_manifests("spec: {flops: .inf}"))
    with pytest.raises(ManifestYAMLError, match="not valid YAML"):
        list(load_manifests("spec: ["))

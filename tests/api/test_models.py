"""The typed models: camelCase on the wire, defaults, catalog profiles, constants kept in step."""

from __future__ import annotations

import pytest
from maas_api import ManifestError, parse_maasjob
from maas_api.batch import DEFAULT_BATCH_SIZE
from maas_api.catalog import CatalogArgsError, catalog_profile, model_profile
from maas_api.contract import global_rank, stages_of_pipeline_rank, worker_index
from maas_api.spec import ModelSpec, ServingSpec, TrainingSpec


def _job(**spec: object) -> dict[str, object]:
    body: dict[str, object] = {"mode": "Train", "model": {"catalog": "LargeModel"}, **spec}
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "MaaSJob", "metadata": {"name": "job"}, "spec": body}


def test_wire_form_is_camel_case_and_round_trips() -> None:
    job = parse_maasjob(
        _job(parallelism={"replicas": 2, "minReplicas": 1}, runPolicy={"cleanPodPolicy": "All"})
    )
    wire = job.spec.to_wire()
    assert wire["parallelism"]["minReplicas"] == 1  # type: ignore[index]
    assert wire["runPolicy"]["cleanPodPolicy"] == "All"  # type: ignore[index]
    assert parse_maasjob({**_job(), "spec": wire}).spec == job.spec


def test_defaults_fill_nested_objects() -> None:
    spec = parse_maasjob(_job()).spec
    assert spec.split.strategy == "Layer" and spec.split.stages == 1
    assert spec.parallelism.replicas is None and spec.parallelism.schedule == "1F1B"
    assert spec.resources.gpus == 1
    assert spec.placement.topology_keys.rack == "topology.maas.dev/rack"


def test_quantities_accept_numbers_as_kubernetes_does() -> None:
    spec = parse_maasjob(_job(resources={"cpu": 4, "memory": "16Gi"})).spec
    assert spec.resources.cpu == "4" and spec.resources.memory == "16Gi"


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(ManifestError) as raised:
        parse_maasjob(_job(resources={"gpus": -1}, training={"steps": 0}))
    assert len(raised.value.problems) == 2
    assert any(p.startswith("spec.resources.gpus:") for p in raised.value.problems)
    assert any(p.startswith("spec.training.steps:") for p in raised.value.problems)


def test_cel_default_batch_size_matches_the_model_default() -> None:
    assert TrainingSpec().batch_size == ServingSpec().max_batch_size == DEFAULT_BATCH_SIZE


def test_large_model_profile() -> None:
    profile = catalog_profile(ModelSpec(catalog="LargeModel"))
    assert [u.name for u in profile.units] == ["layer_0", "layer_1", "layer_2"]
    assert [u.params for u in profile.units] == [220, 630, 1240]
    assert [u.flops_per_sample for u in profile.units] == [400.0, 1200.0, 2400.0]
    assert [u.activation_bytes_per_sample for u in profile.units] == [80, 120, 160]


def test_transformer_and_multitask_profiles() -> None:
    transformer = catalog_profile(ModelSpec(catalog="Transformer", args={"layers": 3}))
    assert [u.name for u in transformer.units] == ["embed", "block_0", "block_1", "block_2", "head"]
    assert {u.group for u in transformer.units} == {"embedding", "decoder", "lm_head"}
    multitask = catalog_profile(ModelSpec(catalog="MultiTaskMLP"))
    heads = [u.name for u in multitask.units if u.head]
    assert heads == ["head_classify", "head_regress"]


def test_catalog_args_errors_name_the_field() -> None:
    with pytest.raises(CatalogArgsError, match=r"spec\.model\.args\.layerz"):
        catalog_profile(ModelSpec(catalog="MLP", args={"layerz": 3}))
    with pytest.raises(CatalogArgsError, match=r"spec\.model\.args\.heads: 3 does not divide dim 128"):
        catalog_profile(ModelSpec(catalog="Transformer", args={"heads": 3}))


def test_user_profile_wins_over_catalog() -> None:
    unit = {"name": "u", "params": 1, "flopsPerSample": 2, "activationBytesPerSample": 3}
    assert [u.name for u in model_profile(ModelSpec(catalog="MLP", profile=[unit])).units] == ["u"]


def test_rank_layout_is_replica_major() -> None:
    # 2 replicas x 3 pipeline ranks x 2 processes: replica 1, pipeline rank 2, local rank 1 is the last rank.
    worker = worker_index(replica=1, pipeline_rank=2, pipeline_degree=3)
    assert worker == 5
    assert global_rank(worker, local_rank=1, procs_per_worker=2) == 11
    assert stages_of_pipeline_rank(1, pipeline_degree=2, stages_per_worker=2) == [1, 3]

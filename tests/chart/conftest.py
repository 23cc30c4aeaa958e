"""A local control plane of the chart tests' own: the operator they run is cluster-wide, and must not meet
the jobs (or the operator) of the other cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from maas_devcluster.control_plane import down, up
from maas_devcluster.testing import LocalCluster


@pytest.fixture(scope="module")
def chart_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state_dir = tmp_path_factory.mktemp("chart-cluster")
    running = up(state_dir)
    try:
        yield LocalCluster(running)
    finally:
        down(state_dir)

"""The planner: splits a model into pipeline stages and places the workers on nodes (pure: no Kubernetes).

Data in, data out: a MaaSJob spec, the model's unit profile and the nodes go in; a `maas_api.Plan` comes
out, or PlanError (the input cannot work) or Unschedulable (no room now).
"""

from maas_operator.planner.build import build_plan, worker_name
from maas_operator.planner.cluster import Node, load_nodes, parse_node, parse_nodes
from maas_operator.planner.placement import GangRequest, Placement, place_gang
from maas_operator.planner.reasons import PlanError, Unschedulable

__all__ = [
    "GangRequest",
    "Node",
    "Placement",
    "PlanError",
    "Unschedulable",
    "build_plan",
    "load_nodes",
    "parse_node",
    "parse_nodes",
    "place_gang",
    "worker_name",
]

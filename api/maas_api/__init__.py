"""The MaaSJob API: spec, status and plan types shared by the operator, the runtime and the CLI.

Imports neither kopf nor torch. The CRD in crds/ is generated from these models (maas_api.crd).
"""

from maas_api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION, MaaSJob, ManifestError, parse_maasjob
from maas_api.plan import ModelProfile, Plan, StagePlan, WorkerPlan
from maas_api.spec import MaaSJobSpec
from maas_api.status import MaaSJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "MaaSJob",
    "MaaSJobSpec",
    "MaaSJobStatus",
    "ManifestError",
    "ModelProfile",
    "Plan",
    "StagePlan",
    "WorkerPlan",
    "parse_maasjob",
]

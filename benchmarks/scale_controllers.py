"""The job controllers the scale benchmark compares: how each is installed, started, fed and removed again.

Kubeflow's training-operator (PyTorchJob) and JobSet run as local processes built by hack/build-anchors.sh, with
their admission webhooks live: their webhook configurations come from the Go module cache at run time, pointed
at `https://127.0.0.1:<port>` with a CA of our own (the API server calls them). Our operator runs as
`python -m maas_operator`. Every controller gets the same work: jobs of 4 pods x 1 `nvidia.com/gpu`, each pod
labelled `bench.maas.dev/job=<job>` so one watch follows the pods of all three.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the operator-as-a-process helper lives with the cluster tests

from maas_api.job import API_VERSION, GROUP, PLURAL, VERSION  # noqa: E402
from maas_devcluster.testing import LocalCluster, wait_until  # noqa: E402

from tests.cluster.operator.support import OperatorProcess  # noqa: E402
from tests.runtime.support import free_port  # noqa: E402

BENCH_LABEL = "bench.maas.dev/job"
"""On every pod of every controller: the name of the job it belongs to."""
GPU = "nvidia.com/gpu"
IMAGE = "registry.k8s.io/pause:3.10"
"""kwok runs no containers: any image name does."""
PODS_PER_JOB = 4
BUILD_ANCHORS = REPO / "hack" / "build-anchors.sh"


def _pod_template(job: str, container: str, restart_policy: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": container, "image": IMAGE, "resources": {"limits": {GPU: 1}}}],
    }
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return {"metadata": {"labels": {BENCH_LABEL: job}}, "spec": spec}


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


@dataclass(frozen=True)
class WebhookCertificates:
    """A CA and a serving certificate for a webhook server on 127.0.0.1 (RSA, PKCS#1 keys)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def cert(self) -> Path:
        return self.folder / "tls.crt"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"

    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca_cert.read_bytes()).decode()

    @classmethod
    def issue(cls, folder: Path, ca_name: str, server_names: tuple[str, ...]) -> WebhookCertificates:
        """`ca_name` is the CA's subject and DNS name; `server_names` the serving certificate's SANs."""
        folder.mkdir(parents=True, exist_ok=True)
        made = cls(folder)
        extensions = folder / "extensions.cnf"
        extensions.write_text(
            "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,digitalSignature\n"
            f"subjectAltName=DNS:{ca_name}\n"
            "[server]\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(server_names)}\n"
        )
        # -traditional: PKCS#1 ("RSA PRIVATE KEY"), which training-operator's certificate controller parses.
        for key in (made.ca_key, made.key):
            _run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"])
        _run(["openssl", "req", "-x509", "-new", "-key", str(made.ca_key), "-subj", f"/O={ca_name}/CN={ca_name}",
              "-days", "3650", "-out", str(made.ca_cert), "-extensions", "ca", "-config", str(extensions)])  # fmt: skip
        request = folder / "tls.csr"
        _run(
            ["openssl", "req", "-new", "-key", str(made.key), "-subj", "/CN=127.0.0.1", "-out", str(request)]
        )
        _run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(made.ca_cert), "-CAkey", str(made.ca_key),
              "-CAcreateserial", "-days", "3650", "-out", str(made.cert), "-extfile", str(extensions),
              "-extensions", "server"])  # fmt: skip
        return made


def webhooks_at(documents: list[dict[str, Any]], port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Webhook configurations whose Service references become URLs on 127.0.0.1:port (same paths)."""
    pointed = []
    for document in documents:
        document = json.loads(json.dumps(document))
        for webhook in document.get("webhooks") or []:
            path = webhook["clientConfig"]["service"].get("path", "/")
            webhook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
        pointed.append(document)
    return pointed


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and of its waited-for children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class JobController(ABC):
    """One controller under test. `install` once per cluster, then `start`/`stop` around its runs."""

    name: str
    """Row label in the report."""
    kind: str
    plural_path: str
    """`/apis/<group>/<version>` of the job kind."""
    plural: str

    def __init__(self, cluster: LocalCluster, scratch: Path) -> None:
        self.cluster = cluster
        self.scratch = scratch / self.name
        self.scratch.mkdir(parents=True, exist_ok=True)

    def unavailable(self) -> str | None:
        """Why this controller cannot run here (None when it can)."""
        return None

    @abstractmethod
    def install(self) -> None:
        """CRDs, namespaces and certificates (webhooks are registered by `start`)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None:
        """Stops the process by its pid and removes its webhook configurations."""

    @abstractmethod
    def pid(self) -> int: ...

    @abstractmethod
    def job(self, name: str, namespace: str) -> dict[str, Any]:
        """One job of PODS_PER_JOB one-GPU pods, each labelled BENCH_LABEL=name."""

    def jobs_path(self, namespace: str) -> str:
        return f"{self.plural_path}/namespaces/{namespace}/{self.plural}"

    def log_tail(self, lines: int = 30) -> str:
        return ""


class BinaryController(JobController):
    """An anchor: a Go binary from hack/build-anchors.sh, run as a local process with live webhooks."""

    binary_name: str
    webhook_names: tuple[str, ...] = ()

    def __init__(self, cluster: LocalCluster, scratch: Path) -> None:
        super().__init__(cluster, scratch)
        self.process: subprocess.Popen[bytes] | None = None
        self.webhook_port = 0
        self.starts = 0

    @property
    def binary(self) -> Path:
        bin_dir = _run(["bash", str(BUILD_ANCHORS), "--print-bin-dir"]).stdout.strip()
        return Path(bin_dir) / self.binary_name

    def module_dir(self) -> Path:
        """The anchor's Go module in the module cache: its CRDs and webhook manifests are read from there."""
        return Path(_run(["bash", str(BUILD_ANCHORS), "--print-module-dir", self.binary_name]).stdout.strip())

    def unavailable(self) -> str | None:
        if not self.binary.is_file():
            return f"{self.binary} is not built (run hack/build-anchors.sh)"
        try:
            self.module_dir()
        except RuntimeError as error:
            return f"its Go module is not in the module cache: {error}"
        return None

    def kubectl(self, *arguments: str, stdin: str | None = None) -> None:
        self.cluster.kubectl(*arguments, stdin=stdin, timeout=120)

    def apply_documents(self, documents: list[dict[str, Any]]) -> None:
        for document in documents:
            # Server-side: the CRDs are larger than the client-side apply annotation allows.
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(document))

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def webhook_documents(self) -> list[dict[str, Any]]:
        """The anchor's webhook configurations as its module ships them."""

    @abstractmethod
    def ready(self) -> bool:
        """The controller serves its webhooks and runs its controllers."""

    def start(self) -> None:
        self.starts += 1
        self.webhook_port = free_port()
        self.prepare_start()
        self.apply_documents(webhooks_at(self.webhook_documents(), self.webhook_port, self.certs.ca_bundle()))
        log = (self.scratch / f"{self.name}-{self.starts}.log").open("wb")
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), **self.environment()}
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(f"{self.name} ready", self._ready_or_exited, timeout=120, interval=0.5)

    def prepare_start(self) -> None:
        """Anything a start needs before the process runs (certificates in place)."""

    def environment(self) -> dict[str, str]:
        return {}

    def _ready_or_exited(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited; log:\n{self.log_tail()}")
        return self.ready()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for document in self.webhook_documents():
            kind = document["kind"].lower()
            self.cluster.kubectl(
                "delete", kind, document["metadata"]["name"], "--ignore-not-found", check=False
            )

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        logs = sorted(self.scratch.glob(f"{self.name}-*.log"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else ""

    @property
    def certs(self) -> WebhookCertificates:
        return WebhookCertificates(self.scratch / "certs")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class TrainingOperator(BinaryController):
    """Kubeflow training-operator v1, PyTorchJob only. Its certificate controller must accept our certificate
    (CA with DNS name `training-operator-ca`, server name `training-operator.kubeflow.svc`), or it makes its own
    without 127.0.0.1 and the API server could not call the webhook."""

    name = "training-operator"
    binary_name = "training-operator"
    kind = "PyTorchJob"
    plural_path = "/apis/kubeflow.org/v1"
    plural = "pytorchjobs"
    namespace = "kubeflow"
    secret = "training-operator-webhook-cert"
    cert_dir = Path("/tmp/k8s-webhook-server/serving-certs")
    """Hard-coded in training-operator v1.8.1 (pkg/cert)."""

    def install(self) -> None:
        crds = self.module_dir() / "manifests" / "base" / "crds"
        for crd in sorted(crds.glob("kubeflow.org_*.yaml")):
            self.apply_documents(yaml_documents(crd))
        self.kubectl("create", "namespace", self.namespace)
        WebhookCertificates.issue(
            self.certs.folder, "training-operator-ca", ("DNS:training-operator.kubeflow.svc", "IP:127.0.0.1")
        )
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret, "namespace": self.namespace},
            "data": {
                name: base64.b64encode(path.read_bytes()).decode()
                for name, path in (
                    ("ca.crt", self.certs.ca_cert),
                    ("ca.key", self.certs.ca_key),
                    ("tls.crt", self.certs.cert),
                    ("tls.key", self.certs.key),
                )
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
        wait_until(
            "the PyTorchJob CRD served",
            lambda: self.cluster.kubectl("get", "pytorchjobs", "-A", check=False).returncode == 0,
            timeout=60,
        )

    def prepare_start(self) -> None:
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        for source in (self.certs.ca_cert, self.certs.ca_key, self.certs.cert, self.certs.key):
            (self.cert_dir / source.name).write_bytes(source.read_bytes())
        self.metrics_port = free_port()

    def webhook_documents(self) -> list[dict[str, Any]]:
        documents = yaml_documents(self.module_dir() / "manifests" / "base" / "webhook" / "manifests.yaml")
        for document in documents:
            # The name its certificate controller looks up to inject the CA (the kustomize patch renames it).
            document["metadata"]["name"] = "validator.training-operator.kubeflow.org"
        return documents

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--kubeconfig={self.cluster.kubeconfig}",
            f"--webhook-server-port={self.webhook_port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            "--health-probe-bind-address=0",
            "--enable-scheme=pytorchjob",
        ]

    def environment(self) -> dict[str, str]:
        return {"MY_POD_NAMESPACE": self.namespace}

    def ready(self) -> bool:
        # Its controllers start only after the certificate controller is done; the log says when.
        return _http_ok(
            f"http://127.0.0.1:{self.metrics_port}/metrics"
        ) and "Starting workers" in self.log_tail(400)

    def job(self, name: str, namespace: str) -> dict[str, Any]:
        def replicas(count: int) -> dict[str, Any]:
            return {
                "replicas": count,
                "restartPolicy": "OnFailure",
                "template": _pod_template(name, "pytorch"),
            }

        return {
            "apiVersion": "kubeflow.org/v1",
            "kind": self.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"pytorchReplicaSpecs": {"Master": replicas(1), "Worker": replicas(PODS_PER_JOB - 1)}},
        }


class JobSet(BinaryController):
    """JobSet: one replicated Job of PODS_PER_JOB indexed pods per JobSet (the Job controller makes the pods)."""

    name = "jobset"
    binary_name = "jobset"
    kind = "JobSet"
    plural_path = "/apis/jobset.x-k8s.io/v1alpha2"
    plural = "jobsets"

    def install(self) -> None:
        crd = self.module_dir() / "config" / "components" / "crd" / "bases" / "jobset.x-k8s.io_jobsets.yaml"
        self.apply_documents(yaml_documents(crd))
        WebhookCertificates.issue(self.certs.folder, "jobset-ca", ("IP:127.0.0.1",))
        wait_until(
            "the JobSet CRD served",
            lambda: self.cluster.kubectl("get", "jobsets", "-A", check=False).returncode == 0,
            timeout=60,
        )

    def prepare_start(self) -> None:
        self.health_port = free_port()
        configuration = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1", "certDir": str(self.certs.folder)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
        }
        (self.scratch / "config.yaml").write_text(yaml.safe_dump(configuration))

    def webhook_documents(self) -> list[dict[str, Any]]:
        path = self.module_dir() / "config" / "components" / "webhook" / "manifests.yaml"
        documents = yaml_documents(path)
        for document in documents:
            document["metadata"]["name"] = f"jobset-{document['metadata']['name']}"
            for webhook in document.get("webhooks") or []:
                if any("pods" in rule.get("resources", []) for rule in webhook.get("rules") or []):
                    # As its kustomize overlay does: only pods of JobSets go through it, not every pod.
                    webhook["objectSelector"] = {
                        "matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]
                    }
        return documents

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--kubeconfig={self.cluster.kubeconfig}",
            f"--config={self.scratch / 'config.yaml'}",
        ]

    def ready(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.health_port}/readyz")

    def job(self, name: str, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": self.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "workers",
                        "replicas": 1,
                        "template": {
                            "spec": {
                                "parallelism": PODS_PER_JOB,
                                "completions": PODS_PER_JOB,
                                "completionMode": "Indexed",
                                "backoffLimit": 0,
                                "template": _pod_template(name, "worker", restart_policy="Never"),
                            }
                        },
                    }
                ]
            },
        }


class MaaSOperator(JobController):
    """Our operator as a real process; a job is 2 stages x 2 data-parallel replicas of one GPU each."""

    name = "maas-operator"
    kind = "MaaSJob"
    plural_path = f"/apis/{GROUP}/{VERSION}"
    plural = PLURAL
    stages, replicas = 2, 2

    def __init__(self, cluster: LocalCluster, scratch: Path, resync_seconds: float = 60.0) -> None:
        super().__init__(cluster, scratch)
        self.operator = OperatorProcess(cluster, self.scratch, resync_seconds=resync_seconds)

    def install(self) -> None:
        self.cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "maasjob.yaml"))
        wait_until(
            "the MaaSJob CRD served",
            lambda: self.cluster.kubectl("get", PLURAL, "-A", check=False).returncode == 0,
            timeout=60,
        )

    def start(self) -> None:
        self.operator.start()

    def stop(self) -> None:
        self.operator.stop()

    def pid(self) -> int:
        assert self.operator.process is not None
        return self.operator.process.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.operator.log_text().splitlines()[-lines:])

    def job(self, name: str, namespace: str) -> dict[str, Any]:
        return maasjob(name, namespace, self.stages, self.replicas)


def maasjob(name: str, namespace: str, stages: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "MaaSJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "mode": "Train",
            "model": {"catalog": "LargeModel"},
            "split": {"stages": stages},
            "parallelism": {"replicas": replicas, "microbatches": 4},
            "resources": {"gpus": 1},
            "template": {"labels": {BENCH_LABEL: name}},
        },
    }


CONTROLLERS: dict[str, type[JobController]] = {
    TrainingOperator.name: TrainingOperator,
    JobSet.name: JobSet,
    MaaSOperator.name: MaaSOperator,
}

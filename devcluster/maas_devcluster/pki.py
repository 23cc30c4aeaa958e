"""Issues the local cluster's CA, serving and client certificates and writes kubeconfigs (openssl CLI)."""

from __future__ import annotations

import base64
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

OPENSSL = "openssl"
CERT_DAYS = 3650
# Names the API server's certificate must answer to: loopback for us, the in-cluster names for pods.
API_SERVER_NAMES = (
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
    # The first address of --service-cluster-ip-range=10.0.0.0/24 is the `kubernetes` Service.
    "IP:10.0.0.1",
)


@dataclass(frozen=True)
class ClientIdentity:
    """Who a client certificate says it is: its user name (CN) and groups (O)."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


# The controller-manager and scheduler get the user names the bootstrap RBAC policy already binds.
ADMIN = ClientIdentity("admin", "maas-dev-admin", ("system:masters",))
CONTROLLER_MANAGER = ClientIdentity("kube-controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("kube-scheduler", "system:kube-scheduler")
# kwok writes status for every fake node and pod, so it gets full rights like a node fleet would need.
KWOK = ClientIdentity("kwok", "kwok-controller", ("system:masters",))
# The API server's identity towards kubelets (logs, exec): bound to system:kubelet-api-admin, no more.
APISERVER_KUBELET_CLIENT = ClientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
CLIENT_IDENTITIES = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK, APISERVER_KUBELET_CLIENT)


@dataclass(frozen=True)
class ClusterPki:
    """Paths of every key and certificate under one folder."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.folder / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.folder / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.folder / "sa.pub"

    def client_cert(self, identity: ClientIdentity) -> Path:
        return self.folder / f"{identity.file_stem}.crt"

    def client_key(self, identity: ClientIdentity) -> Path:
        return self.folder / f"{identity.file_stem}.key"


def _openssl(*arguments: str) -> None:
    result = subprocess.run([OPENSSL, *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(arguments[:2])} failed: {result.stderr.strip()}")


def _new_ec_key(path: Path) -> None:
    # P-256 keys are generated in milliseconds, unlike RSA; Go and Python accept both.
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _subject(common_name: str, organizations: tuple[str, ...] = ()) -> str:
    return "".join(f"/O={organization}" for organization in organizations) + f"/CN={common_name}"


def _sign(pki: ClusterPki, key: Path, cert: Path, subject: str, extensions: list[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        request = Path(scratch) / "request.csr"
        extension_file = Path(scratch) / "extensions.cnf"
        extension_file.write_text("\n".join(extensions) + "\n")
        _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(request))
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
            "-set_serial", str(secrets.randbits(63)), "-days", str(CERT_DAYS),
            "-extfile", str(extension_file), "-out", str(cert),
        )  # fmt: skip


def create_pki(folder: Path, extra_api_server_names: tuple[str, ...] = ()) -> ClusterPki:
    """A fresh CA, the API server's serving certificate, service-account keys and one client cert each.

    `extra_api_server_names`: more subjectAltName entries for the API server (the real node's pods reach it
    at the pod network's gateway address)."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = ClusterPki(folder)
    _new_ec_key(pki.ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pki.ca_key), "-subj", _subject("maas-dev-ca"),
        "-days", str(CERT_DAYS), "-out", str(pki.ca_cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    _new_ec_key(pki.serving_key)
    _sign(
        pki, pki.serving_key, pki.serving_cert, _subject("kube-apiserver"),
        ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
         "extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(API_SERVER_NAMES + extra_api_server_names)],
    )  # fmt: skip
    for identity in CLIENT_IDENTITIES:
        issue_client_cert(pki, identity)
    # Service-account tokens are signed with RSA, the algorithm every token consumer supports.
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        str(pki.service_account_key),
    )
    pki.service_account_key.chmod(0o600)
    _openssl(
        "pkey", "-in", str(pki.service_account_key), "-pubout", "-out", str(pki.service_account_public_key)
    )
    return pki


def issue_client_cert(pki: ClusterPki, identity: ClientIdentity) -> None:
    """A key and a client certificate (CN = user, O = groups) signed by the cluster CA."""
    key = pki.client_key(identity)
    _new_ec_key(key)
    _sign(
        pki, key, pki.client_cert(identity), _subject(identity.user, identity.groups),
        ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
         "extendedKeyUsage=clientAuth"],
    )  # fmt: skip


def issue_serving_cert(pki: ClusterPki, file_stem: str, common_name: str, names: tuple[str, ...]) -> None:
    """A key and a serving certificate for `names` (subjectAltName entries such as IP:10.0.0.1)."""
    key = pki.folder / f"{file_stem}.key"
    _new_ec_key(key)
    _sign(
        pki, key, pki.folder / f"{file_stem}.crt", _subject(common_name),
        ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
         "extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(names)],
    )  # fmt: skip


def _base64_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, server: str, pki: ClusterPki, identity: ClientIdentity, cluster_name: str
) -> Path:
    """A self-contained kubeconfig (certificates embedded) for one identity."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": _base64_of(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": identity.user,
                "user": {
                    "client-certificate-data": _base64_of(pki.client_cert(identity)),
                    "client-key-data": _base64_of(pki.client_key(identity)),
                },
            }
        ],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": identity.user}}],
        "current-context": cluster_name,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    path.chmod(0o600)
    return path

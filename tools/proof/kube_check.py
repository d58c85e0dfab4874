"""Checks deploy/kubernetes/ against a real kube-apiserver, without a cluster.

    python -m tools.proof.kube_check [PATH ...] [--no-chart]

Starts etcd and kube-apiserver (built by scripts/install-kube-check.sh) on
127.0.0.1, installs the Dapr 1.18.2 CRDs the way `helm install` does, and sends
every object of the manifests (default: deploy/kubernetes/manifests/) as a
server-side apply with `dryRun=All` and `fieldValidation=Strict`: the server
runs its defaulting, validation and admission and the CRDs' schemas, rejects
unknown fields, and stores nothing. Then the same for the dapr/dapr chart
rendered by `helm template` with deploy/kubernetes/dapr-values.yaml.
One line per object ("accepted" or "REJECTED" with the server's reason); the
exit status is 1 if any object was rejected. Both servers stop at the end.

What this does not do: schedule pods, pull images, run the sidecar injector or
the Dapr operator. Nothing runs on Kubernetes here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import yaml

from tools.stack.processes import StackError, die_with_parent, log_tail, rel, require_free, stop_group, wait_until
from tools.stack.settings import DAPR_RUNTIME_VERSION, DATA_DIR, FACTS, LOG_DIR, ROOT, TDA_HOME

KUBERNETES_VERSION = FACTS["KUBERNETES_VERSION"]
APISERVER_PORT = int(FACTS["KUBE_CHECK_APISERVER_PORT"])
ETCD_CLIENT_PORT = int(FACTS["KUBE_CHECK_ETCD_CLIENT_PORT"])
ETCD_PEER_PORT = int(FACTS["KUBE_CHECK_ETCD_PEER_PORT"])
PORTS = {"kube-apiserver": APISERVER_PORT, "its etcd": ETCD_CLIENT_PORT, "its etcd peer": ETCD_PEER_PORT}

# What scripts/install-kube-check.sh builds and copies (its PREFIX).
PREFIX = TDA_HOME / f"kube-check-{KUBERNETES_VERSION}"
BIN = PREFIX / "bin"
DAPR_SOURCES = PREFIX / f"dapr-{DAPR_RUNTIME_VERSION}"
CHART = DAPR_SOURCES / "charts" / "dapr"
ANNOTATIONS_GO = DAPR_SOURCES / "annotations.go"

DEPLOY_DIR = ROOT / "deploy" / "kubernetes"
MANIFESTS_DIR = DEPLOY_DIR / "manifests"
VALUES_FILE = DEPLOY_DIR / "dapr-values.yaml"
# `kubectl apply` puts objects without a namespace in the current one; `default` in a new cluster.
APP_NAMESPACE = "default"
DAPR_NAMESPACE = "dapr-system"
START_TIMEOUT_S = 60.0


class Rejected(Exception):
    """The apiserver refused an object; the message is its reason."""


def require_installed() -> None:
    if not (PREFIX / ".complete").exists():
        raise StackError(f"the Kubernetes check is not installed in {PREFIX}. "
                         "Run `bash scripts/install-kube-check.sh` (Go builds: minutes, once per machine; "
                         "docs/kubernetes.md quotes a recorded build).")


def documents(path: Path) -> list[dict]:
    """The objects of a YAML file (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files(paths: list[Path]) -> list[Path]:
    """The .yaml files named, a directory standing for the ones in it (as `kubectl apply -f DIR`)."""
    return [file for path in paths for file in (sorted(path.glob("*.yaml")) if path.is_dir() else [path])]


def render_chart(values: Path = VALUES_FILE) -> list[dict]:
    """The dapr/dapr chart as `helm install -n dapr-system -f VALUES` would create it (CRDs apart)."""
    require_installed()
    result = subprocess.run([str(BIN / "helm"), "template", "dapr", str(CHART), "--namespace", DAPR_NAMESPACE,
                             "--values", str(values), "--kube-version", f"v{KUBERNETES_VERSION}"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise StackError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


class ApiServer:
    """A client for the throw-away apiserver: real creates (CRDs, namespaces) and dry runs."""

    def __init__(self, client: httpx.Client):
        self.client = client
        self._kinds: dict[str, dict[str, tuple[str, bool]]] = {}

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """The plural resource name of `kind` and whether it is namespaced, from the server's discovery."""
        if kind not in self._kinds.get(api_version, {}):
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            answer = self.client.get(path)
            if answer.status_code == 404:
                raise Rejected(f"the server serves no {api_version} (is a CRD missing?)")
            answer.raise_for_status()
            self._kinds[api_version] = {r["kind"]: (r["name"], r["namespaced"])
                                        for r in answer.json()["resources"] if "/" not in r["name"]}
        if kind not in self._kinds[api_version]:
            raise Rejected(f"the server knows no kind {kind} in {api_version}")
        return self._kinds[api_version][kind]

    def path(self, obj: dict, namespace: str) -> str:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        plural, namespaced = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        where = f"/namespaces/{obj['metadata'].get('namespace') or namespace}" if namespaced else ""
        return f"{base}{where}/{plural}/{obj['metadata']['name']}"

    def apply(self, obj: dict, namespace: str = APP_NAMESPACE, dry_run: bool = True) -> dict:
        """Server-side apply of `obj`; with `dry_run`, validated and admitted but not stored."""
        params = {"fieldManager": "tiny-durable-agent", "fieldValidation": "Strict", "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        answer = self.client.patch(self.path(obj, namespace), params=params, content=json.dumps(obj),
                                   headers={"Content-Type": "application/apply-patch+yaml"})
        if answer.status_code not in (200, 201):
            try:
                reason = answer.json().get("message", answer.text)
            except ValueError:
                reason = answer.text
            raise Rejected(f"{answer.status_code}: {reason}")
        return answer.json()

    def install_dapr_crds(self) -> list[str]:
        """Create the chart's CRDs (as `helm install` does from crds/) and wait until each is served."""
        crds = [doc for file in sorted((CHART / "crds").glob("*.yaml")) for doc in documents(file)]
        for crd in crds:
            self.apply(crd, dry_run=False)

        def established() -> bool:
            for crd in crds:
                answer = self.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                         f"{crd['metadata']['name']}")
                conditions = answer.json().get("status", {}).get("conditions", []) if answer.is_success else []
                if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    return False
            self._kinds.clear()  # discovery changes as CRDs appear: ask again, and wait until it lists them
            try:
                return all(self.resource(f"{crd['spec']['group']}/{version['name']}",
                                         crd["spec"]["names"]["kind"])
                           for crd in crds for version in crd["spec"]["versions"] if version["served"])
            except Rejected:
                return False

        wait_until(established, "the Dapr CRDs", timeout_s=START_TIMEOUT_S)
        return [crd["spec"]["names"]["kind"] for crd in crds]

    def create_namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, dry_run=False)


def _start(name: str, argv: list[str]) -> tuple[psutil.Process, Path]:
    """One server in its own process group, ending with this process, output to its log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"kube-check-{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    return psutil.Process(popen.pid), log


def _private_key_pem() -> bytes:
    """The key the apiserver signs service-account tokens with (it insists on one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _trust(cert: Path, found: list[ssl.SSLContext]) -> bool:
    """Append a TLS context that trusts `cert` to `found`, once the file holds a whole certificate."""
    try:
        found.append(ssl.create_default_context(cafile=str(cert)))
        return True
    except (OSError, ssl.SSLError):
        return False


def _ready(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def apiserver() -> Iterator[ApiServer]:
    """etcd and kube-apiserver on 127.0.0.1 for the duration of the block; both stop at its end."""
    require_installed()
    require_free(PORTS)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kube-check-", dir=DATA_DIR))  # etcd's data, certificates, token
    token = secrets.token_hex(16)
    (work / "tokens.csv").write_text(f"{token},tiny-durable-agent,tiny-durable-agent,system:masters\n")
    (work / "tokens.csv").chmod(0o600)
    (work / "service-accounts.key").write_bytes(_private_key_pem())
    started: list[psutil.Process] = []
    try:
        etcd, etcd_log = _start("etcd", [
            str(BIN / "etcd"), "--data-dir", str(work / "etcd"), "--unsafe-no-fsync",
            "--listen-client-urls", f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-cluster", f"default=http://127.0.0.1:{ETCD_PEER_PORT}",
            "--listen-metrics-urls", "", "--log-level", "warn"])
        started.append(etcd)
        with httpx.Client(base_url=f"http://127.0.0.1:{ETCD_CLIENT_PORT}", timeout=2) as plain:
            wait_until(lambda: _ready(plain, "/health"), "etcd", START_TIMEOUT_S, etcd, etcd_log)
        key = str(work / "service-accounts.key")
        server, server_log = _start("apiserver", [
            str(BIN / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(APISERVER_PORT), "--cert-dir", str(work / "certs"),
            "--token-auth-file", str(work / "tokens.csv"), "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", key, "--service-account-signing-key-file", key,
            "--service-cluster-ip-range", "10.0.0.0/24", "--profiling=false"])
        started.append(server)
        # The server writes a self-signed certificate and its CA there on start; wait until it is whole.
        cert, tls = work / "certs" / "apiserver.crt", []
        wait_until(lambda: _trust(cert, tls), "kube-apiserver's certificate", START_TIMEOUT_S, server, server_log)
        with httpx.Client(base_url=f"https://127.0.0.1:{APISERVER_PORT}", verify=tls[0], timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            wait_until(lambda: _ready(client, "/readyz"), "kube-apiserver", START_TIMEOUT_S, server, server_log)
            yield ApiServer(client)
    finally:
        for process in reversed(started):
            stop_group(process)
        shutil.rmtree(work, ignore_errors=True)


def check(api: ApiServer, objects: list[tuple[str, dict, str]]) -> list[tuple[str, str, str | None]]:
    """Dry-run each (source, object, namespace): (source, Kind/name, None if accepted else the reason)."""
    verdicts = []
    for source, obj, namespace in objects:
        try:
            api.apply(obj, namespace)
            verdicts.append((source, name_of(obj), None))
        except Rejected as reason:
            verdicts.append((source, name_of(obj), str(reason)))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.proof.kube_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[MANIFESTS_DIR],
                        help="manifest files or directories (default: deploy/kubernetes/manifests)")
    parser.add_argument("--no-chart", action="store_true", help="skip the dapr/dapr chart with dapr-values.yaml")
    args = parser.parse_args(argv)
    try:
        objects = [(rel(file.resolve()), obj, APP_NAMESPACE) for file in manifest_files(args.paths)
                   for obj in documents(file)]
        chart = [] if args.no_chart else [(f"dapr chart + {rel(VALUES_FILE)}", obj, DAPR_NAMESPACE)
                                          for obj in render_chart()]
        with apiserver() as api:
            print(f"kube-apiserver v{KUBERNETES_VERSION} on 127.0.0.1:{APISERVER_PORT}; Dapr "
                  f"{DAPR_RUNTIME_VERSION} CRDs installed: {', '.join(api.install_dapr_crds())}", flush=True)
            if chart:
                api.create_namespace(DAPR_NAMESPACE)  # as `helm install --create-namespace`
            verdicts = check(api, objects + chart)
    except StackError as exc:
        print(f"[kube-check] error: {exc}", file=sys.stderr)
        return 2
    except (Rejected, httpx.HTTPError) as exc:  # the server refused a CRD or a namespace, or did not answer
        print(f"[kube-check] error: {exc}{log_tail(LOG_DIR / 'kube-check-apiserver.log')}", file=sys.stderr)
        return 2
    for source, name, reason in verdicts:
        print(f"{'accepted' if reason is None else 'REJECTED'}  {name}  ({source})" + (f": {reason}" if reason else ""))
    rejected = sum(reason is not None for _, _, reason in verdicts)
    print(f"{len(verdicts) - rejected} of {len(verdicts)} objects accepted by the dry run "
          "(server-side apply, dryRun=All, fieldValidation=Strict); nothing was stored or run")
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())

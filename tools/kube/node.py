"""A real one-machine Kubernetes node: `make kube-up` starts it, `make kube-down` stops it.

The parts: etcd and kube-apiserver (scripts/install-kube-check.sh), kube-controller-manager,
kube-scheduler, kube-proxy, kubelet and kubectl (scripts/install-kube-node.sh, all from k8s.io/kubernetes of the
pinned release), Debian's containerd, runc and CNI plugins (bridge, host-local, loopback, portmap),
and a pause image made here from deploy/kubernetes/node/pause.c. Nothing is pulled: images reach
containerd by `ctr images import` from OCI archives that buildah writes.

Every process runs in a network namespace of its own (`ip netns add`, entered with nsenter: the
mount namespace stays the machine's, which kubelet and containerd must share), whose only links are
loopback (which also carries the node's address) and the pods' bridge: nothing of the node is
reachable from the network, and its ports clash with nothing else on the machine. `kubectl` reaches it
through `python -m tools.kube.node kubectl ...` (the same, entered into the namespace).

    python -m tools.kube.node up | down | status | kubectl ARGS...
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

from tools.stack.settings import FACTS, LOG_DIR, ROOT, STATE_DIR, TDA_HOME

VERSION = FACTS["KUBERNETES_VERSION"]
CHECK_BIN = TDA_HOME / f"kube-check-{VERSION}" / "bin"  # etcd, kube-apiserver, helm
NODE_BIN = TDA_HOME / f"kube-node-{VERSION}" / "bin"  # kubelet, kube-controller-manager, kube-scheduler, kubectl
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
NETNS = FACTS["KUBE_NODE_NETNS"]
NODE_NAME = FACTS["KUBE_NODE_NAME"]
NODE_IP = FACTS["KUBE_NODE_IP"]
POD_CIDR = FACTS["KUBE_NODE_POD_CIDR"]
SERVICE_CIDR = FACTS["KUBE_NODE_SERVICE_CIDR"]
APISERVER_PORT = int(FACTS["KUBE_NODE_APISERVER_PORT"])
PAUSE_IMAGE = "localhost/tda-pause:1"
COREDNS_IMAGE = f"localhost/tda-coredns:{FACTS['COREDNS_VERSION']}"
CLUSTER_DNS = SERVICE_CIDR.rsplit(".", 1)[0] + ".10"
STATE = STATE_DIR / "kube"
PIDS = STATE / "pids"
ORDER = ["etcd", "containerd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet"]
START_TIMEOUT_S = 180.0
# One node per machine: its network namespace (/run/netns/<NETNS>), the CRI's mounts under /run/containerd
# and kubelet's cgroups have machine-wide names, so a second node (another clone's, a test beside a
# `make kube-up`) would take the first one's apart. The node's processes hold this lock through an
# inherited open file: it is free again once the last of them has ended, even by SIGKILL. It names the
# state folder of the clone that started the node.
MACHINE_LOCK = TDA_HOME / "kube-node.lock"
_lock_fd: int | None = None  # held while `up` starts the node's processes, which inherit it


LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NodeError(RuntimeError):
    """The node could not start or stop; the message says where."""


def in_netns(argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


def in_node_network(function: Callable[[], T]) -> T:
    """`function()` run by a thread that has entered the node's network namespace: the sockets it makes
    (and those of the threads it starts, which inherit the namespace) live there, the rest of the
    process stays where it was. The tests' scripted LLM listens so, and their clients call from there."""
    box: dict = {}

    def enter_and_call() -> None:
        try:
            fd = os.open(f"/run/netns/{NETNS}", os.O_RDONLY)
            try:
                if LIBC.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {NETNS}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
            box["value"] = function()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=enter_and_call, name="in-node-network")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def processes_in_netns() -> list[psutil.Process]:
    """The processes whose network namespace is the node's (their main thread's)."""
    try:
        wanted = os.stat(f"/run/netns/{NETNS}").st_ino
    except OSError:
        return []
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if process.pid != os.getpid() and os.stat(f"/proc/{process.pid}/ns/net").st_ino == wanted:
                found.append(process)
    return found


def log_of(name: str) -> Path:
    return LOG_DIR / f"kube-node-{name}.log"


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- processes -------------------------------------------------------------------------
def start(name: str, argv: list[str]) -> psutil.Process:
    PIDS.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(log_of(name), "ab") as log:
        popen = subprocess.Popen(in_netns(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=STATE,
                                 pass_fds=(_lock_fd,) if _lock_fd is not None else ())
    process = psutil.Process(popen.pid)
    (PIDS / f"{name}.pid").write_text(f"{process.pid} {process.create_time()}\n")
    return process


def gone(process: psutil.Process) -> bool:
    """Ended. A zombie counts as ended: `make kube-up` exits after starting the node, so its processes belong
    to whoever adopts them, which may not reap them (a test's PID namespace: its pytest)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def recorded(name: str) -> psutil.Process | None:
    try:
        pid, created = (PIDS / f"{name}.pid").read_text().split()
        process = psutil.Process(int(pid))
        return process if abs(process.create_time() - float(created)) < 0.01 and not gone(process) else None
    except (OSError, ValueError, psutil.Error):
        return None


def stop_process(name: str, timeout_s: float = 20) -> None:
    """SIGTERM to the process group recorded as `name`, SIGKILL after `timeout_s`; polls, with a deadline."""
    process = recorded(name)
    for sig, deadline_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if process is None or gone(process):
            break
        with contextlib.suppress(OSError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + deadline_s
        while not gone(process) and time.monotonic() < deadline:
            time.sleep(0.1)
    (PIDS / f"{name}.pid").unlink(missing_ok=True)


def wait_until(check, what: str, process: psutil.Process | None = None, log: Path | None = None,
               timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if process is not None and gone(process):
            raise NodeError(f"{what}: the process exited early; the end of {log}:\n{tail(log)}" if log else what)
        if time.monotonic() > deadline:
            raise NodeError(f"{what}: not ready after {timeout_s:.0f} s; the end of {log}:\n{tail(log)}")
        time.sleep(0.5)


def run(argv: list[str], netns: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(in_netns(argv) if netns else argv, capture_output=True, text=True, **kwargs)


# --- the node's files ----------------------------------------------------------------------
def kubeconfig(token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "tda",
        "clusters": [{"name": "tda", "cluster": {"server": f"https://{NODE_IP}:{APISERVER_PORT}",
                                                  "certificate-authority": str(STATE / "certs" / "apiserver.crt")}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "tda", "context": {"cluster": "tda", "user": "admin"}}]}, indent=1)


def containerd_config() -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{STATE}/containerd/root"
state = "{STATE}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{STATE}/containerd.sock"
[ttrpc]
  address = "{STATE}/containerd.ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{STATE}/cni/net.d"
"""


def cni_config() -> str:
    return json.dumps({
        "cniVersion": "0.4.0", "name": "tda-pods",
        "plugins": [{"type": "bridge", "bridge": "tda-cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(STATE / "cni" / "ipam")}},
                    {"type": "portmap", "capabilities": {"portMappings": True}}]}, indent=1)


def kubelet_config() -> str:
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "failSwapOn": False, "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{STATE}/containerd.sock",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "clusterDomain": "cluster.local", "clusterDNS": [CLUSTER_DNS], "resolvConf": str(STATE / "resolv.conf"),
        "cgroupsPerQOS": True, "enforceNodeAllocatable": [], "localStorageCapacityIsolation": False,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "makeIPTablesUtilChains": False, "protectKernelDefaults": False, "serializeImagePulls": False,
        "rotateCertificates": False, "serverTLSBootstrap": False}, indent=1)


def kube_proxy_config() -> str:
    return json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(STATE / "admin.kubeconfig")}, "mode": "iptables",
        "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
        "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
        # Leave the kernel's conntrack settings as they are (changing them wants rights we lack).
        "conntrack": {"maxPerCore": 0, "min": 0},
        # Every connection to a cluster address is masqueraded: the pods share one bridge, and without
        # br_netfilter the reply of a pod on it would skip the translation back.
        "iptables": {"masqueradeAll": True}}, indent=1)


def write_files(token: str) -> None:
    for folder in ("certs", "cni/net.d", "cni/ipam", "containerd", "kubelet", "etcd"):
        (STATE / folder).mkdir(parents=True, exist_ok=True)
    key = STATE / "certs" / "service-account.key"
    if not key.exists():
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    (STATE / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    (STATE / "admin.kubeconfig").write_text(kubeconfig(token))
    (STATE / "containerd.toml").write_text(containerd_config())
    (STATE / "cni" / "net.d" / "10-tda-pods.conflist").write_text(cni_config())
    (STATE / "kubelet.yaml").write_text(kubelet_config())
    (STATE / "kube-proxy.yaml").write_text(kube_proxy_config())
    (STATE / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # no DNS beyond the node yet


# --- the network namespace -------------------------------------------------------------------
def make_netns() -> None:
    if not Path(f"/run/netns/{NETNS}").exists():
        subprocess.run(["ip", "netns", "add", NETNS], check=True, capture_output=True)
    # The node's address on loopback (this kernel has no dummy links: "Unknown device type"): the pods
    # reach it through their bridge's gateway, as any local address.
    # A route for the Services' cluster addresses: the node's own processes (the apiserver calling an
    # admission webhook, as Dapr's sidecar injector) connect to them, and without any route a connect fails
    # before kube-proxy's DNAT can act ("dial tcp 10.96.0.216:443: connect: network is unreachable"); the
    # DNAT then sends the packet to the pod, over the bridge.
    for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"],
                    ["ip", "route", "add", SERVICE_CIDR, "dev", "lo"]):
        run(command)  # already there on a second `up`: fine
    with contextlib.suppress(OSError):  # the pods' bridge forwards between pods and the node
        run(["sysctl", "-w", "net.ipv4.ip_forward=1"])


# --- images ---------------------------------------------------------------------------------
def ctr(*args: str) -> list[str]:
    return ["ctr", "--address", str(STATE / "containerd.sock"), "--namespace", "k8s.io", *args]


def import_image(name: str) -> None:
    """An image of the store of tools/proof/kube_image.py (the service's), into the node's containerd: the
    pods' `imagePullPolicy: Never` finds it there, as nothing can be pulled."""
    copy_into_containerd(name)


def copy_into_containerd(name: str) -> None:
    """`name`, from buildah's store, through an OCI archive (uncompressed: only a copy), into containerd."""
    from tools.proof import kube_image

    archive = STATE / "images" / (name.replace("/", "_").replace(":", "_") + ".tar")
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.unlink(missing_ok=True)
    result = run(kube_image.buildah("push", "--disable-compression", name, f"oci-archive:{archive}:{name}"),
                 netns=False)
    if result.returncode != 0:
        raise NodeError(f"buildah push {name}: {result.stderr.strip()}")
    result = run(ctr("images", "import", "--no-unpack=false", str(archive)))
    archive.unlink(missing_ok=True)
    if result.returncode != 0:
        raise NodeError(f"ctr images import {name}: {result.stderr.strip()}")


def build_pause_image() -> None:
    """The pause image: one static binary from deploy/kubernetes/node/pause.c, and nothing else."""
    binary = STATE / "build" / "pause"
    binary.parent.mkdir(parents=True, exist_ok=True)
    result = run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(ROOT / "deploy/kubernetes/node/pause.c")],
                 netns=False)
    if result.returncode != 0:  # no static C library: Debian's libc6-dev has it (scripts/install-kube-node.sh)
        raise NodeError(f"gcc could not build the pause binary statically: {result.stderr.strip()[-600:]}")
    build_binary_image(PAUSE_IMAGE, binary, "65535:65535")


def build_binary_image(name: str, binary: Path, user: str) -> None:
    """An image `FROM scratch` that holds one static binary and runs it: the pause and CoreDNS images."""
    from tools.proof import kube_image

    work = STATE / "images" / binary.name
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, work / binary.name)
    (work / "Containerfile").write_text(f'FROM scratch\nCOPY {binary.name} /{binary.name}\nUSER {user}\n'
                                        f'ENTRYPOINT ["/{binary.name}"]\n')
    result = run(kube_image.buildah("bud", "--layers", "--pull=never", "--network=none", *kube_image.RUNTIME_FLAGS,
                                    "-f", str(work / "Containerfile"), "-t", name, str(work)), netns=False)
    if result.returncode != 0:
        raise NodeError(f"buildah could not build {name}: {result.stderr.strip()[-800:]}")


def deploy_dns() -> None:
    """CoreDNS as the cluster's DNS, from deploy/kubernetes/node/coredns.yaml, with its image made here."""
    build_binary_image(COREDNS_IMAGE, NODE_BIN / "coredns", "0:0")
    copy_into_containerd(COREDNS_IMAGE)
    manifest = (ROOT / "deploy/kubernetes/node/coredns.yaml").read_text()
    manifest = manifest.replace("image: IMAGE", f"image: {COREDNS_IMAGE}").replace("CLUSTER_DNS", CLUSTER_DNS)
    apply(manifest, "the DNS")
    status = kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s", timeout=200)
    if status.returncode != 0:
        raise NodeError(f"CoreDNS did not become ready: {status.stdout.strip()} {status.stderr.strip()}")


def host_volume(claim: str, namespace: str, uid: int, size: str) -> None:
    """A PersistentVolume of a fresh folder on the node, bound to `claim` (deploy/kubernetes/node/host-volume.yaml),
    unless it exists already (a pod may be using it). The node has no storage provisioner to make one."""
    name = f"{namespace}-{claim}"
    if kubectl("get", "pv", name).returncode == 0:
        return
    folder = STATE / "volumes" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.chown(folder, uid, uid)
    manifest = (ROOT / "deploy/kubernetes/node/host-volume.yaml").read_text()
    for key, value in {"NAME": name, "SIZE": size, "NAMESPACE": namespace, "CLAIM": claim, "PATH": str(folder)}.items():
        manifest = re.sub(rf"\b{key}$", value, manifest, flags=re.M)
    apply(manifest, f"the volume {name}")


# --- up and down ----------------------------------------------------------------------------
def kubectl(*args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    return run([str(NODE_BIN / "kubectl"), "--kubeconfig", str(STATE / "admin.kubeconfig"), *args], timeout=timeout,
               input=input)


def apply(manifest: str, what: str) -> None:
    """`kubectl apply` of `manifest` (YAML or JSON text); `what` names it in the error."""
    result = kubectl("apply", "-f", "-", input=manifest)
    if result.returncode != 0:
        raise NodeError(f"kubectl apply of {what}: {result.stderr.strip()}")


def left_running() -> list[list[str]]:
    """The command lines of what `make kube-down` should have stopped: processes that name the node's state
    folder, and any `kubectl port-forward`."""
    return [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if str(STATE) in " ".join(p.info["cmdline"] or []) or "port-forward" in (p.info["cmdline"] or [])]


def http_ok(url: str) -> bool:
    return run(["curl", "-skf", "-o", "/dev/null", "--max-time", "2", url]).returncode == 0


def node_ready() -> bool:
    result = kubectl("get", "node", NODE_NAME, "-o",
                     "jsonpath={.status.conditions[?(@.type=='Ready')].status}", timeout=20)
    return result.stdout.strip() == "True"


def missing_parts() -> list[str]:
    wanted = [CHECK_BIN / "etcd", CHECK_BIN / "kube-apiserver", *(NODE_BIN / name for name in (
        "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl", "coredns")),
        CNI_BIN / "bridge",
        CNI_BIN / "host-local", CNI_BIN / "loopback", CNI_BIN / "portmap"]
    tools = [tool for tool in ("containerd", "runc", "ctr", "buildah", "nsenter", "ip", "gcc", "openssl", "curl",
                               "iptables")
             if shutil.which(tool) is None]
    return [str(path) for path in wanted if not path.exists()] + tools


def take_machine_lock() -> int | None:
    """An open file holding the machine's node lock, or None while another node holds it."""
    MACHINE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_holder() -> str:
    """The state folder of the clone whose node holds the lock (or last held it)."""
    with contextlib.suppress(OSError):
        return MACHINE_LOCK.read_text().strip() or "an unknown clone"
    return "an unknown clone"


def up() -> None:
    global _lock_fd
    missing = missing_parts()
    if missing:
        raise NodeError("missing: " + ", ".join(missing) + " (run scripts/install-kube-check.sh, "
                        "scripts/install-kube-node.sh and scripts/install-kube-image.sh)")
    if any(recorded(name) for name in ORDER):
        raise NodeError("the node is already running (make kube-down stops it)")
    _lock_fd = take_machine_lock()
    if _lock_fd is None:
        raise NodeError(f"another Kubernetes node runs on this machine, started from {lock_holder()}: one node per "
                        "machine (its network namespace, mounts and cgroups have machine-wide names); stop it there "
                        "with `make kube-down`")
    os.ftruncate(_lock_fd, 0)
    os.write(_lock_fd, f"{STATE}\n".encode())
    STATE.mkdir(parents=True, exist_ok=True)
    # A fresh cluster each time: no objects, pods or addresses of an earlier one (a Service's endpoints
    # would name dead pods for a while). Only containerd's images are kept, so imports are not redone.
    for folder in ("etcd", "kubelet", "cni/ipam", "volumes"):
        shutil.rmtree(STATE / folder, ignore_errors=True)
    token = secrets.token_hex(16)
    write_files(token)
    make_netns()
    certs = STATE / "certs"
    etcd = start("etcd", [str(CHECK_BIN / "etcd"), "--data-dir", str(STATE / "etcd"), "--unsafe-no-fsync",
                          "--listen-client-urls", "http://127.0.0.1:2379",
                          "--advertise-client-urls", "http://127.0.0.1:2379",
                          "--listen-peer-urls", "http://127.0.0.1:2380",
                          "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                          "--initial-cluster", "default=http://127.0.0.1:2380", "--log-level", "warn"])
    containerd = start("containerd", ["containerd", "--config", str(STATE / "containerd.toml")])
    wait_until(lambda: run(["curl", "-sf", "--max-time", "2", "http://127.0.0.1:2379/health"]).returncode == 0,
               "etcd", etcd, log_of("etcd"))
    key = str(certs / "service-account.key")
    apiserver = start("kube-apiserver", [
        str(CHECK_BIN / "kube-apiserver"), "--etcd-servers", "http://127.0.0.1:2379",
        "--bind-address", "0.0.0.0", "--advertise-address", NODE_IP, "--secure-port", str(APISERVER_PORT),
        "--cert-dir", str(certs), "--token-auth-file", str(STATE / "tokens.csv"),
        "--authorization-mode", "Node,RBAC", "--service-account-issuer", "https://kubernetes.default.svc",
        "--service-account-key-file", key, "--service-account-signing-key-file", key,
        "--service-cluster-ip-range", SERVICE_CIDR, "--allow-privileged=true", "--profiling=false",
        # logs, exec, port-forward: to the kubelet by its address (no DNS in the namespace for its name)
        "--kubelet-preferred-address-types", "InternalIP"])
    wait_until(lambda: http_ok(f"https://{NODE_IP}:{APISERVER_PORT}/readyz"), "kube-apiserver", apiserver,
               log_of("kube-apiserver"))
    kubeconfig_path = str(STATE / "admin.kubeconfig")
    start("kube-controller-manager", [
        str(NODE_BIN / "kube-controller-manager"), "--kubeconfig", kubeconfig_path,
        "--authentication-kubeconfig", kubeconfig_path, "--authorization-kubeconfig", kubeconfig_path,
        "--service-account-private-key-file", key, "--root-ca-file", str(certs / "apiserver.crt"),
        "--service-cluster-ip-range", SERVICE_CIDR, "--cluster-cidr", POD_CIDR, "--leader-elect=false",
        "--use-service-account-credentials=false", "--bind-address", "127.0.0.1", "--profiling=false"])
    start("kube-scheduler", [
        str(NODE_BIN / "kube-scheduler"), "--kubeconfig", kubeconfig_path,
        "--authentication-kubeconfig", kubeconfig_path, "--authorization-kubeconfig", kubeconfig_path,
        "--leader-elect=false", "--bind-address", "127.0.0.1", "--profiling=false"])
    proxy = start("kube-proxy", [str(NODE_BIN / "kube-proxy"), "--config", str(STATE / "kube-proxy.yaml")])
    wait_until(lambda: run(["curl", "-sf", "--max-time", "2", "http://127.0.0.1:10256/livez"]).returncode == 0,
               "kube-proxy", proxy, log_of("kube-proxy"))
    wait_until(lambda: run(ctr("version")).returncode == 0, "containerd", containerd, log_of("containerd"))
    build_pause_image()
    copy_into_containerd(PAUSE_IMAGE)
    kubelet = start("kubelet", [
        str(NODE_BIN / "kubelet"), "--config", str(STATE / "kubelet.yaml"), "--kubeconfig", kubeconfig_path,
        "--hostname-override", NODE_NAME, "--node-ip", NODE_IP, "--root-dir", str(STATE / "kubelet"),
        "--cert-dir", str(STATE / "kubelet" / "pki")])
    wait_until(node_ready, f"node {NODE_NAME} Ready", kubelet, log_of("kubelet"))
    deploy_dns()


def pod_network_namespaces() -> set[str]:
    """The network namespaces containerd made for the node's pods (/run/netns/cni-…), from its containers' specs."""
    found = set()
    for container in run(ctr("containers", "ls", "-q")).stdout.split():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            spec = json.loads(run(ctr("containers", "info", container)).stdout)["Spec"]
            found |= {ns["path"] for ns in spec["linux"]["namespaces"] if ns["type"] == "network" and ns.get("path")}
    return found


def down() -> None:
    lock = take_machine_lock()
    if lock is None and lock_holder() != str(STATE) and not any(recorded(name) for name in ORDER):
        print(f"[kube] the node running on this machine was started from {lock_holder()}: left alone "
              "(`make kube-down` there stops it)")
        return
    try:
        _down()
    finally:
        if lock is not None:
            os.close(lock)


def _down() -> None:
    if recorded("kube-apiserver") and recorded("kubelet"):
        # The controllers first, or they replace the pods deleted next; kubelet then stops each pod's
        # sandbox through containerd, which removes its network namespace.
        kubectl("delete", "deployments,replicasets,statefulsets,daemonsets,jobs", "--all", "--all-namespaces",
                "--wait=true", "--timeout=60s", timeout=90)
        kubectl("delete", "pods", "--all", "--all-namespaces", "--wait=true", "--timeout=60s", timeout=90)
    pod_netns = pod_network_namespaces() if recorded("containerd") else set()
    stop_process("kubelet")
    if recorded("containerd"):  # what the pods left: their tasks, then the shims that held them
        for container in run(ctr("tasks", "ls", "-q")).stdout.split():
            run(ctr("tasks", "kill", "-s", "SIGKILL", container))
    for name in reversed(ORDER):
        stop_process(name)
    socket = str(STATE / "containerd.sock")
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if socket in " ".join(process.info["cmdline"] or []) and "containerd-shim" in " ".join(
                    process.info["cmdline"]):
                process.kill()
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):  # the pods' volumes and rootfs
        mount_point = line.split()[1]
        if mount_point.startswith(str(STATE)) or "/run/containerd/io.containerd.grpc.v1.cri" in mount_point:
            subprocess.run(["umount", "-l", mount_point], capture_output=True)
    for process in processes_in_netns():  # what ran in the node's namespace: a `kubectl port-forward` left behind
        with contextlib.suppress(psutil.Error):
            process.kill()
    for path in sorted(pod_netns):  # those of pods that kubelet did not stop
        if Path(path).exists():
            subprocess.run(["umount", "-l", path], capture_output=True)
            Path(path).unlink(missing_ok=True)
    if Path(f"/run/netns/{NETNS}").exists():
        subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True)


def status() -> int:
    running = {name: recorded(name) for name in ORDER}
    for name, process in running.items():
        print(f"{name:24} {f'pid {process.pid}' if process else 'not running'}  log: {log_of(name)}")
    return 0 if all(running.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kube.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "kubectl"])
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            started = time.monotonic()
            try:
                up()
            except BaseException:
                down()
                raise
            print(f"[kube] node {NODE_NAME} Ready in {time.monotonic() - started:.0f} s; "
                  f"kubectl: .venv/bin/python -m tools.kube.node kubectl get pods -A; stop: make kube-down")
        elif args.command == "down":
            down()
            print("[kube] node stopped")
        elif args.command == "status":
            return status()
        else:
            result = kubectl(*args.args, timeout=600)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return result.returncode
    except NodeError as exc:
        print(f"[kube] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every fact of the example in one place: pinned versions, app ids, ports, paths.

The values live in `tools/stack/stack.env`, which the shell scripts source too; this
module reads that file and adds the paths. Standard library only, so that
`make doctor` can import it before anything is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACTS_FILE = Path(__file__).with_name("stack.env")


def _read_facts(path: Path) -> dict[str, str]:
    facts = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            facts[key.strip()] = value.strip()
    return facts


FACTS = _read_facts(FACTS_FILE)

DAPR_AGENTS_VERSION = FACTS["DAPR_AGENTS_VERSION"]
PYTHON_MIN_VERSION = tuple(int(part) for part in FACTS["PYTHON_MIN_VERSION"].split("."))
DAPR_RUNTIME_VERSION = FACTS["DAPR_RUNTIME_VERSION"]
DAPR_CLI_VERSION = FACTS["DAPR_CLI_VERSION"]
GO_MIN_VERSION = FACTS["GO_MIN_VERSION"]
DAPR_BUILD_RECIPE = FACTS["DAPR_BUILD_RECIPE"]
ZIPKIN_VERSION = FACTS["ZIPKIN_VERSION"]

SERVICE_APP_ID = FACTS["SERVICE_APP_ID"]
MINIMAL_APP_ID = FACTS["MINIMAL_APP_ID"]
APP_PORT = int(FACTS["APP_PORT"])
SIDECAR_HTTP_PORT = int(FACTS["SIDECAR_HTTP_PORT"])
SIDECAR_METRICS_PORT = int(FACTS["SIDECAR_METRICS_PORT"])
APPROVAL_APP_ID = FACTS["APPROVAL_APP_ID"]
APPROVAL_APP_PORT = int(FACTS["APPROVAL_APP_PORT"])
APPROVAL_SIDECAR_HTTP_PORT = int(FACTS["APPROVAL_SIDECAR_HTTP_PORT"])
APPROVAL_SIDECAR_METRICS_PORT = int(FACTS["APPROVAL_SIDECAR_METRICS_PORT"])
APPROVAL_REPLICA_PORTS = tuple(int(port) for port in FACTS["APPROVAL_REPLICA_PORTS"].split(","))
TEAM_APP_ID = FACTS["TEAM_APP_ID"]
TEAM_APP_PORT = int(FACTS["TEAM_APP_PORT"])
TEAM_SIDECAR_HTTP_PORT = int(FACTS["TEAM_SIDECAR_HTTP_PORT"])
TEAM_SIDECAR_METRICS_PORT = int(FACTS["TEAM_SIDECAR_METRICS_PORT"])

REDIS_PORT = int(FACTS["REDIS_PORT"])
PLACEMENT_PORT = int(FACTS["PLACEMENT_PORT"])
SCHEDULER_PORT = int(FACTS["SCHEDULER_PORT"])
SENTRY_PORT = int(FACTS["SENTRY_PORT"])
ZIPKIN_PORT = int(FACTS["ZIPKIN_PORT"])
PLACEMENT_HEALTHZ_PORT = int(FACTS["PLACEMENT_HEALTHZ_PORT"])
SCHEDULER_HEALTHZ_PORT = int(FACTS["SCHEDULER_HEALTHZ_PORT"])
SENTRY_HEALTHZ_PORT = int(FACTS["SENTRY_HEALTHZ_PORT"])
PLACEMENT_METRICS_PORT = int(FACTS["PLACEMENT_METRICS_PORT"])
SCHEDULER_METRICS_PORT = int(FACTS["SCHEDULER_METRICS_PORT"])
SCHEDULER_ETCD_CLIENT_PORT = int(FACTS["SCHEDULER_ETCD_CLIENT_PORT"])
SCHEDULER_ETCD_PEER_PORT = int(FACTS["SCHEDULER_ETCD_PEER_PORT"])
SCRIPTED_LLM_PORT = int(FACTS["SCRIPTED_LLM_PORT"])
LOCAL_MODEL_PORT = int(FACTS["LOCAL_MODEL_PORT"])
DASHBOARD_PORT = int(FACTS["DASHBOARD_PORT"])


def _items(key: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in FACTS[key].split(","))


# `make serve-ha` (tools/ha/cluster.py): one entry per "host", in the order of HA_HOSTS.
HA_HOSTS = _items("HA_HOSTS")
HA_APP_PORTS = tuple(int(port) for port in _items("HA_APP_PORTS"))
HA_SIDECAR_HTTP_PORTS = tuple(int(port) for port in _items("HA_SIDECAR_HTTP_PORTS"))
HA_SIDECAR_METRICS_PORTS = tuple(int(port) for port in _items("HA_SIDECAR_METRICS_PORTS"))
PLACEMENT_RAFT_PORT = int(FACTS["PLACEMENT_RAFT_PORT"])
HA_PLACEMENT_HEALTHZ_PORTS = tuple(int(port) for port in _items("HA_PLACEMENT_HEALTHZ_PORTS"))
HA_SCHEDULER_HEALTHZ_PORTS = tuple(int(port) for port in _items("HA_SCHEDULER_HEALTHZ_PORTS"))
HA_PLACEMENT_IDS = _items("HA_PLACEMENT_IDS")
HA_SCHEDULER_IDS = _items("HA_SCHEDULER_IDS")

SERVICE_URL = f"http://127.0.0.1:{APP_PORT}"
SIDECAR_URL = f"http://127.0.0.1:{SIDECAR_HTTP_PORT}"
DASHBOARD_URL = f"http://127.0.0.1:{DASHBOARD_PORT}"

# Where every listener of the stack binds; TDA_SIDECAR_ADDRESS opens the sidecar's (docs/security.md).
LOOPBACK = "127.0.0.1"

# The ports the service's `dapr run` needs, and every port the stack's services take.
SERVICE_PORTS = {"app": APP_PORT, "sidecar HTTP": SIDECAR_HTTP_PORT, "sidecar metrics": SIDECAR_METRICS_PORT}
STACK_PORTS = {
    "redis": REDIS_PORT, "placement": PLACEMENT_PORT, "placement health": PLACEMENT_HEALTHZ_PORT,
    "placement metrics": PLACEMENT_METRICS_PORT, "scheduler": SCHEDULER_PORT,
    "scheduler health": SCHEDULER_HEALTHZ_PORT, "scheduler metrics": SCHEDULER_METRICS_PORT,
    "scheduler etcd": SCHEDULER_ETCD_CLIENT_PORT, "scheduler etcd peer": SCHEDULER_ETCD_PEER_PORT,
    "zipkin": ZIPKIN_PORT, "sentry": SENTRY_PORT, "sentry health": SENTRY_HEALTHZ_PORT,
}

# --- paths -----------------------------------------------------------------------
# This clone's state: logs, pid files, data (Redis, etcd, certificates).
STATE_DIR = Path(os.environ.get("TDA_STATE_DIR", ROOT / ".stack"))
LOG_DIR, PID_DIR, DATA_DIR = STATE_DIR / "logs", STATE_DIR / "pids", STATE_DIR / "data"
# Where sidecars find each other (SQLite name resolution): the sidecar configurations name it
# relative to where `dapr run` starts, the repository, whatever TDA_STATE_DIR says.
NAME_RESOLUTION_DB = ROOT / ".stack" / "nameresolution.db"
RESOURCES_DIR = ROOT / "resources"
SECURE_DIR = RESOURCES_DIR / "secure"
VENV_BIN = ROOT / ".venv" / "bin"
# The per-machine cache every clone shares: the runtime build, the Zipkin jar.
TDA_HOME = Path(os.environ.get("TDA_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "tiny-durable-agent")
# Our fixes from Dapr 1.18.3, patches to the runtime's sources (scripts/patches/README.md).
DAPR_PATCHES_DIR = ROOT / "scripts" / "patches"


def dapr_patch_set(patches_dir: Path = DAPR_PATCHES_DIR) -> str:
    """The patch set's name, as scripts/install-dapr.sh computes it: the first 10 hex digits of the SHA-256
    of each patch's path (relative to scripts/patches) and text, in path order."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(str(path.relative_to(patches_dir)) for path in patches_dir.rglob("*.patch")):
        digest.update(name.encode() + b"\n" + (patches_dir / name).read_bytes())
    return digest.hexdigest()[:10]


# TDA_DAPR_PATCHES=none: the runtime without those fixes (the switch-offs of tests/test_runtime_fixes.py).
DAPR_PATCHES = os.environ.get("TDA_DAPR_PATCHES") or "all"
DAPR_PATCH_SET = "none" if DAPR_PATCHES == "none" else dapr_patch_set()
RUNTIME_PREFIX = TDA_HOME / (f"dapr-{DAPR_RUNTIME_VERSION}" if DAPR_PATCH_SET == "none"
                             else f"dapr-{DAPR_RUNTIME_VERSION}-p{DAPR_PATCH_SET}")
# Where scripts/install-dapr.sh builds, in the order the tooling looks: every
# component (DAPR_BUILD=full, asked for on purpose), then the slim build.
BUILT_RUNTIME_PREFIXES = (RUNTIME_PREFIX.with_name(RUNTIME_PREFIX.name + "-full"), RUNTIME_PREFIX)
# `make run LLM=local`: Ollama and the model, as scripts/install-local-model.sh lays them out.
OLLAMA_VERSION = FACTS["OLLAMA_VERSION"]
LOCAL_MODEL_BUILD_RECIPE = FACTS["LOCAL_MODEL_BUILD_RECIPE"]
LOCAL_MODEL_NAME = FACTS["LOCAL_MODEL_NAME"]
LOCAL_MODEL_LABEL = f"SmolLM2-135M-Instruct served by Ollama {OLLAMA_VERSION}"
OLLAMA_PREFIX = TDA_HOME / f"ollama-{OLLAMA_VERSION}"
OLLAMA_BIN = OLLAMA_PREFIX / "bin" / "ollama"
LOCAL_MODEL_DIR = TDA_HOME / f"{FACTS['LOCAL_MODEL_PACKAGE']}-{FACTS['LOCAL_MODEL_PACKAGE_VERSION']}"
LOCAL_MODEL_STORE = LOCAL_MODEL_DIR / "ollama-models"  # OLLAMA_MODELS
# How many answers the server computes at once (each slot holds a context of its own).
LOCAL_MODEL_PARALLEL = int(FACTS["LOCAL_MODEL_PARALLEL"])
LOCAL_MODEL_URL = f"http://127.0.0.1:{LOCAL_MODEL_PORT}/v1"


def local_model_installed() -> bool:
    """scripts/install-local-model.sh finished both folders, with the current recipe."""
    def complete(folder: Path) -> bool:
        stamp = folder / ".complete"
        return stamp.exists() and f"recipe {LOCAL_MODEL_BUILD_RECIPE}" in stamp.read_text().splitlines()

    return complete(OLLAMA_PREFIX) and complete(LOCAL_MODEL_DIR)


ZIPKIN_JAR = TDA_HOME / "zipkin" / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"

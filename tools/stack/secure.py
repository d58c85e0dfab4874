"""Secure mode (TDA_SECURE=1): mTLS through sentry, TLS placement and scheduler,
access control, and a Redis password that only a secret store gives out."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

import psutil
import yaml

from tools.stack.processes import Service, StackError, http_ok, rel, require_free, say, spawn, stop, wait_until
from tools.stack.settings import (
    DATA_DIR,
    LOG_DIR,
    SECURE_DIR,
    SENTRY_HEALTHZ_PORT,
    SENTRY_PORT,
)

SENTRY_CREDENTIALS = DATA_DIR / "sentry"
TRUST_DOMAIN = "localhost"
# Secure mode's Redis password: generated once, kept only in these two
# owner-only files. Redis reads it from its config file; the sidecar reads
# it through the secret store `redis-secretstore`, which reads the JSON file.
REDIS_SECURE_CONF = DATA_DIR / "redis-secure.conf"
REDIS_SECRETS_FILE = DATA_DIR / "redis-secrets.json"
REDIS_SECRET_NAME = "redis-password"
SERVICE_CONFIG = SECURE_DIR / "service-config.yaml"


def secure_mode_requested() -> bool:
    """TDA_SECURE=1: mTLS through sentry, access control, and a Redis password from a secret store."""
    return os.environ.get("TDA_SECURE") == "1"


def sentry_service(bin_dir: Path) -> Service:
    """Sentry, the certificate authority for mTLS; it creates its CA in SENTRY_CREDENTIALS on first start."""
    return Service("sentry", [
        str(bin_dir / "sentry"), "--mode", "standalone", "--config", str(SECURE_DIR / "sentry-config.yaml"),
        "--issuer-credentials", str(SENTRY_CREDENTIALS), "--trust-domain", TRUST_DOMAIN,
        "--port", str(SENTRY_PORT), "--listen-address", "127.0.0.1", "--healthz-port", str(SENTRY_HEALTHZ_PORT),
        # Sentry's metrics server ignores every listen address and binds all interfaces; nothing here reads it.
        "--enable-metrics=false",
    ], {"sentry": SENTRY_PORT, "sentry health": SENTRY_HEALTHZ_PORT},
        lambda: http_ok(f"http://127.0.0.1:{SENTRY_HEALTHZ_PORT}/healthz")
        and (SENTRY_CREDENTIALS / "ca.crt").exists())


def create_sentry_credentials(bin_dir: Path) -> None:
    """Let sentry create its CA once, then stop it. Writing the files makes a
    running sentry reload itself, and certificates asked for during that
    reload fail; a sentry that finds them at start does not reload."""
    service = sentry_service(bin_dir)
    require_free(service.ports)
    SENTRY_CREDENTIALS.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "sentry-first-start.log"
    process = spawn("sentry", service.argv, log=log)
    try:
        wait_until(service.ready, "sentry creating its certificates", process=process, log=log)
    finally:
        stop("sentry")
    say(f"sentry: created a root certificate in {rel(SENTRY_CREDENTIALS)}")


def control_plane_tls() -> list[str]:
    """The flags that make placement and scheduler speak TLS with sentry's certificates."""
    return ["--tls-enabled", "--trust-domain", TRUST_DOMAIN, "--trust-anchors-file", str(SENTRY_CREDENTIALS / "ca.crt"),
            "--sentry-address", f"127.0.0.1:{SENTRY_PORT}"]


def mtls_env() -> dict[str, str]:
    """What an mTLS sidecar needs in its environment: sentry's root certificate, and its address on loopback."""
    return {"DAPR_TRUST_ANCHORS": (SENTRY_CREDENTIALS / "ca.crt").read_text(), "NAMESPACE": "default",
            # The address the sidecar announces: loopback (our daprd wrapper sets it too, a `dapr init` one does not).
            "DAPR_HOST_IP": "127.0.0.1"}


def ensure_redis_password() -> None:
    """Create secure mode's Redis password once, readable by its owner only."""
    if REDIS_SECURE_CONF.exists() and REDIS_SECRETS_FILE.exists():
        return
    password = secrets.token_urlsafe(24)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in ((REDIS_SECURE_CONF, f"requirepass {password}\n"),
                       (REDIS_SECRETS_FILE, json.dumps({REDIS_SECRET_NAME: password}) + "\n")):
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(text)
    say(f"redis: created a password for secure mode in {rel(REDIS_SECRETS_FILE)} (owner-only)")


def redis_password() -> str:
    """Secure mode's Redis password (for tools and tests that talk to Redis directly)."""
    return json.loads(REDIS_SECRETS_FILE.read_text())[REDIS_SECRET_NAME]


def secure_resources(source: Path, target: Path) -> Path:
    """A copy of the resources folder `source` in which every Redis component
    reads its password from `redis-secretstore` (resources/secure/).

    The shipped components say `redisPassword: ""`, true for the plain
    stack's Redis. Here the value becomes a secretKeyRef that the sidecar
    resolves when it loads the component, so the password is in no YAML file.
    """
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("llm", "secure"))
    for path in sorted(target.glob("*.yaml")):
        component = yaml.safe_load(path.read_text())
        password = [item for item in component["spec"].get("metadata") or [] if item["name"] == "redisPassword"]
        if not password:
            continue
        password[0].pop("value", None)
        password[0]["secretKeyRef"] = {"name": REDIS_SECRET_NAME, "key": REDIS_SECRET_NAME}
        component["auth"] = {"secretStore": "redis-secretstore"}
        path.write_text(f"# Written by tools/stack/secure.py for secure mode from {path.name} of {rel(source)}:\n"
                        "# the Redis password comes from the secret store redis-secretstore.\n"
                        + yaml.safe_dump(component, sort_keys=False))
    store = yaml.safe_load((SECURE_DIR / "redis-secretstore.yaml").read_text())
    store["spec"]["metadata"] = [{"name": "secretsFile", "value": str(REDIS_SECRETS_FILE)}]
    (target / "redis-secretstore.yaml").write_text(
        "# Written by tools/stack/secure.py from resources/secure/redis-secretstore.yaml.\n"
        + yaml.safe_dump(store, sort_keys=False))
    return target


def runs_in_secure_mode(name: str, process: psutil.Process, redis_requires_password: bool) -> bool | None:
    """Whether a running service of ours was started in secure mode; None if it has no modes."""
    if name == "redis":  # Redis rewrites its command line, so the caller asks it
        return redis_requires_password
    if name in ("placement", "scheduler"):
        with contextlib.suppress(psutil.Error):
            return "--tls-enabled" in process.cmdline()
    return None


def check_mode(name: str, running_secure: bool | None, secure: bool) -> None:
    """Refuse to mix modes: a plain sidecar cannot use a TLS placement, nor a secure one a Redis without password."""
    if running_secure is not None and running_secure != secure:
        running, wanted = ("secure", "plain") if not secure else ("plain", "secure")
        raise StackError(f"{name} of this stack is running in {running} mode, but {wanted} mode was asked "
                         f"for (TDA_SECURE={'1' if secure else 'unset'}). Stop the stack first: `make stop`.")

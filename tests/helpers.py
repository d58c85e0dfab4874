"""What the tests share besides fixtures: one poller, a percentile, the Redis
keys of a run, and the restartable service. (A test's task texts come from its
own scripted-LLM script: scripted_llm.task(...).)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tools.stack import commands as stack
from tools.stack.llm import choose_llm
from tools.stack.processes import recorded, stop_dapr_run
from tools.stack.runtime import DaprRuntime
from tools.stack.settings import LOG_DIR, SERVICE_APP_ID, SERVICE_URL, SIDECAR_URL, STATE_DIR

RUN_TIMEOUT_S = 60.0
FIGURES = STATE_DIR / "figures.jsonl"
# The shipped LLM timeout is 60 s; the suite cuts it to this so that the
# hanging-LLM test takes seconds, not minutes. Everything else is as shipped.
TEST_LLM_TIMEOUT = "3s"


def wait_for(check: Callable[[], object], what: str | Callable[[], str], timeout_s: float = RUN_TIMEOUT_S,
             interval_s: float = 0.1):
    """Poll `check` until it returns something truthy, and return that; fail at the deadline. `what` may be a
    function, asked at the deadline, for a message that says what was still missing then."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what() if callable(what) else what}")
        time.sleep(interval_s)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def record_figure(test: str, **figures: object) -> None:
    """Keep a measured figure (a duration, a count) for the end-of-session report."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES, "a") as out:
        out.write(json.dumps({"test": test, **figures}) + "\n")


def workflow_key_mentioning(redis_client, text: str) -> str | None:
    """The Redis key of the run whose conversation mentions `text` (its id is the key's suffix)."""
    for key in redis_client.scan_iter(match=f"{SERVICE_APP_ID}||assistant:_workflow_*", count=1000):
        if text in (redis_client.hget(key, "data") or ""):
            return key
    return None


def published_run(redis_client, task: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The instance id of the run a published `task` started, once its conversation is in Redis
    (the suffix of its state key: a publish answers with no id)."""
    key = wait_for(lambda: workflow_key_mentioning(redis_client, task), f"a run of {task!r}", timeout_s)
    return key.rsplit("_", 1)[1]


def env_without_llm_settings() -> dict[str, str]:
    """The test process's environment minus any LLM the developer configured."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}


class Service:
    """durable_agent_service.py under the README's `dapr run` flags, restartable."""

    def __init__(self, runtime: DaprRuntime, llm_env: dict[str, str]) -> None:
        self.runtime, self.llm_env = runtime, llm_env
        self.llm = choose_llm(llm_env)
        # A folder of its own: `make serve` in a test rewrites the shared one.
        self.resources = STATE_DIR / "resources-tests"
        shutil.rmtree(self.resources, ignore_errors=True)
        shutil.copytree(self.llm.resources, self.resources)
        resiliency = self.resources / "resiliency.yaml"
        resiliency.write_text(resiliency.read_text().replace("llm: 60s", f"llm: {TEST_LLM_TIMEOUT}"))
        self.reconfigure()
        self.log = LOG_DIR / "service.log"
        self.http = httpx.Client(base_url=SERVICE_URL, timeout=30)
        self.sidecar = httpx.Client(base_url=SIDECAR_URL, timeout=30)

    # -- lifecycle -------------------------------------------------------------
    def reconfigure(self, config: Path | None = None, secure: bool = False) -> None:
        """How the next start() runs: with `--config config` (None: the CLI's default
        configuration, or secure mode's) and, if `secure`, as `TDA_SECURE=1 make serve`
        runs it: mTLS through sentry and every Redis password read from the secret store."""
        self.argv, self.env = stack.dapr_run(self.runtime, stack.SERVICE_APP, self.llm, resources=self.resources,
                                             config=config, secure=secure, base_env=self.llm_env)

    def start(self) -> None:
        # Append, so one log holds every start of the session.
        with open(self.log, "ab") as log:
            log.write(b"\n===== service start =====\n")
        stack.start_service(self.argv, self.env, self.log, append=True)

    @property
    def resources_in_use(self) -> Path:
        return stack.ROOT / self.argv[self.argv.index("--resources-path") + 1]

    def stop(self) -> None:
        """Graceful: the app is interrupted first, then `dapr run` stops its sidecar."""
        stop_dapr_run("service")

    def processes(self) -> tuple[psutil.Process, psutil.Process]:
        """(the app, its daprd), children of the recorded `dapr run`."""
        cli = recorded("service")
        assert cli is not None, "the service is not running"
        children = cli.children()
        app = next(p for p in children if p.name() != "daprd")
        daprd = next(p for p in children if p.name() == "daprd")
        return app, daprd

    # -- API -----------------------------------------------------------------------
    def start_run(self, task: str) -> str:
        response = self.http.post("/run", json={"task": task})
        assert response.status_code == 200, response.text
        return response.json()["instance_id"]

    def status(self, instance_id: str) -> dict:
        response = self.http.get(f"/run/{instance_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_until_done(self, instance_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
        def done():
            response = self.http.get(f"/run/{instance_id}")
            if response.status_code == 500:
                # Known: the sidecar can read a run's state from Redis while it is half
                # written ("inbox key ... missing from state store"); the next read is fine.
                return None
            assert response.status_code == 200, response.text
            status = response.json()
            return status if status["runtime_status"] in {"COMPLETED", "FAILED", "TERMINATED"} else None

        return wait_for(done, f"run {instance_id} to finish", timeout_s)

    def close(self) -> None:
        self.http.close()
        self.sidecar.close()


def stack_processes() -> list[psutil.Process]:
    """Every process this stack recorded, with its descendants (a `dapr run`'s daprd and app)."""
    from tools.stack.processes import recorded_names

    found: dict[int, psutil.Process] = {}
    for name in recorded_names():
        process = recorded(name)
        if process is None:
            continue
        for member in [process, *process.children(recursive=True)]:
            found[member.pid] = member
    return list(found.values())


def listeners_beyond_loopback(processes: list[psutil.Process]) -> list[str]:
    """The sockets of `processes` that the network could reach: TCP listeners and bound UDP
    sockets whose address is not loopback, as "name pid proto address:port"."""
    import ipaddress

    reachable = []
    for process in processes:
        try:
            name, connections = process.name(), process.net_connections(kind="inet")
        except psutil.Error:
            continue  # it ended meanwhile
        for conn in connections:
            listening = conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr)  # 2: SOCK_DGRAM
            if listening and not ipaddress.ip_address(conn.laddr.ip.removeprefix("::ffff:")).is_loopback:
                proto = "udp" if conn.type == 2 else "tcp"
                reachable.append(f"{name} pid {process.pid} {proto} {conn.laddr.ip}:{conn.laddr.port}")
    return reachable


def in_this_network_namespace(process: psutil.Process) -> bool:
    """Whether `process` shares our network namespace: a stack run in another one (see the
    contributors' notes on running stacks side by side) has its own ports and is not ours."""
    try:
        return os.readlink(f"/proc/{process.pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def processes_mentioning(*words: str) -> list[psutil.Process]:
    """Live processes of this network namespace whose command line mentions one of `words`."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(word in cmdline for word in words) and in_this_network_namespace(process):
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
    return found

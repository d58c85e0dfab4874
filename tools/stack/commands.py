"""The local Dapr stack, without Docker, and the README's two `dapr run` commands on top of it.

    python -m tools.stack up | down | status | env | run | serve  [--llm local|echo]

`up` starts Redis, placement, scheduler and Zipkin (tools/stack/services.py);
`run` and `serve` also run one of the two scripts through `dapr run` with the
README's flags, in the foreground, and stop everything they started.
Tests, the benchmark and the screenshots use the same pieces:
`running()` for the stack, `dapr_run()` and `start_service()` for the service.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

from tools.stack import console
from tools.stack import secure as secure_mode
from tools.stack.llm import SWITCHES, LLMChoice, choose_llm
from tools.stack.processes import (
    DRAIN_TIMEOUT_S,
    StackError,
    die_with_parent,
    http_ok,
    interrupt_apps,
    record,
    rel,
    require_free,
    say,
    spawn,
    stop,
    stop_dapr_run,
    wait_until,
)
from tools.stack.runtime import DaprRuntime, find_runtime
from tools.stack.services import down, status, stop_services, up
from tools.stack.settings import (
    APP_PORT,
    LOG_DIR,
    MINIMAL_APP_ID,
    ROOT,
    SERVICE_APP_ID,
    SERVICE_PORTS,
    SERVICE_URL,
    SIDECAR_HTTP_PORT,
    SIDECAR_METRICS_PORT,
    SIDECAR_URL,
    STATE_DIR,
)

# The two commands of the README, verbatim after `dapr run` (tests/test_readme.py holds them equal).
MINIMAL_APP = ["--app-id", MINIMAL_APP_ID, "--resources-path", "./resources",
               "--", "python", "durable_agent_minimal.py"]
SERVICE_APP = ["--app-id", SERVICE_APP_ID, "--resources-path", "./resources", "-p", str(APP_PORT),
               "--log-level", "warn", f"--metrics-port={SIDECAR_METRICS_PORT}",
               f"--dapr-http-port={SIDECAR_HTTP_PORT}", "--enable-api-logging",
               "--", "python", "durable_agent_service.py"]


ONE_SHOT_LOG = LOG_DIR / "run.log"  # everything `make run`'s `dapr run` printed
# `make serve`'s exit status when the drain deadline (or a second Ctrl+C) forced the app to stop.
FORCED_STOP_EXIT = 3


@contextlib.contextmanager
def running(tracing: bool = True, secure: bool = False, local_model: bool = False) -> Iterator[DaprRuntime]:
    """The stack, up for the duration of the block; stops what it started, and nothing it found running.
    `local_model`: with the model server of LLM=local."""
    runtime, started = up(tracing=tracing, secure=secure, local_model=local_model)
    try:
        yield runtime
    finally:
        stop_services(started)


def dapr_run(runtime: DaprRuntime, app: list[str], llm: LLMChoice, resources: Path | None = None,
             config: Path | None = None, secure: bool = False,
             base_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """`dapr run <app>` with the README's flags, and its environment.

    `resources` replaces `./resources` (default: the folder of the chosen LLM);
    `base_env` is the environment to start from (default: ours);
    `config` adds `--config`; `secure` makes every Redis component read its
    password from the secret store and gives the sidecar sentry's root
    certificate (secure mode's configuration is the default `config` then).
    """
    resources = resources or llm.resources
    env = runtime.env(base_env) | llm.env
    if secure:
        resources = secure_mode.secure_resources(resources, STATE_DIR / f"{resources.name}-secure")
        config = config or secure_mode.SERVICE_CONFIG
        env |= secure_mode.mtls_env()
    argv = [str(runtime.cli), "run", *(["--config", rel(config)] if config else []), *app]
    # Relative to the repository, as the README writes it and as we print it.
    argv[argv.index("./resources")] = rel(resources)
    return argv, env


def service_ready(env: dict[str, str] | None = None) -> bool:
    """The service answers, its sidecar is healthy and its topic subscription is live.

    `env`: the service's environment (default: ours), for its tokens: the
    sidecar's DAPR_API_TOKEN guards its metadata, the app's APP_API_TOKEN the app.
    """
    env = os.environ if env is None else env
    app_token = {"dapr-api-token": env["APP_API_TOKEN"]} if env.get("APP_API_TOKEN") else {}
    sidecar_token = {"dapr-api-token": env["DAPR_API_TOKEN"]} if env.get("DAPR_API_TOKEN") else {}
    if not (http_ok(f"{SIDECAR_URL}/v1.0/healthz") and http_ok(f"{SERVICE_URL}/openapi.json", headers=app_token)):
        return False
    request = urllib.request.Request(f"{SIDECAR_URL}/v1.0/metadata", headers=sidecar_token)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            metadata = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(sub.get("topic") == "assistant.topic" for sub in metadata.get("subscriptions") or [])


def start_service(argv: list[str], env: dict[str, str], log: Path, append: bool = False) -> psutil.Process:
    """Start the service's `dapr run` in the background, recorded as "service",
    and return once it is ready (see service_ready). For tests and tools;
    `make serve` runs it in the foreground instead (run_app)."""
    require_free(SERVICE_PORTS, grace_s=10)  # a service just stopped or killed may still be letting go
    process = spawn("service", argv, env=env, log=log, append=append)
    wait_until(lambda: service_ready(env), "durable_agent_service.py under dapr run",
               process=process, log=log)
    return process


@contextlib.contextmanager
def service_running(llm_env: dict[str, str], tracing: bool = True, log_name: str = "service",
                    llm_switch: str = "") -> Iterator[DaprRuntime]:
    """The stack and the service (the README's `dapr run`) with the LLM that `llm_env` (or make's
    LLM= switch, `llm_switch`) chooses, in the background for the duration of the block.
    For `make bench` and `make images`."""
    llm = choose_llm(llm_env, llm_switch)
    with running(tracing=tracing, local_model=llm.name == "local") as runtime:
        argv, env = dapr_run(runtime, SERVICE_APP, llm, base_env=llm_env)
        start_service(argv, env, LOG_DIR / f"{log_name}.log")
        try:
            yield runtime
        finally:
            stop_dapr_run("service")


class _StopRequest(threading.Event):
    deadline = float("inf")


@contextlib.contextmanager
def _graceful_stop_on_signal(popen: subprocess.Popen) -> Iterator[_StopRequest]:
    """On Ctrl+C or SIGTERM, interrupt the app first (see processes.stop_dapr_run)
    and give it DRAIN_TIMEOUT_S to finish; a second signal stops it at once."""
    stopping = _StopRequest()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            stopping.deadline = 0.0
            return
        say(f"stopping: the app finishes its requests and deregisters (up to {DRAIN_TIMEOUT_S:.0f} s; "
            "Ctrl+C again to stop at once), then its sidecar and the stack stop")
        stopping.deadline = time.monotonic() + DRAIN_TIMEOUT_S
        stopping.set()
        with contextlib.suppress(psutil.Error):
            interrupt_apps(psutil.Process(popen.pid))

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_app(app: list[str], name: str, llm_switch: str = "") -> int:
    """Start the stack, run `dapr run <app>` in the foreground until it exits or we are signalled,
    then stop what we started. `llm_switch`: make's LLM= (tools/stack/llm.py).

    A one-shot run skips Zipkin: it would add ~10 s and its in-memory traces
    would vanish when the run stops it again. `serve` and `up` include it.
    """
    secure = secure_mode.secure_mode_requested()
    llm = choose_llm(dict(os.environ), llm_switch)
    with running(tracing=name != "minimal", secure=secure, local_model=llm.name == "local") as runtime:
        try:
            say(llm.banner)
            if name == "service":
                require_free(SERVICE_PORTS)
            argv, env = dapr_run(runtime, app, llm, secure=secure)
            if secure:
                say(f"secure mode: mTLS through sentry, access control from {rel(secure_mode.SERVICE_CONFIG)}, "
                    "Redis password from the secret store")
            say("$ dapr run " + " ".join(argv[2:]))
            # Own process group, so Ctrl+C reaches us first and we stop the
            # sidecar and the app in order instead of racing them.
            one_shot = name == "minimal"
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as files:
                output = ({"stdout": files.enter_context(open(ONE_SHOT_LOG, "wb")), "stderr": subprocess.STDOUT}
                          if one_shot else {})
                popen = subprocess.Popen(die_with_parent(argv), cwd=ROOT, env=env, start_new_session=True,
                                         stdin=subprocess.DEVNULL, **output)
            record(name, popen.pid)
            with _graceful_stop_on_signal(popen) as stopping:
                if name == "service":
                    _announce_when_ready(popen, stopping, env)
                if one_shot:
                    _show_one_shot(popen, llm.name == "echo")
                while popen.poll() is None:
                    if stopping.is_set() and time.monotonic() > stopping.deadline:
                        # Not a clean stop: the exit status says so, for scripts and the tests.
                        why = ("a second signal came" if stopping.deadline == 0.0
                               else f"the app did not finish within {DRAIN_TIMEOUT_S:.0f} s")
                        say(f"{why}: stopping it now, not cleanly (exit status {FORCED_STOP_EXIT}); "
                            "its runs resume at the next start")
                        stop(name)  # at once: stop_dapr_run would grant the app another drain
                        return FORCED_STOP_EXIT
                    time.sleep(0.2)
                return popen.returncode
        finally:
            stop_dapr_run(name)


def _show_one_shot(popen: subprocess.Popen, echo_llm: bool) -> None:
    """The readable part of a one-shot run on screen (all of it is in its log), then the summary line."""
    facts = console.show_run(console.follow(ONE_SHOT_LOG, lambda: popen.poll() is None), sys.stdout, echo_llm)
    say(console.summary_line(facts, MINIMAL_APP_ID, rel(ONE_SHOT_LOG)))


def _announce_when_ready(popen: subprocess.Popen, stopping: _StopRequest, env: dict[str, str]) -> None:
    with contextlib.suppress(StackError):
        wait_until(lambda: service_ready(env) or popen.poll() is not None or stopping.is_set(), "the service")
    if popen.poll() is None and not stopping.is_set():
        say(f"ready. In another terminal: curl -i -X POST http://localhost:{APP_PORT}/run "
            "-H 'Content-Type: application/json' -d '{\"task\": \"Write a haiku about programming.\"}'")
        say("Ctrl+C stops the service and the whole stack.")


def print_env() -> None:
    """The exports for your own shell: eval "$(python -m tools.stack env)"."""
    env = find_runtime().env()
    print(f'export PATH="{env["PATH"]}"')
    if "DAPR_RUNTIME_PATH" in env:
        print(f'export DAPR_RUNTIME_PATH="{env["DAPR_RUNTIME_PATH"]}"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "run", "serve", "env"])
    parser.add_argument("--llm", choices=[switch for switch in SWITCHES if switch], default="",
                        help="run/serve: local = a small model on this machine (scripts/install-local-model.sh), "
                             "echo = Dapr's echo; default: OPENAI_BASE_URL, then OPENAI_API_KEY, then echo")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(secure=secure_mode.secure_mode_requested(), tied=False)
            say("stack is up; `make stop` stops it")
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "env":
            print_env()
        elif args.command == "run":
            return run_app(MINIMAL_APP, "minimal", args.llm)
        elif args.command == "serve":
            return run_app(SERVICE_APP, "service", args.llm)
    except StackError as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Nothing of the stack is reachable from the network: every socket a process
of the stack listens on is bound to loopback, the sidecar's APIs, metrics and
internal gRPC, and the health ports of placement and scheduler included. One
switch opens the sidecar, and it refuses to without an API token."""

from __future__ import annotations

import os
import subprocess

import httpx

from helpers import listeners_beyond_loopback, stack_processes
from tools.stack import processes, settings


def test_no_process_of_the_stack_listens_beyond_loopback(service, local_stack):
    running = {process.name() for process in stack_processes()}
    assert {"redis-server", "placement", "scheduler", "daprd", "java"} <= running, running

    assert listeners_beyond_loopback(stack_processes()) == []


def test_the_sidecar_opens_beyond_loopback_only_with_an_api_token(local_stack, tmp_path):
    daprd = local_stack.bin_dir / "daprd"
    refused = subprocess.run([str(daprd), "--app-id", "exposed"], capture_output=True, text=True, timeout=30,
                             env={k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
                             | {"TDA_SIDECAR_ADDRESS": "0.0.0.0"})

    assert refused.returncode == 1
    assert "Set DAPR_API_TOKEN too" in refused.stderr
    # The second address for the APIs (make serve-ha's) is loopback only, even with a token.
    refused = subprocess.run([str(daprd), "--app-id", "exposed"], capture_output=True, text=True, timeout=30,
                             env=os.environ | {"TDA_SIDECAR_API_ALSO_ON": "0.0.0.0", "DAPR_API_TOKEN": "a-token"})
    assert refused.returncode == 1
    assert "TDA_SIDECAR_API_ALSO_ON=0.0.0.0 must be a loopback address" in refused.stderr

    token = "a-token-for-this-test"
    sidecar = processes.spawn("exposed", [str(local_stack.cli), "run", "--app-id", "exposed",
                                          "--dapr-http-port", "3603", "--resources-path", str(tmp_path)],
                              env=local_stack.env() | {"TDA_SIDECAR_ADDRESS": "0.0.0.0", "DAPR_API_TOKEN": token})
    try:
        processes.wait_until(lambda: processes.http_ok("http://127.0.0.1:3603/v1.0/healthz"), "the exposed sidecar",
                             process=sidecar, log=settings.LOG_DIR / "exposed.log")
        exposed = listeners_beyond_loopback([sidecar, *sidecar.children(recursive=True)])
        assert any(listener.endswith(":3603") for listener in exposed), exposed  # 0.0.0.0 or :: (both stacks)
        assert httpx.get("http://127.0.0.1:3603/v1.0/metadata").status_code == 401
    finally:
        processes.stop_dapr_run("exposed")

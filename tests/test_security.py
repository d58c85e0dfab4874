"""Workload identity, mTLS, access control and API tokens, for real.

These tests switch the session's stack to secure mode (TDA_MTLS=1): sentry
issues certificates, placement and scheduler speak TLS, and the service runs
with `resources/secure/service-config.yaml`. They run last (see conftest), and
the session's teardown stops the secure stack like any other.
"""

from __future__ import annotations

import socket
import ssl

import httpx
import pytest
from cryptography import x509

from conftest import SERVICE_APP_ID
from tools import stack

pytestmark = pytest.mark.secure

SPIFFE_ID = f"spiffe://public/ns/default/{SERVICE_APP_ID}"


@pytest.fixture(scope="module")
def secure_service(service_session, local_stack):
    """The session's service, restarted on a stack with sentry and mTLS."""
    service_session.stop()
    for name in ("placement", "scheduler"):
        stack.stop(name)
    _, started = stack.up(tracing=False, mtls=True)
    service_session.use_mtls(True)
    service_session.start()
    yield service_session
    service_session.stop()
    for name in reversed(started):
        stack.stop(name)


def _internal_grpc_port() -> int:
    for process in stack.psutil.process_iter(["name", "cmdline"]):
        args = process.info["cmdline"] or []
        if process.info["name"] == "daprd" and SERVICE_APP_ID in args:
            return int(args[args.index("--dapr-internal-grpc-port") + 1])
    raise AssertionError("no daprd of the service")


def test_the_sidecar_holds_a_spiffe_identity_that_names_the_app(secure_service):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only read what the sidecar presents
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", _internal_grpc_port()), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)

    certificate = x509.load_der_x509_certificate(der)
    uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [SPIFFE_ID]
    ca = x509.load_pem_x509_certificate((stack.DATA_DIR / "sentry" / "ca.crt").read_bytes())
    assert certificate.issuer != certificate.subject and ca.subject.rfc4514_string()  # issued under our CA


def _caller(name: str, port: int, local_stack, service, no_components) -> None:
    """A sidecar without an app, in secure mode, for app `name`."""
    process = stack.spawn(name, [str(local_stack.cli), "run", "--app-id", name, "--dapr-http-port", str(port),
                                 "--config", str(stack.SECURE_DIR / "caller-config.yaml"),
                                 "--resources-path", str(no_components)],
                          env=service.env)
    stack.wait_until(lambda: stack.http_ok(f"http://127.0.0.1:{port}/v1.0/healthz"), f"the sidecar of {name}",
                     process=process, log=stack.LOG_DIR / f"{name}.log")


def test_only_the_allowed_caller_may_invoke_the_agent_through_dapr(secure_service, scripted_llm, local_stack,
                                                                   tmp_path):
    _caller("agent-caller", 3611, local_stack, secure_service, tmp_path)
    _caller("stranger", 3612, local_stack, secure_service, tmp_path)
    try:
        task = {"task": "Write a haiku about identity."}
        allowed = httpx.post(f"http://127.0.0.1:3611/v1.0/invoke/{SERVICE_APP_ID}/method/run", json=task, timeout=30)
        denied = httpx.post(f"http://127.0.0.1:3612/v1.0/invoke/{SERVICE_APP_ID}/method/run", json=task, timeout=30)
    finally:
        stack.stop_dapr_run("agent-caller")
        stack.stop_dapr_run("stranger")

    assert allowed.status_code == 200, allowed.text
    assert secure_service.wait_until_done(allowed.json()["instance_id"])["runtime_status"] == "COMPLETED"
    assert denied.status_code == 403
    assert "access control policy has denied access to id: spiffe://public/ns/default/stranger" in denied.text


def test_with_an_api_token_the_sidecar_refuses_calls_without_it(secure_service, scripted_llm):
    secure_service.stop()
    secure_service.env["DAPR_API_TOKEN"] = "local-test-token"
    try:
        secure_service.start()
        publish = "/v1.0/publish/agent-pubsub/assistant.topic"
        without = secure_service.sidecar.post(publish, json={"task": "no token"})
        with_token = secure_service.sidecar.post(publish, json={"task": "Write a haiku with a token."},
                                                 headers={"dapr-api-token": "local-test-token"})
        health = secure_service.sidecar.get("/v1.0/healthz")

        assert without.status_code == 401 and "invalid api token" in without.text
        assert with_token.status_code == 204
        assert health.status_code == 204  # health checks need no token
        # The app itself keeps working: the SDK sends the token from its environment.
        scripted_llm.answer_next("Tokens everywhere")
        instance_id = secure_service.start_run("Write a haiku behind a token.")
        assert secure_service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"
    finally:
        secure_service.stop()
        del secure_service.env["DAPR_API_TOKEN"]

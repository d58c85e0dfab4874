"""Workload identity, mTLS, access control, API tokens and Redis's password, for real.

The first tests use the session's plain stack. The others switch it to
secure mode, as `TDA_SECURE=1 make serve` does: sentry issues certificates,
placement and scheduler speak TLS, Redis wants a password that the sidecar
reads from a secret store, and the service runs with
`resources/secure/service-config.yaml`. This module runs last (see conftest),
and the session's teardown stops the secure stack like any other.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import pytest
import redis
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from helpers import listeners_beyond_loopback, published_run, stack_processes, wait_for, workflow_key_mentioning
from tools.ha import cluster as ha
from tools.stack import processes, secure, services, settings
from tools.stack.settings import SERVICE_APP_ID

pytestmark = pytest.mark.secure

SPIFFE_ID = f"spiffe://public/ns/default/{SERVICE_APP_ID}"
REDIS_COMPONENTS = ["agent-config", "agent-memory", "agent-pubsub", "agent-registry", "agent-workflow"]


def _caller(name: str, port: int, local_stack, service, no_components, secure: bool = True) -> None:
    """A sidecar without an app, for app `name`; with mTLS if `secure`."""
    config = ["--config", str(settings.SECURE_DIR / "caller-config.yaml")] if secure else []
    process = processes.spawn(name, [str(local_stack.cli), "run", "--app-id", name, "--dapr-http-port", str(port),
                                 *config, "--resources-path", str(no_components)],
                          env=service.env)
    processes.wait_until(lambda: processes.http_ok(f"http://127.0.0.1:{port}/v1.0/healthz"), f"the sidecar of {name}",
                     process=process, log=settings.LOG_DIR / f"{name}.log")


def _invoke_run(port: int) -> httpx.Response:
    """POST /run to the agent through the sidecar on `port`. Asked again while the sidecar dials an address
    that refuses: Dapr's SQLite name resolution keeps a stopped sidecar's address for up to its 5 s update
    interval, and the service was just restarted (the request reached nothing, so no run started)."""
    def answer() -> httpx.Response | None:
        response = httpx.post(f"http://127.0.0.1:{port}/v1.0/invoke/{SERVICE_APP_ID}/method/run",
                              json={"task": "Write a haiku about identity."}, timeout=30)
        stale = response.status_code == 500 and "ERR_DIRECT_INVOKE" in response.text \
            and "connect: connection refused" in response.text
        return None if stale else response

    return wait_for(answer, "an answer from an address the name resolution still holds", timeout_s=30,
                    interval_s=1)


def _invoke_run_from(callers: dict[str, int], local_stack, service, tmp_path,
                     secure: bool) -> dict[str, httpx.Response]:
    """POST /run to the agent through each caller's sidecar (Dapr service invocation)."""
    no_components = tmp_path / "no-components"
    no_components.mkdir()
    try:
        for name, port in callers.items():
            _caller(name, port, local_stack, service, no_components, secure)
        return {name: _invoke_run(port) for name, port in callers.items()}
    finally:
        for name in callers:
            processes.stop_dapr_run(name)


# -- on the plain stack -----------------------------------------------------------------------
def test_secure_mode_refuses_to_start_on_a_stack_running_in_plain_mode(local_stack):
    with pytest.raises(processes.StackError) as refused:
        services.up(tracing=False, secure=True)
    assert "running in plain mode, but secure mode was asked for" in str(refused.value)
    assert "make stop" in str(refused.value)
    assert processes.recorded("sentry") is None  # refused before starting anything


def test_without_mtls_the_same_policy_cannot_tell_the_allowed_caller_from_others(service_session, local_stack,
                                                                               tmp_path):
    config = yaml.safe_load(secure.SERVICE_CONFIG.read_text())
    config["spec"]["mtls"]["enabled"] = False
    without_mtls = tmp_path / "service-config-without-mtls.yaml"
    without_mtls.write_text(yaml.safe_dump(config))
    service_session.stop()
    service_session.reconfigure(config=without_mtls)
    try:
        service_session.start()
        answers = _invoke_run_from({"agent-caller": 3611, "stranger": 3612}, local_stack, service_session,
                                   tmp_path, secure=False)
    finally:
        service_session.stop()
        service_session.reconfigure()

    # Without a client certificate there is no caller id (it is empty in the
    # denial): the policy's global `deny` applies to everyone, the app it allows included.
    for name, answer in answers.items():
        assert answer.status_code == 403, (name, answer.text)
        assert "access control policy has denied access to id:  operation: run" in answer.text


def test_with_an_app_token_only_the_sidecar_reaches_the_agent(service, scripted_llm):
    """APP_API_TOKEN makes the sidecar send `dapr-api-token` to the app; dapr-agents' routes
    never look at it, input_guard.py does: a direct call without it gets 401."""
    service.stop()
    service.env["APP_API_TOKEN"] = "local-app-token"
    try:
        service.start()
        direct = service.http.post("/run", json={"task": scripted_llm.task("Write a haiku without a token.")})
        wrong = service.http.post("/run", json={"task": scripted_llm.task("Write a haiku with the wrong token.")},
                                  headers={"dapr-api-token": "guessed"})
        through_dapr = service.sidecar.post(f"/v1.0/invoke/{SERVICE_APP_ID}/method/run",
                                            json={"task": scripted_llm.task("Write a haiku through Dapr.")})

        assert (direct.status_code, wrong.status_code) == (401, 401)
        assert "requires APP_API_TOKEN" in direct.text
        assert through_dapr.status_code == 200, through_dapr.text  # the sidecar sent the token
        service.http.headers["dapr-api-token"] = "local-app-token"  # to ask for the run's status
        assert service.wait_until_done(through_dapr.json()["instance_id"])["runtime_status"] == "COMPLETED"
    finally:
        service.stop()
        del service.env["APP_API_TOKEN"]
        service.http.headers.pop("dapr-api-token", None)


# -- in secure mode ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secure_session(service_session, local_stack):
    """The session's service, restarted on a stack in secure mode."""
    if processes.recorded("redis") is None:
        pytest.skip("secure mode needs the stack's own Redis (it sets a password), but a Redis this stack "
                    f"did not start listens on {settings.REDIS_PORT}: {processes.port_holder(settings.REDIS_PORT)}")
    service_session.stop()
    for name in ("placement", "scheduler", "redis"):
        processes.stop(name)
    _, started = services.up(tracing=False, secure=True)
    service_session.reconfigure(config=secure.SERVICE_CONFIG, secure=True)
    service_session.start()
    yield service_session
    service_session.stop()
    service_session.reconfigure()
    services.stop_services(started)


@pytest.fixture
def secure_service(secure_session):
    """The secure service, started again if an earlier test stopped it."""
    if processes.recorded("service") is None:
        secure_session.start()
    return secure_session


def _internal_grpc_port(service) -> int:
    _, daprd = service.processes()
    args = daprd.cmdline()
    return int(args[args.index("--dapr-internal-grpc-port") + 1])


def test_in_secure_mode_too_no_process_of_the_stack_listens_beyond_loopback(secure_service):
    running = {process.name() for process in stack_processes()}
    assert {"sentry", "redis-server", "placement", "scheduler", "daprd"} <= running, running

    assert listeners_beyond_loopback(stack_processes()) == []


def _certificate_of(host: str, port: int) -> x509.Certificate:
    """The certificate a TLS server presents, once its chain is verified up to sentry's root CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # a SPIFFE certificate names a workload, not a host
    context.load_verify_locations(cafile=secure.SENTRY_CREDENTIALS / "ca.crt")  # the handshake fails otherwise
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=10) as raw:
        try:
            tls = context.wrap_socket(raw)
        except ssl.SSLError as exc:
            pytest.fail(f"{host}:{port} speaks no TLS with a certificate of our sentry: {exc}")
        with tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _spiffe_ids(certificate: x509.Certificate) -> list[str]:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)


def test_the_sidecar_holds_a_spiffe_identity_that_names_the_app(secure_service):
    certificate = _certificate_of("127.0.0.1", _internal_grpc_port(secure_service))
    ca_file = secure.SENTRY_CREDENTIALS / "ca.crt"

    assert _spiffe_ids(certificate) == [SPIFFE_ID]
    # Issued by sentry's issuer certificate, which our root CA signed: checked signature by signature.
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    issuer = x509.load_pem_x509_certificate((secure.SENTRY_CREDENTIALS / "issuer.crt").read_bytes())
    assert certificate.issuer == issuer.subject and issuer.issuer == ca.subject
    certificate.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(ca)
    # The same check refuses an issuer of the same name with another key: it is not a formality.
    with pytest.raises(InvalidSignature):
        certificate.verify_directly_issued_by(_impostor_of(issuer))


def _impostor_of(issuer: x509.Certificate) -> x509.Certificate:
    """A self-signed certificate with `issuer`'s name and a key of the same kind, but not its key."""
    public = issuer.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):  # what sentry 1.18 signs with
        key, algorithm = ed25519.Ed25519PrivateKey.generate(), None
    else:
        key, algorithm = ec.generate_private_key(public.curve), hashes.SHA256()
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(issuer.subject).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
            .sign(key, algorithm))


def test_only_the_allowed_caller_may_invoke_the_agent_through_dapr(secure_service, scripted_llm, local_stack,
                                                                   tmp_path):
    answers = _invoke_run_from({"agent-caller": 3611, "stranger": 3612}, local_stack, secure_service, tmp_path,
                               secure=True)
    allowed, denied = answers["agent-caller"], answers["stranger"]

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
        without = secure_service.sidecar.post(publish, json={"task": scripted_llm.task("no token")})
        published = scripted_llm.task("Write a haiku with a token.")
        with_token = secure_service.sidecar.post(publish, json={"task": published},
                                                 headers={"dapr-api-token": "local-test-token"})
        health = secure_service.sidecar.get("/v1.0/healthz")

        assert without.status_code == 401 and "invalid api token" in without.text
        assert with_token.status_code == 204
        assert health.status_code == 204  # health checks need no token
        # The app itself keeps working: the SDK sends the token from its environment.
        scripted_llm.answer_next("Tokens everywhere")
        instance_id = secure_service.start_run(scripted_llm.task("Write a haiku behind a token."))
        assert secure_service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"
        # The published task's run is this test's too: it ends here, before the service stops.
        with redis.Redis(port=settings.REDIS_PORT, password=secure.redis_password(), decode_responses=True) as store:
            published_id = published_run(store, published)
        assert secure_service.wait_until_done(published_id)["runtime_status"] == "COMPLETED"
    finally:
        secure_service.stop()
        del secure_service.env["DAPR_API_TOKEN"]


def test_in_secure_mode_redis_wants_a_password_that_only_the_secret_store_gives_out(secure_service, scripted_llm):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=settings.REDIS_PORT).ping()
    password = secure.redis_password()
    authenticated = redis.Redis(host="127.0.0.1", port=settings.REDIS_PORT, password=password, decode_responses=True)

    # The components the sidecar loads name the secret; none holds the password.
    loaded = {path.stem: path.read_text() for path in secure_service.resources_in_use.glob("*.yaml")}
    assert not [name for name, text in loaded.items() if password in text]
    for name in REDIS_COMPONENTS:
        component = yaml.safe_load(loaded[name])
        assert component["auth"] == {"secretStore": "redis-secretstore"}
        assert {"name": "redisPassword", "secretKeyRef": {"name": "redis-password", "key": "redis-password"}} \
            in component["spec"]["metadata"]

    # With it, the sidecar's state, workflow and memory reach Redis: a run completes and is stored.
    scripted_llm.answer_next("Locked and keyed")
    task = scripted_llm.task("Write a haiku about a password.")
    instance_id = secure_service.start_run(task)
    assert secure_service.wait_until_done(instance_id)["runtime_status"] == "COMPLETED"
    assert workflow_key_mentioning(authenticated, task) is not None

    # The app may not read it through the Secrets API.
    denied = secure_service.sidecar.get("/v1.0/secrets/redis-secretstore/redis-password")
    assert denied.status_code == 403 and password not in denied.text

    # And Redis listens on loopback only.
    redis_process = processes.recorded("redis")
    listening = {conn.laddr.ip for conn in redis_process.net_connections() if conn.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    authenticated.close()


@pytest.mark.ha
def test_in_secure_mode_the_ha_stack_speaks_tls_on_every_host_and_serves_runs(secure_session, llm_env,
                                                                              scripted_llm):
    """`TDA_SECURE=1 make serve-ha`: every placement and scheduler node and every replica's sidecar presents a
    certificate from our sentry, the schedulers under the only ids sentry signs scheduler certificates for, and
    runs over HTTP and pub/sub complete through each replica."""
    secure_session.stop()  # replica 0's app takes the service's port; secure_service starts it again
    with ha.running(llm_env, secure=True):
        for i, host in enumerate(settings.HA_HOSTS):
            placement = _spiffe_ids(_certificate_of(host, settings.PLACEMENT_PORT))
            scheduler = _spiffe_ids(_certificate_of(host, settings.SCHEDULER_PORT))
            daprd = next(p for p in processes.recorded(f"ha-replica-{i}").children(recursive=True)
                         if p.name() == "daprd").cmdline()
            sidecar = _spiffe_ids(_certificate_of(host, int(daprd[daprd.index("--dapr-internal-grpc-port") + 1])))

            assert placement == [f"spiffe://{secure.TRUST_DOMAIN}/ns/default/dapr-placement"], placement
            assert scheduler == [f"spiffe://{secure.TRUST_DOMAIN}/ns/default/dapr-scheduler"], scheduler
            assert sidecar == [SPIFFE_ID], sidecar

        with httpx.Client(timeout=30) as client:
            started = {}  # app URL -> the id of the run started there over HTTP
            prefix = scripted_llm.task("secure ha")
            for i, host in enumerate(settings.HA_HOSTS):
                app = f"http://127.0.0.1:{settings.HA_APP_PORTS[i]}"
                run = client.post(f"{app}/run", json={"task": f"{prefix} {i} over http"})
                started[app] = run.json()["instance_id"]
                published = client.post(f"http://{host}:{settings.HA_SIDECAR_HTTP_PORTS[i]}/v1.0/publish/"
                                        "agent-pubsub/assistant.topic", json={"task": f"{prefix} {i} over pub/sub"})
                assert published.status_code == 204, published.text

            def completed(app: str, instance_id: str) -> bool:
                # 500 for a moment while the run's state is half written (helpers.Service.wait_until_done).
                response = client.get(f"{app}/run/{instance_id}")
                return response.status_code == 200 and response.json().get("runtime_status") == "COMPLETED"

            # A published run asks the LLM twice, for its answer and its summary (test_ha.py). Any replica may take a
            # published task; one its sidecar took but could not hand over is handed out again after 60 s.
            wait_for(lambda: all(completed(app, i) for app, i in started.items())
                     and all(len(scripted_llm.calls_mentioning(f"{prefix} {i} over pub/sub")) >= 2 for i in range(3)),
                     "the runs started through each replica to complete", timeout_s=150, interval_s=1)

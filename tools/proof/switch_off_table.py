"""The switch-offs `make switch-offs` applies: one per test the claims table of docs/claims.md names.

Each one turns the claim's capability off in a throw-away copy of the
repository (a text replaced in one of its files, a file added, or an
environment variable for the test run), and the named test must then fail.
`claim` and `test` are the claims table row's first cell and one test of its
test cell, verbatim; tests/test_switch_offs.py checks that every row is here.
`because` is what the failure must say: a test that fails for another reason
(a stack that did not start in time) proves nothing. A row whose capability
cannot be switched off would say why in `none`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Edit:
    """In `file`, the text `old` (found exactly once) becomes `new`; `old` None: `file` is written as `new`."""

    file: str
    old: str | None
    new: str


@dataclass(frozen=True)
class SwitchOff:
    claim: str
    test: str
    what: str = ""
    edits: tuple[Edit, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # A regex found in pytest's report of each failure: the test failed for this reason, not another.
    because: str = ""
    # False for a corpus of inputs, of which the switch-off changes some: then some cases must fail.
    every_case: bool = True
    none: str = ""  # why no switch-off is possible, when none is
    # Files the proof also depends on, beyond the test's module, tests/conftest.py, tests/helpers.py and the
    # files the edits change (tools/proof/switch_offs.py proof_files): the code an `env` switch-off acts through.
    covers: tuple[str, ...] = ()


SERVICE = "durable_agent_service.py"
BAD_INPUT_CLAIM = "answers malformed or oversized input with a 4xx, starts no run for it"
NO_INPUT_GUARD = ("the service runs dapr-agents' own AgentRunner, without input_guard.py's check",
                  (Edit(SERVICE, "runner = GuardedRunner()\n",
                        "from dapr_agents.workflow.runners import AgentRunner\n\nrunner = AgentRunner()\n"),))
HA_CLAIM = ("runs as 3 replicas with 3 placement and 3 scheduler nodes; under load, survives a dead replica, "
            "placement leader or scheduler node and a frozen host")
LOAD_CLAIM = "400 concurrent tasks, none lost, none twice; 40 runs wait on the LLM at once"
TEAM_CLAIM = ("finds a second agent, in an app of its own, in the registry and hands it a task as a child workflow; "
              "the answer comes back into its run")
TEAM_KILL_CLAIM = ("the child run survives a SIGKILL of the other app and its sidecar: both runs complete, "
                   "and only the LLM call the kill cut is made again")
TEAM_REGISTRY = "examples/team/resources/team-registry.yaml"
TEAM_FILES = ("examples/team/poet_agent.py", TEAM_REGISTRY, "tools/runs/team_app.py")
APPROVAL_CLAIM = "a tool call waits for a human's approval; approved, it runs once and the answer uses its result"
DASHBOARD_APPROVAL_CLAIM = "approve or deny from the dashboard, and through another replica than the one that asked"
REFUND_AGENT = "examples/approval/refund_agent.py"
HA_APPROVAL_CLAIM = ("under `make serve-ha`, a run waiting for approval outlives the replica that asked; approved "
                     "through another replica, it completes and the refund happens once")
LOCAL_MODEL_CLAIM = ("answers with a real model on this machine, offline and without a key (`LLM=local`: "
                     "SmolLM2-135M served by Ollama), and stores its memory summary or says why not")
LOCAL_MODEL_IS_ECHO = ("LLM=local reaches Dapr's echo component instead of the model (tools/stack/llm.py)",
                       (Edit("tools/stack/llm.py", 'extra, provider="openai-compatible")', 'extra, provider="echo")'),))
TRACEID_CLAIM = "Dapr 1.18.3's fix carried: a pub/sub message with a numeric traceid does not crash the sidecar"
TORN_READ_CLAIM = "Dapr 1.18.3's fix carried: reading a run while it is saved never fails"
TERMINATE_CLAIM = "Dapr 1.18.3's fix carried: a terminate sent while a run works ends it"
# The runtime built without our patches (scripts/patches/README.md): `TDA_DAPR_PATCHES=none make setup` builds it.
WITHOUT_RUNTIME_PATCHES = {"TDA_DAPR_PATCHES": "none"}
RUNTIME_CHOICE = ("tools/stack/runtime.py", "tools/stack/settings.py", "scripts/install-dapr.sh")
KUBE_IMAGE_CLAIM = ("its container image builds from deploy/kubernetes/Dockerfile with a real OCI builder (buildah, "
                    "base image made here) and the service in it completes a run")
KUBE_NODE_CLAIM = ("runs its image on a real one-machine Kubernetes node (`make kube-up`: kubelet, containerd, "
                   "the control plane, in a network namespace of its own), imported, never pulled")
KUBE_DAPR_CLAIM = ("installs Dapr 1.18.2 on that node by its own Helm chart (`make kube-dapr`: HA, images built here, "
                   "never pulled); Dapr's injector adds a daprd sidecar that becomes Ready")
KUBE_APP_CLAIM = ("runs on that node as docs/kubernetes.md says (the Secrets, `kubectl apply -f "
                  "deploy/kubernetes/manifests/`, Dapr's injector): `POST /run` through a port-forward completes with "
                  "the LLM's answer and the Secret's key, a publish starts a run, the traces reach Zipkin")
KUBE_POD_CLAIM = ("on that node, an app pod deleted while its run waits on the LLM: the run completes on the pod that "
                  "replaces it")
KUBE_LOAD_CLAIM = ("on that node, a placement pod and a scheduler pod deleted under a steady load: every acknowledged "
                   "run completes, and both pods come back")
KUBE_APP_FILES = ("tools/kube/app.py", "tools/kube/node.py", "tools/kube/dapr.py", "docs/kubernetes.md", "Makefile",
                  "deploy/kubernetes/node/llm-scripted.yaml", "deploy/kubernetes/node/host-volume.yaml",
                  "deploy/kubernetes/node/dapr-node-values.yaml", "scripts/install-kube-image.sh")
TOPIC_CLAIM = ("runs each published task once, even when its message is delivered again; dozens of published "
               "runs wait on the LLM at once")
# dapr-agents' own way: every delivery of a message gets a fresh instance id, so a message delivered again
# starts a second run of its task.
FRESH_ID_PER_DELIVERY = Edit("input_guard.py", "input=run_input, instance_id=instance_id)",
                             "input=run_input, instance_id=None)")
WORKFLOW_STATE_IN_MEMORY = Edit("resources/agent-workflow.yaml", "  type: state.redis\n", "  type: state.in-memory\n")
SIGTERM_INSTEAD_OF_SIGINT = Edit("tools/stack/processes.py", "app.send_signal(signal.SIGINT)",
                                 "app.send_signal(signal.SIGTERM)")
ACCESS_ALLOWED_BY_DEFAULT = Edit("resources/secure/service-config.yaml", "  accessControl:\n    defaultAction: deny\n",
                                 "  accessControl:\n    defaultAction: allow\n")


def sidecar_config(name: str, metrics: bool = True, sampling_rate: str = "1") -> tuple[Edit, ...]:
    """The runtime's default sidecar configuration (scripts/install-dapr.sh) with metrics or tracing changed,
    written into the copy as `<name>.yaml` and given to every `dapr run` of tools/stack/commands.py."""
    config = f"""apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: {name}
spec:
  metrics:
    enabled: {str(metrics).lower()}
  tracing:
    samplingRate: "{sampling_rate}"
    zipkin:
      endpointAddress: http://localhost:9411/api/v2/spans
  nameResolution:
    component: sqlite
    configuration:
      connectionString: .stack/nameresolution.db
"""
    return (Edit(f"{name}.yaml", None, config),
            Edit("tools/stack/commands.py", '    argv = [str(runtime.cli), "run", ',
                 f'    config = config or ROOT / "{name}.yaml"\n    argv = [str(runtime.cli), "run", '))


SWITCH_OFFS = [
    SwitchOff("prints the agent's answer in one command",
              "test_one_shot_run.py::test_make_run_prints_the_answer_of_the_configured_llm",
              "durable_agent_minimal.py runs the agent without printing its answer",
              (Edit("durable_agent_minimal.py", "print(runner.run_sync(agent, {\"task\": \"Write a haiku about "
                    "programming.\"}))", "runner.run_sync(agent, {\"task\": \"Write a haiku about programming.\"})"),),
              because=r"no answer printed"),
    SwitchOff("works offline with Dapr's echo component, and says so",
              "test_one_shot_run.py::test_make_run_without_an_llm_uses_dapr_echo_and_says_so",
              "resources/llm/echo.yaml names conversation.openai (which needs a key and the internet) instead of echo",
              (Edit("resources/llm/echo.yaml", "type: conversation.echo", "type: conversation.openai"),),
              because=r"assert [1-9][0-9]* == 0"),
    SwitchOff("HTTP endpoint `POST /run` returns the workflow instance id",
              "test_service.py::test_post_run_returns_the_instance_id_and_the_run_completes_with_the_llm_answer",
              "the service mounts the library's default route (`/agent/run`) instead of `/run`",
              (Edit(SERVICE, 'entry_path="/run", ', 'entry_path="/agent/run", '),),
              because=r"assert 404 == 200"),
    SwitchOff("status route `GET /run/{id}`, 404 for unknown ids",
              "test_service.py::test_status_of_an_unknown_instance_is_404",
              "the service mounts no status route at `/run/{id}`",
              (Edit(SERVICE, ', status_path="/run/{instance_id}"', ""),),
              because=r"'detail': 'Not Found'"),
    SwitchOff("subscribes to `assistant.topic` on Redis pub/sub",
              "test_service.py::test_a_task_published_to_assistant_topic_starts_a_run_that_completes",
              "the service's runner wires no topic route, so the app opens no subscription (input_guard.py); "
              "the stack's readiness, which waits for that subscription, no longer does (tools/stack/commands.py)",
              (Edit("input_guard.py", "        return [dataclasses.replace(spec, payload_filter=accepts_message)\n"
                    "                for spec in super()._build_pubsub_specs(agent, config)]\n",
                    "        return []\n"),
               Edit("tools/stack/commands.py", '    return any(sub.get("topic") == "assistant.topic" for sub in '
                    'metadata.get("subscriptions") or [])\n', "    return True\n")),
              because=r"the sidecar lists no subscription to agent-pubsub/assistant\.topic"),
    SwitchOff("reaches the LLM through the Conversation API",
              "test_claims.py::test_a_run_is_traced_in_zipkin_from_the_workflow_down_to_each_llm_call",
              "the agent calls the same LLM directly (dapr-agents' OpenAIChatClient), not through the sidecar",
              (Edit(SERVICE, "from dapr_agents import DurableAgent\n",
                    "from dapr_agents import DurableAgent, OpenAIChatClient\n"),
               Edit(SERVICE, '    name="Assistant",\n', '    name="Assistant",\n    llm=OpenAIChatClient(),\n')),
              because=r"0 == 2"),
    SwitchOff("executes durably as a Dapr workflow",
              "test_claims.py::test_workflow_runs_are_listed_and_their_history_shown_without_docker",
              "the workflow state store (agent-workflow) is in the sidecar's memory, not in Redis",
              (WORKFLOW_STATE_IN_MEMORY,),
              because=r"the workflow state is not in a durable store"),
    SwitchOff("persists the conversation in the state store (Redis)",
              "test_service.py::test_the_conversation_of_a_run_is_persisted_in_redis",
              # Not agent-memory: dapr-agents 1.0.9 keeps its memory summaries in agent-workflow's store too.
              "agent-workflow, the store of the conversation, the memory and the workflow state, is in the "
              "sidecar's memory, not in Redis", (WORKFLOW_STATE_IN_MEMORY,),
              because=r"not NoneType"),
    SwitchOff("registers itself in the agent registry, and leaves it on a clean shutdown",
              "test_service.py::test_the_agent_is_in_the_registry_while_the_service_runs",
              "the registry component carries a name dapr-agents does not look for",
              (Edit("resources/agent-registry.yaml", "  name: agent-registry\n", "  name: agent-registry-off\n"),),
              because=r"not NoneType"),
    SwitchOff("registers itself in the agent registry, and leaves it on a clean shutdown",
              "test_claims.py::test_a_clean_shutdown_removes_the_agent_from_the_registry",
              "the app is stopped with SIGTERM, which ends it before `runner.shutdown` (tools/stack/processes.py)",
              (SIGTERM_INSTEAD_OF_SIGINT,),
              because=r"assert not 1"),
    SwitchOff("takes configuration from a configuration store, live",
              "test_claims.py::test_a_system_prompt_set_in_the_configuration_store_reaches_the_running_agent",
              "the service does not subscribe to the configuration store",
              (Edit(SERVICE, '    configuration=RuntimeSubscriptionConfig(store_name="agent-config", '
                    'keys=["agent_system_prompt"]),\n', ""),),
              because=r"waiting for the agent to apply the new system prompt"),
    SwitchOff("reads the LLM key through the Secrets API, never from a file",
              "test_claims.py::test_the_llm_key_comes_from_the_secret_store_and_is_written_nowhere",
              "the LLM component's key is a literal in its YAML, not a secretKeyRef",
              (Edit("resources/llm/openai-compatible.yaml",
                    "    - name: key\n      secretKeyRef:\n        name: API_KEY\n        key: API_KEY\n",
                    "    - name: key\n      value: not-from-the-secret-store\n"),),
              because=r"Bearer not-from-the-secret-store"),
    SwitchOff("emits distributed traces to Zipkin",
              "test_claims.py::test_a_run_is_traced_in_zipkin_from_the_workflow_down_to_each_llm_call",
              "the sidecar's configuration samples no trace (`samplingRate: \"0\"`); Zipkin still runs",
              sidecar_config("tracing-off", sampling_rate="0"),
              because=r"the sidecar sent none"),
    SwitchOff("exposes Prometheus metrics",
              "test_claims.py::test_the_sidecar_exports_prometheus_metrics_that_move_with_each_run",
              "the sidecar's configuration turns metrics off (`spec.metrics.enabled: false`)",
              sidecar_config("metrics-off", metrics=False),
              because=r"# TYPE dapr_runtime_workflow_execution_count counter"),
    SwitchOff("logs every API call (state, pub/sub, workflow, LLM)",
              "test_claims.py::test_api_logging_records_the_state_pubsub_workflow_and_llm_calls_of_a_run",
              "`dapr run` without `--enable-api-logging`",
              (Edit("tools/stack/commands.py", ' "--enable-api-logging",', ""),),
              because=r"waiting for the publish in the API log"),
    SwitchOff("retries LLM errors (429, 5xx)",
              "test_claims.py::test_llm_errors_are_retried_by_the_sidecar_and_the_run_completes",
              "the LLM retry policy retries nothing (`maxRetries: 0`)",
              (Edit("resources/resiliency.yaml", "        maxRetries: 3\n", "        maxRetries: 0\n"),),
              because=r"taskFailed"),
    SwitchOff("cuts a hanging LLM call and fails the run with a reason; circuit breaker",
              "test_claims.py::test_a_hanging_llm_is_cut_by_the_timeout_and_the_run_fails_with_a_reason",
              "the LLM's circuit breaker is removed from resources/resiliency.yaml",
              (Edit("resources/resiliency.yaml", "          circuitBreaker: llm-breaker\n", ""),),
              because=r"assert 'circuit breaker is open' in"),
    SwitchOff("cuts a hanging LLM call and fails the run with a reason; circuit breaker",
              "test_claims.py::test_a_hanging_llm_is_cut_by_the_timeout_and_the_run_fails_with_a_reason",
              "the LLM's timeout is removed from resources/resiliency.yaml",
              (Edit("resources/resiliency.yaml", "          timeout: llm\n", ""),),
              because=r"the LLM policy's timeout \(\d+m?s\) to cut the held call"),
    SwitchOff("survives a crash of the app or the sidecar mid-run",
              "test_durability.py::test_a_run_completes_after_its_process_is_killed_mid_llm_call",
              "the workflow state store (agent-workflow) is in the sidecar's memory, not in Redis",
              (WORKFLOW_STATE_IN_MEMORY,),
              because=r"Workflow instance not found"),
    SwitchOff("loses nothing acknowledged when Redis dies",
              "test_durability.py::test_no_acknowledged_run_is_lost_when_redis_is_killed_mid_run",
              "Redis runs with `--appendonly no` (tools/stack/services.py)",
              (Edit("tools/stack/services.py", '"--appendonly", "yes"', '"--appendonly", "no"'),),
              because=r"Workflow instance not found"),
    SwitchOff("keeps tasks published while it is down",
              "test_durability.py::test_a_task_published_while_the_app_is_down_runs_when_it_is_back",
              "agent-pubsub is Dapr's in-memory pub/sub: a message lives in the memory of the sidecar it reached",
              (Edit("resources/agent-pubsub.yaml", "  type: pubsub.redis\n", "  type: pubsub.in-memory\n"),),
              because=r"waiting for the waiting task to start a run"),
    SwitchOff("drains on Ctrl+C / SIGTERM and leaves nothing running",
              "test_durability.py::test_sigterm_on_make_serve_drains_and_leaves_nothing_listening",
              "the app is stopped with SIGTERM, which ends it without waiting for its runs (tools/stack/processes.py)",
              (SIGTERM_INSTEAD_OF_SIGINT,),
              because=r"make serve exited with status|the app exited without waiting"),
    SwitchOff(LOAD_CLAIM, "test_concurrency.py::test_40_runs_started_at_once_all_wait_on_the_llm_together",
              "the service's workflow worker keeps its default thread pool (CPU count + 4) instead of 100 threads",
              (Edit(SERVICE, "WorkflowRuntime(maximum_thread_pool_workers=100)", "WorkflowRuntime()"),),
              because=r"LLM calls held at once"),
    SwitchOff(LOAD_CLAIM,
              "test_load.py::test_400_concurrent_tasks_over_http_and_pubsub_all_complete_exactly_once",
              "the topic's Redis stream is trimmed to about 1 entry and read one message at a time",
              (Edit("resources/agent-pubsub.yaml", '      value: ""\n',
                    '      value: ""\n    - name: maxLenApprox\n      value: "1"\n    - name: queueDepth\n'
                    '      value: "1"\n    - name: concurrency\n      value: "1"\n'),),
              because=r"tasks never reached the LLM|runs unfinished"),
    SwitchOff(LOAD_CLAIM,
              "test_load.py::test_400_concurrent_tasks_over_http_and_pubsub_all_complete_exactly_once",
              "each delivery of a message gets a fresh run id (dapr-agents' way) and the runner forgets the "
              "CloudEvent ids it handled (its TTLDedupeBackend off; both input_guard.py), and Redis hands a "
              "message out again when it is not acknowledged within 2 s (processingTimeout, "
              "redeliverInterval) instead of 60 s",
              (FRESH_ID_PER_DELIVERY,
               Edit("resources/agent-pubsub.yaml", '      value: ""\n',
                    '      value: ""\n    - name: processingTimeout\n      value: "2s"\n'
                    '    - name: redeliverInterval\n      value: "2s"\n'),
               Edit("input_guard.py", "class GuardedRunner(AgentRunner):\n",
                    "def _no_dedupe():\n    raise ImportError('switched off')\n\n\n"
                    "import dapr_agents.workflow.runners.agent  # noqa: E402\n"
                    "dapr_agents.workflow.runners.agent.TTLDedupeBackend = _no_dedupe\n\n\n"
                    "class GuardedRunner(AgentRunner):\n")),
              because=r"# none twice"),
    SwitchOff(TOPIC_CLAIM, "test_topic.py::test_the_same_cloudevent_published_twice_runs_once",
              "each delivery of a message gets a fresh run id (dapr-agents' way, input_guard.py)",
              (FRESH_ID_PER_DELIVERY,), because=r"the CloudEvent started 2 runs"),
    SwitchOff(TOPIC_CLAIM, "test_topic.py::test_the_same_cloudevent_published_twice_runs_once",
              "the runner does not look for the message's run before scheduling it, and the sidecar starts a "
              "finished run again under the same id (input_guard.py)",
              (Edit("input_guard.py", "if existing is not None:", "if False:"),),
              because=r"the finished run was started again under its id"),
    SwitchOff(TOPIC_CLAIM, "test_topic.py::test_a_message_redelivered_after_its_app_was_killed_runs_once",
              "each delivery of a message gets a fresh run id (dapr-agents' way, input_guard.py)",
              (FRESH_ID_PER_DELIVERY,), because=r"the message started 2 runs"),
    SwitchOff(TOPIC_CLAIM, "test_topic.py::test_dozens_of_published_tasks_wait_on_the_llm_together",
              "the topic is handled by dapr-agents' own consumer, one message at a time until its run ends "
              "(input_guard.py)",
              (Edit("input_guard.py", "subscription._StreamSubscriber, OneRunPerMessage",
                    "subscription._StreamSubscriber, subscription._StreamSubscriber"),),
              because=r"32 topic runs waiting on the LLM at once"),
    SwitchOff("a published task whose CloudEvent has a number where a string belongs (`traceid`) runs once, "
              "not retried forever",
              "test_topic.py::test_a_published_task_whose_cloudevent_has_a_numeric_traceid_runs_once",
              "the runner hands the message's extensions to dapr-agents as they came (input_guard.py)",
              (Edit("input_guard.py", "        if unreadable:\n", "        if False:\n"),),
              because=r"timed out after \d+ s waiting for the run of the task with a numeric traceid"),
    SwitchOff(APPROVAL_CLAIM, "test_approval.py::test_approved_refund_runs_once_and_the_answer_uses_its_result",
              "`make approve` raises an event whose name is not the one the run waits for (tools/runs/approvals.py)",
              (Edit("tools/runs/approvals.py", 'pb.RaiseEventRequest(instanceId=instance_id, name=waiting["event"],',
                    'pb.RaiseEventRequest(instanceId=instance_id, name="approval_response_" + instance_id,'),),
              # The run waits on; the tests' short approval timeout then denies the tool, and the answer says so.
              because=r"== 'Done: refund"),
    SwitchOff("denied from a terminal, the tool never runs and the run says so",
              "test_approval.py::test_denied_refund_never_runs_and_the_run_says_so",
              "`make approve DENY=1` sends an approval (tools/runs/approvals.py)",
              (Edit("tools/runs/approvals.py", '"approved": approved,', '"approved": True,'),),
              because=r"refunded 10\.00 EUR for order T-"),
    SwitchOff("no answer before the timeout is a denial",
              "test_approval.py::test_no_answer_before_the_timeout_is_a_denial",
              "the approval asks for no timeout of its own, so dapr-agents' 300 s default applies "
              "(examples/approval/refund_agent.py)",
              (Edit(REFUND_AGENT, "RequireApproval(timeout_seconds=APPROVAL_TIMEOUT_S,",
                    "RequireApproval(timeout_seconds=None,"),),
              because=r"assert \d+\.\d+ <= \d+"),
    SwitchOff("a run waiting for approval survives SIGKILL of its app and sidecar; approved after the restart, "
              "the refund happens once",
              "test_approval.py::test_sigkill_of_app_and_sidecar_while_waiting_then_approve",
              "the workflow state store (agent-workflow) is in the sidecar's memory, not in Redis",
              (WORKFLOW_STATE_IN_MEMORY,), because=r"workflow instance '\w+' not found"),
    SwitchOff("a run waiting for approval survives SIGKILL of its app and sidecar; approved after the restart, "
              "the refund happens once",
              "test_approval.py::test_make_approval_demo_prints_what_docs_tools_md_shows",
              "the workflow state store (agent-workflow) is in the sidecar's memory, not in Redis",
              (WORKFLOW_STATE_IN_MEMORY,), because=r"not found|no longer has the shape",
              covers=("tools/runs/approval_demo.py", "tools/runs/demos.py")),
    SwitchOff("a tool activity retried after a crash past its side effect does not repeat it",
              "test_approval.py::test_retried_tool_activity_does_not_repeat_the_refund",
              "the refund is written whether or not its key exists (no first-write; "
              "examples/approval/refund_agent.py)",
              (Edit(REFUND_AGENT, "\n" + " " * 30 + "options=StateOptions(concurrency=Concurrency.first_write))",
                    ")"),),
              because=r"refund written again by the retry"),
    SwitchOff("a tool that raises: the run goes on with the error given to the LLM",
              "test_approval.py::test_a_tool_that_raises_gives_its_error_to_the_llm",
              "the tool ends its process's work with SystemExit instead of raising an error "
              "(examples/approval/refund_agent.py)",
              (Edit(REFUND_AGENT, "raise ValueError(", "raise SystemExit("),),
              because=r"waiting for run \w+ to finish"),
    SwitchOff(DASHBOARD_APPROVAL_CLAIM,
              "test_approval.py::test_the_dashboard_shows_a_waiting_run_and_approves_or_denies_it",
              "the dashboard shows no approval for a waiting run (tools/runs/dashboard.py)",
              (Edit("tools/runs/dashboard.py",
                    '"approval": approval_awaited(instance_id, events) if row["status"] == "RUNNING" else None}',
                    '"approval": None}'),),
              because=r"'NoneType' object is not subscriptable"),
    SwitchOff(DASHBOARD_APPROVAL_CLAIM,
              "test_approval.py::test_an_approval_sent_through_the_replica_that_did_not_ask_completes_the_run",
              "the second replica runs under an app id of its own, so it shares no runs with the first "
              "(tools/runs/refund_app.py)",
              (Edit("tools/runs/refund_app.py",
                    "app = [script if arg == SCRIPT else arg for arg in approval_app(*self.ports)]",
                    'app = [script if arg == SCRIPT else (arg + "-2" if second_replica and arg == APPROVAL_APP_ID '
                    'else arg) for arg in approval_app(*self.ports)]'),),
              because=r"workflow instance '\w+' not found"),
    SwitchOff(HA_APPROVAL_CLAIM,
              "test_approval_ha.py::test_under_serve_ha_a_run_waiting_for_approval_outlives_the_replica_that_asked_"
              "and_completes_once_approved_through_another",
              "each replica of `make serve-ha` runs the refund agent under an app id of its own (refund-agent-<i>), "
              "so they share no runs (tools/ha/cluster.py)",
              (Edit("tools/ha/cluster.py", "    app = list(what.dapr_run)\n",
                    '    app = [f"{a}-{i}" if a == settings.APPROVAL_APP_ID else a for a in what.dapr_run]\n'),),
              because=r"raise-event on replica \d: \d{3} .*(not found|no such instance|does not exist)"),
    SwitchOff("runs waiting for approval hold no thread: 100 wait at once",
              "test_approval.py::test_100_runs_waiting_for_approval_hold_no_thread",
              none="a measurement: docs/tools.md shows the figures the test writes"),
    SwitchOff(LOCAL_MODEL_CLAIM, "test_local_model.py::test_make_run_llm_local_prints_the_models_answer",
              *LOCAL_MODEL_IS_ECHO, because=r"not looks_echoed"),
    SwitchOff(LOCAL_MODEL_CLAIM, "test_local_model.py::test_a_service_run_completes_with_the_models_answer_and_the_"
              "same_task_gets_the_same_answer", *LOCAL_MODEL_IS_ECHO, because=r"not looks_echoed"),
    SwitchOff(LOCAL_MODEL_CLAIM, "test_local_model.py::test_each_run_stores_the_models_memory_summary_or_logs_why_not",
              *LOCAL_MODEL_IS_ECHO, because=r"summaries stored for [0-5] of 8 runs|no summary, no reason"),
    SwitchOff(HA_CLAIM,
              "test_ha.py::test_every_run_completes_and_http_runs_exactly_once_while_placement_scheduler_replica_and_host_fail",
              "the workflow state store is in each sidecar's memory, so the replicas share no run state",
              (WORKFLOW_STATE_IN_MEMORY,),
              because=r"ReadTimeout|every run to finish|INSTANCE_ID_NOT_FOUND"),
    SwitchOff(HA_CLAIM,
              "test_load.py::test_runs_in_flight_finish_on_the_survivor_when_a_replica_is_killed",
              "the workflow state store is in each sidecar's memory, so the replicas share no run state",
              (WORKFLOW_STATE_IN_MEMORY,),
              because=r"ERR_INSTANCE_ID_NOT_FOUND|runs unfinished"),
    SwitchOff(BAD_INPUT_CLAIM, "test_bad_input.py::test_post_run_answers_malformed_input_clearly_and_starts_no_run",
              NO_INPUT_GUARD[0], NO_INPUT_GUARD[1], because=r"assert \d{3} == \d{3}|assert '.*' in ", every_case=False),
    SwitchOff(BAD_INPUT_CLAIM,
              "test_bad_input.py::test_malformed_messages_on_the_topic_start_no_run_and_block_no_later_message",
              NO_INPUT_GUARD[0], NO_INPUT_GUARD[1],
              because=r"only the good message may start a run|the good message to reach the agent|the limit is|"
                      r"dropped a message on the agent's topic"),
    SwitchOff("has a SPIFFE workload identity through mTLS (secure mode)",
              "test_security.py::test_the_sidecar_holds_a_spiffe_identity_that_names_the_app",
              "secure mode without mTLS: the sidecar's configuration turns it off, and placement and scheduler "
              "speak plain gRPC so that the stack still starts (tools/stack/secure.py)",
              (Edit("resources/secure/service-config.yaml", "  mtls:\n    enabled: true\n",
                    "  mtls:\n    enabled: false\n"),
               Edit("tools/stack/secure.py", '    return ["--tls-enabled", "--trust-domain"',
                    '    return []\n    return ["--tls-enabled", "--trust-domain"')),
              because=r"speaks no TLS with a certificate of our sentry"),
    SwitchOff("lets only allowed callers invoke it through Dapr (secure mode)",
              "test_security.py::test_only_the_allowed_caller_may_invoke_the_agent_through_dapr",
              "the access-control policy allows every caller by default", (ACCESS_ALLOWED_BY_DEFAULT,),
              because=r"assert 200 == 403"),
    SwitchOff("refuses sidecar API calls without the API token, when one is set",
              "test_security.py::test_with_an_api_token_the_sidecar_refuses_calls_without_it",
              "the service's sidecar is started without the DAPR_API_TOKEN it was given (tools/stack/commands.py)",
              (Edit("tools/stack/commands.py", 'process = spawn("service", argv, env=env, ',
                    'process = spawn("service", argv, '
                    'env={k: v for k, v in env.items() if k != "DAPR_API_TOKEN"}, '),),
              because=r"204 == 401"),
    SwitchOff("needs mTLS for that: without it the same policy cannot tell callers apart",
              "test_security.py::test_without_mtls_the_same_policy_cannot_tell_the_allowed_caller_from_others",
              "the access-control policy allows every caller by default", (ACCESS_ALLOWED_BY_DEFAULT,),
              because=r"agent-caller', '\{.instance_id."),
    SwitchOff("listens on loopback only: nothing of the stack is reachable from the network",
              "test_loopback.py::test_no_process_of_the_stack_listens_beyond_loopback",
              "the sidecars listen on every interface (TDA_SIDECAR_ADDRESS=0.0.0.0, with an API token)",
              # DAPR_HOST_IP: off loopback the wrapper leaves it to daprd, which finds no address in a namespace.
              env={"TDA_SIDECAR_ADDRESS": "0.0.0.0", "DAPR_API_TOKEN": "switch-off-token",
                   "DAPR_HOST_IP": "127.0.0.1"},
              because=r"tcp (0\.0\.0\.0|::):"),
    SwitchOff("keeps the Redis password in a secret store, not in YAML (secure mode)",
              "test_security.py::test_in_secure_mode_redis_wants_a_password_that_only_the_secret_store_gives_out",
              "secure mode's configuration drops the secret scope, so the app may read the password",
              (Edit("resources/secure/service-config.yaml",
                    "  secrets:\n    scopes:\n      - storeName: redis-secretstore\n        defaultAccess: deny\n",
                    ""),),
              because=r"200 == 403"),
    SwitchOff("keeps the Redis password in a secret store, not in YAML (secure mode)",
              "test_security.py::test_in_secure_mode_redis_wants_a_password_that_only_the_secret_store_gives_out",
              "secure mode writes the Redis password into each component's YAML instead of a secretKeyRef",
              (Edit("tools/stack/secure.py",
                    '        password[0].pop("value", None)\n'
                    '        password[0]["secretKeyRef"] = {"name": REDIS_SECRET_NAME, "key": REDIS_SECRET_NAME}\n'
                    '        component["auth"] = {"secretStore": "redis-secretstore"}\n',
                    '        password[0]["value"] = redis_password()\n'),),
              because=r"assert not \['agent-"),
    SwitchOff("ships Kubernetes manifests and HA Helm values that a real kube-apiserver accepts (a dry run: "
              "no cluster needed)",
              "test_kubernetes.py::test_every_kubernetes_manifest_is_accepted_by_a_real_kube_apiserver_dry_run",
              "a field of the Deployment is misspelt (`containerPort` as `containerPrt`)",
              (Edit("deploy/kubernetes/manifests/durable-agent-service.yaml", "containerPort: 8001",
                    "containerPrt: 8001"),),
              because=r"REJECTED"),
    SwitchOff(TRACEID_CLAIM,
              "test_runtime_fixes.py::test_a_pubsub_message_with_a_numeric_traceid_does_not_crash_the_sidecar",
              "the runtime is Dapr 1.18.2 without our patches (TDA_DAPR_PATCHES=none)", env=WITHOUT_RUNTIME_PATCHES,
              because=r"died on the message", covers=(*RUNTIME_CHOICE,
                                                      "scripts/patches/dapr/9d2c843687-pubsub-nonstring-traceid.patch")),
    SwitchOff(TORN_READ_CLAIM, "test_runtime_fixes.py::test_reading_a_run_while_it_is_saved_never_fails",
              "the runtime is Dapr 1.18.2 without our patches (TDA_DAPR_PATCHES=none)", env=WITHOUT_RUNTIME_PATCHES,
              because=r"torn by a save", covers=(*RUNTIME_CHOICE,
                                                 "scripts/patches/dapr/0472e09a61-workflow-torn-read.patch")),
    SwitchOff(TERMINATE_CLAIM, "test_runtime_fixes.py::test_a_terminate_sent_while_a_run_works_ends_it",
              "the runtime is Dapr 1.18.2 without our patches (TDA_DAPR_PATCHES=none)", env=WITHOUT_RUNTIME_PATCHES,
              because=r"still not TERMINATED", covers=(*RUNTIME_CHOICE, "tests/runtime_fixes_terminate_app.py",
                                                      "scripts/patches/durabletask-go/c1b1fb8-terminate-mid-batch.patch")),
    SwitchOff(TEAM_CLAIM,
              "test_team.py::test_the_assistant_delegates_to_the_poet_it_finds_in_the_registry_and_answers_with_its_haiku",
              "the Poet's registry store keeps Dapr's default key prefix, its own app id "
              "(examples/team/resources/team-registry.yaml): it registers in a registry of its own",
              (Edit(TEAM_REGISTRY, "    - name: keyPrefix\n      value: durable-agent-service\n", ""),),
              because=r"the Poet is not in the service's registry", covers=TEAM_FILES),
    SwitchOff(TEAM_KILL_CLAIM, "test_team.py::test_the_poet_killed_mid_child_run_both_runs_complete_after_its_restart",
              "the workflow state store (agent-workflow) is in the sidecar's memory, not in Redis",
              (WORKFLOW_STATE_IN_MEMORY,), because=r"waiting for run \w+ to finish|not found", covers=TEAM_FILES),
    SwitchOff(TEAM_KILL_CLAIM, "test_team.py::test_make_team_demo_prints_what_docs_team_md_shows",
              "the workflow state store (agent-workflow) is in the sidecar's memory, not in Redis",
              (WORKFLOW_STATE_IN_MEMORY,), because=r"did not finish within|not found|no longer has the shape",
              covers=(*TEAM_FILES, "tools/runs/team_demo.py", "tools/runs/demos.py")),
    SwitchOff("leaves the registry on a clean shutdown, and a restarted assistant no longer offers it",
              "test_team.py::test_a_clean_shutdown_takes_the_poet_out_of_the_registry_and_a_restarted_assistant_"
              "stops_offering_it",
              "the app is stopped with SIGTERM, which ends it before `runner.shutdown` (tools/stack/processes.py)",
              (SIGTERM_INSTEAD_OF_SIGINT,), because=r"the Poet is still in the registry", covers=TEAM_FILES),
    SwitchOff("the dashboard links a parent run to its child run in the other app, and the child back to its parent",
              "test_team_dashboard.py::test_the_dashboard_links_a_parent_run_to_its_child_in_the_other_app_and_back",
              "the dashboard reads no parent or child from a run's history (tools/runs/dashboard.py)",
              (Edit("tools/runs/dashboard.py", '"family": family_from_events(events),',
                    '"family": {"parent": None, "children": []},'),),
              because=r"not enough values to unpack", covers=("tests/test_team.py", *TEAM_FILES)),
    SwitchOff("a delegation the other app's workflow access policy refuses fails the run at once, with the reason "
              "(without mTLS it refuses every caller)",
              "test_team_policy.py::test_a_delegation_the_poets_access_policy_refuses_fails_the_parent_run_at_once_"
              "with_the_reason",
              "the policy is scoped to another app, so the Poet's sidecar does not load it "
              "(examples/team/access-policy/poet-callers.yaml)",
              (Edit("examples/team/access-policy/poet-callers.yaml", "scopes:\n  - team-poet\n",
                    "scopes:\n  - another-app\n"),),
              because=r"assert 'COMPLETED' == 'FAILED'", covers=("tests/test_team.py", *TEAM_FILES)),
    SwitchOff("in secure mode, the other app's workflow access policy lets exactly the service start its runs",
              "test_team_secure.py::test_in_secure_mode_the_poets_access_policy_lets_the_service_start_its_runs",
              "the policy names another caller than the service (examples/team/access-policy/poet-callers.yaml)",
              (Edit("examples/team/access-policy/poet-callers.yaml", "- appID: durable-agent-service\n",
                    "- appID: another-app\n"),),
              because=r"access denied by workflow access policy", covers=("tests/test_team.py", *TEAM_FILES)),
    SwitchOff(KUBE_IMAGE_CLAIM,
              "test_kube_image.py::test_the_image_built_by_buildah_starts_the_service_and_completes_a_run",
              "the Dockerfile copies the two scripts and not input_guard.py, which the service imports",
              (Edit("deploy/kubernetes/Dockerfile",
                    "COPY durable_agent_service.py durable_agent_minimal.py input_guard.py ./",
                    "COPY durable_agent_service.py durable_agent_minimal.py ./"),),
              because=r"No module named 'input_guard'",
              covers=("tools/proof/kube_image.py", "scripts/install-kube-image.sh")),
    SwitchOff(KUBE_NODE_CLAIM,
              "test_kube_node.py::test_a_pod_of_the_service_image_imported_not_pulled_runs_on_the_node",
              "the service's image is not imported into the node's containerd (nothing can be pulled)",
              (Edit("tools/kube/node.py", "    copy_into_containerd(name)\n\n\ndef copy_into_containerd",
                    "    return\n\n\ndef copy_into_containerd"),),
              because=r"ErrImageNeverPull",
              covers=("tools/proof/kube_image.py", "scripts/install-kube-node.sh", "scripts/lib.sh", "Makefile")),
    SwitchOff(KUBE_DAPR_CLAIM,
              "test_kube_dapr.py::test_daprs_injector_adds_a_ready_daprd_sidecar_to_an_annotated_pod",
              "the chart's sidecar injector is disabled (dapr_sidecar_injector.enabled: false)",
              (Edit("deploy/kubernetes/node/dapr-node-values.yaml", "dapr_sidecar_injector:\n",
                    "dapr_sidecar_injector:\n  enabled: false\n"),),
              because=r"\['app'\] == \['app', 'daprd'\]",
              covers=("tools/kube/dapr.py", "tools/kube/node.py", "scripts/install-kube-dapr.sh", "scripts/lib.sh",
                      "deploy/kubernetes/dapr-values.yaml", "Makefile")),
    SwitchOff(KUBE_APP_CLAIM,
              "test_kube_app.py::test_post_run_through_a_port_forward_completes_with_the_scripted_llms_answer_and_the_secrets_key",
              "the LLM's component holds a key written in its file instead of the Secret's",
              (Edit("deploy/kubernetes/node/llm-scripted.yaml",
                    "    - name: key\n      secretKeyRef:\n        name: openai\n        key: api-key\n",
                    "    - name: key\n      value: sk-written-in-the-file\n"),),
              because=r"Bearer sk-written-in-the-file", covers=KUBE_APP_FILES),
    SwitchOff(KUBE_POD_CLAIM,
              "test_kube_app.py::test_an_app_pod_deleted_while_its_run_waits_on_the_llm_completes_the_run_on_the_pod_that_replaces_it",
              "the workflow state store (agent-workflow) is in the sidecar's memory, not in the demo Redis",
              (Edit("deploy/kubernetes/manifests/agent-workflow.yaml", "  type: state.redis\n",
                    "  type: state.in-memory\n"),),
              because=r"to finish", covers=KUBE_APP_FILES),
    SwitchOff(KUBE_LOAD_CLAIM,
              "test_kube_app.py::test_a_placement_pod_and_a_scheduler_pod_deleted_under_steady_load_every_acknowledged_run_completes",
              "the scheduler keeps its etcd data in memory (dapr_scheduler.cluster.inMemoryStorage), not on a volume",
              (Edit("deploy/kubernetes/node/dapr-node-values.yaml", "  sidecarImagePullPolicy: Never\n",
                    "  sidecarImagePullPolicy: Never\ndapr_scheduler:\n  cluster:\n    inMemoryStorage: true\n"),),
              because=r"dapr-scheduler-server-0 Ready again", covers=KUBE_APP_FILES),
]

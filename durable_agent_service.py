import os

from dapr.ext.workflow import WorkflowRuntime
from dapr_agents import DurableAgent
from dapr_agents.agents.configs import RuntimeSubscriptionConfig

from input_guard import GuardedRunner  # an AgentRunner that checks each task before a run starts

runner = GuardedRunner()
agent = DurableAgent(
    name="Assistant",
    system_prompt="You are a helpful assistant",
    configuration=RuntimeSubscriptionConfig(store_name="agent-config", keys=["agent_system_prompt"]),
    runtime=WorkflowRuntime(maximum_thread_pool_workers=100),  # each LLM call holds a thread: room for dozens
)

try:
    port = int(os.environ.get("APP_PORT", "8001"))  # `dapr run -p` sets it
    runner.serve(agent, host="127.0.0.1", port=port, entry_path="/run", status_path="/run/{instance_id}")
finally:
    runner.shutdown(agent)
    agent.runtime.shutdown()  # the agent leaves a runtime it was given running

from dapr_agents import DurableAgent
from dapr_agents.agents.configs import RuntimeSubscriptionConfig
from dapr_agents.workflow.runners import AgentRunner

runner = AgentRunner()
agent = DurableAgent(
    name="Assistant",
    system_prompt="You are a helpful assistant",
    configuration=RuntimeSubscriptionConfig(store_name="agent-config", keys=["agent_system_prompt"]),
)

try:
    runner.serve(agent, host="127.0.0.1", port=8001, entry_path="/run", status_path="/run/{instance_id}")
finally:
    runner.shutdown(agent)

import os

from dapr_agents import DurableAgent
from dapr_agents.agents.configs import AgentRegistryConfig
from dapr_agents.storage.daprstores.stateservice import StateStoreService
from dapr_agents.workflow.runners import AgentRunner

runner = AgentRunner()
agent = DurableAgent(
    name="Poet", role="Poet", goal="Write a haiku on the topic it is given",
    system_prompt="You write one haiku on the topic you are given, and nothing else.",
    # The service's registry, not this app's own: resources/team-registry.yaml says why.
    registry=AgentRegistryConfig(store=StateStoreService(store_name="team-registry"), team_name="default"),
)
try:
    runner.serve(agent, host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8021")),
                 entry_path="/run", status_path="/run/{instance_id}")
finally:
    runner.shutdown(agent)

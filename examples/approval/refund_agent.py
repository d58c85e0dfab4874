import os

from dapr.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr_agents import DurableAgent, tool
from dapr_agents.hooks import Hooks, RequireApproval, ToolHookContext
from dapr_agents.workflow.runners import AgentRunner

REFUNDS_STORE = "refunds"  # examples/approval/resources/refunds.yaml
APPROVAL_TIMEOUT_S = int(os.environ.get("APPROVAL_TIMEOUT_S", "300"))  # then the refund is denied


@tool
def refund(order_id: str, amount: float) -> str:
    """Refund `amount` euros to the customer of order `order_id`."""
    if amount <= 0:
        raise ValueError(f"a refund must be positive, not {amount}")
    record = f'{{"order_id": "{order_id}", "amount": {amount}}}'
    with DaprClient() as client:
        try:
            # Keyed by the order and written only if the key is new (first-write with no etag), so an
            # activity retried after a crash finds the refund recorded and cannot record it twice.
            client.save_state(REFUNDS_STORE, f"refund:{order_id}", record,
                              options=StateOptions(concurrency=Concurrency.first_write))
        except Exception:
            if not client.get_state(REFUNDS_STORE, f"refund:{order_id}").data:
                raise  # not refused because the refund is there: a real error
    return f"refunded {amount:.2f} EUR for order {order_id}"


def ask_a_human(ctx: ToolHookContext):
    # Runs in the workflow body, so it decides from the call alone: no I/O, no clock.
    if ctx.step_name == "refund":
        order, amount = ctx.payload.get("order_id"), ctx.payload.get("amount")
        return RequireApproval(timeout_seconds=APPROVAL_TIMEOUT_S, instructions=f"refund {amount} EUR, order {order}?")
    return None


runner = AgentRunner()
agent = DurableAgent(name="Refunds", system_prompt="You handle refund requests with the refund tool.",
                     tools=[refund], hooks=Hooks(before_tool_call=[ask_a_human]))
try:
    runner.serve(agent, host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8011")),
                 entry_path="/run", status_path="/run/{instance_id}")
finally:
    runner.shutdown(agent)

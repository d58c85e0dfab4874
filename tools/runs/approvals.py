"""Runs of examples/approval/refund_agent.py waiting for a human, and the answer to one of them.

    python -m tools.runs.approvals                      # make approve: the waiting runs, tool, arguments, time left
    python -m tools.runs.approvals <instance> [--deny]  # make approve ID=<instance> [DENY=1]

Both go through the sidecar's workflow API (gRPC), not the runner's /hitl routes: those
answer only the approvals their own process asked for (a per-process dict), while an event
raised through the workflow API reaches the run wherever it lives, after any restart. The
waiting runs are read from each run's history: the publish_approval_request activity holds
the request (tool, arguments, timeout), its timer holds the deadline, and a run whose history
already holds the answer (an eventRaised of the same name) is no longer waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime

import grpc
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf.wrappers_pb2 import StringValue

from tools.runs.workflows import HALF_WRITTEN, STATUS, _metadata, _stub, list_instances, sidecar_grpc_port
from tools.stack.settings import APPROVAL_APP_ID


def approval_event_name(instance_id: str, tool_call_id: str) -> str:
    """The external event a run waits for (dapr_agents/agents/durable.py, _await_approval)."""
    return f"approval_response_{uuid.uuid5(uuid.NAMESPACE_DNS, f'{instance_id}:{tool_call_id}')}"


def waiting_approval(instance_id: str, grpc_port: int) -> dict | None:
    """What run `instance_id` waits for: {instance_id, tool, arguments, event, deadline, seconds_left}, or None."""
    try:
        events = _stub(grpc_port).GetInstanceHistory(pb.GetInstanceHistoryRequest(instanceId=instance_id),
                                                     metadata=_metadata(), timeout=10).events
    except grpc.RpcError as exc:
        if HALF_WRITTEN in (exc.details() or ""):
            return None  # the run's state read while half written (docs/durability.md): not known to wait, yet
        raise
    return approval_awaited(instance_id, list(events))


def approval_awaited(instance_id: str, events: list) -> dict | None:
    """waiting_approval(), from the run's history events."""
    scheduled, request, deadline, answered = {}, None, None, set()
    for event in events:
        kind = event.WhichOneof("eventType")
        if kind == "taskScheduled" and event.taskScheduled.name.endswith("publish_approval_request"):
            scheduled[event.eventId] = json.loads(event.taskScheduled.input.value)["event"]
        elif kind == "taskCompleted" and event.taskCompleted.taskScheduledId in scheduled:
            # Published: from the workflow's next step on, the run waits (for the event, raced with a timer).
            request, deadline = scheduled[event.taskCompleted.taskScheduledId], None
        elif kind == "timerCreated" and request is not None:
            deadline = event.timerCreated.fireAt.ToDatetime(tzinfo=UTC)
        elif kind == "eventRaised":
            answered.add(event.eventRaised.name.lower())
        elif kind == "timerFired" and request is not None:
            answered.add(f"approval_response_{request['approval_request_id']}")  # timed out: denied
    if request is not None and request.get("timeout_seconds") is not None and deadline is None:
        return None  # its timer is not written yet: a moment from now it waits
    if request is None:
        return None
    name = f"approval_response_{request['approval_request_id']}"
    if name.lower() in answered:
        return None
    left = (deadline - datetime.now(UTC)).total_seconds() if deadline else None
    return {"instance_id": instance_id, "tool": request["step_name"], "arguments": request["tool_arguments"],
            "event": name, "deadline": deadline, "seconds_left": left}


def waiting_approvals(grpc_port: int) -> list[dict]:
    """Every run of the app that waits for an approval now."""
    found = []
    for instance_id in list_instances(grpc_port):
        state = _stub(grpc_port).GetInstance(pb.GetInstanceRequest(instanceId=instance_id),
                                             metadata=_metadata(), timeout=10)
        if state.exists and STATUS.get(state.workflowState.workflowStatus) == "RUNNING":
            waiting = waiting_approval(instance_id, grpc_port)
            if waiting:
                found.append(waiting)
    return found


def answer(instance_id: str, approved: bool, grpc_port: int, reason: str = "") -> dict:
    """Raise the approval event of the run's waiting request, through the sidecar's workflow API."""
    waiting = waiting_approval(instance_id, grpc_port)
    if waiting is None:
        raise LookupError(f"run {instance_id} waits for no approval (`make approve` lists those that do)")
    body = {"approval_request_id": waiting["event"].removeprefix("approval_response_"), "approved": approved,
            "reason": reason or ("approved" if approved else "denied") + " from the command line"}
    _stub(grpc_port).RaiseEvent(pb.RaiseEventRequest(instanceId=instance_id, name=waiting["event"],
                                                     input=StringValue(value=json.dumps(body))),
                                metadata=_metadata(), timeout=10)
    return waiting


def describe(waiting: dict) -> str:
    args = ", ".join(f"{key}={value!r}" for key, value in waiting["arguments"].items())
    left = "no deadline" if waiting["seconds_left"] is None else f"{max(0.0, waiting['seconds_left']):.0f} s left"
    return f"{waiting['instance_id']}  {waiting['tool']}({args})  {left}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.runs.approvals", description=__doc__.splitlines()[0])
    parser.add_argument("instance_id", nargs="?", help="the run to answer (none: list the runs waiting)")
    parser.add_argument("--deny", action="store_true", help="deny instead of approving")
    parser.add_argument("--app-id", default=APPROVAL_APP_ID)
    args = parser.parse_args(argv)
    try:
        grpc_port = sidecar_grpc_port(args.app_id)
    except LookupError:
        print(f"error: no sidecar of {args.app_id} is running: start the agent first (`make approval-demo` runs "
              "it for a minute; examples/approval/README.md has its `dapr run`)", file=sys.stderr)
        return 1
    try:
        if args.instance_id is None:
            waiting = waiting_approvals(grpc_port)
            for run in waiting:
                print(describe(run))
            if not waiting:
                print("no run waits for an approval")
            return 0
        waiting = answer(args.instance_id, not args.deny, grpc_port)
        print(f"{'denied' if args.deny else 'approved'}: {describe(waiting)}")
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"error: the sidecar answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""List the agent's workflow runs, or print one run's history, without Docker.

    python -m tools.runs.workflows list                 # make workflows (the columns of `make dashboard`)
    python -m tools.runs.workflows history <instance>   # make history ID=<instance>

Both ask the service's sidecar through the Workflow engine's own gRPC API;
the sidecar is found like `dapr list` finds it, by its daprd process (`dapr
run` gives it a random gRPC port). When no sidecar of the app runs (after
`make run`, say), `history` reads the same events from Redis, where the
workflow engine keeps them, starting the stack's Redis for the moment if needed.
`dapr workflow list` works too (it needs
`-c redis://127.0.0.1:6379`), but the `dapr workflow history` of CLI 1.16.5
reads actor state that runtime 1.18 no longer hands out, and prints an empty
table; this prints the real history.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psutil
from dapr.ext.workflow._durabletask.internal import history_events_pb2 as history_pb
from dapr.ext.workflow._durabletask.internal import orchestration_pb2
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc

from tools.stack.processes import StackError
from tools.stack.settings import REDIS_PORT, SERVICE_APP_ID


def finished_status(client, instance_id: str, timeout_s: float, log: Path) -> dict:
    """A run's status once it is finished, read from its app's status route `/run/{id}` (`client`: an
    httpx.Client on the app); a StackError naming `log` when it is not finished within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/run/{instance_id}")
        # 500: the sidecar can read a run's state while it is half written; the next read is fine.
        if response.status_code == 200 and response.json()["runtime_status"] in FINISHED:
            return response.json()
        time.sleep(0.2)
    raise StackError(f"run {instance_id} did not finish within {timeout_s:.0f} s (log: {log})")


def sidecar_grpc_port(app_id: str) -> int:
    """The gRPC port of the daprd running `app_id`, read from its command line."""
    for process in psutil.process_iter(["name", "cmdline"]):
        args = process.info["cmdline"] or []
        if process.info["name"] == "daprd" and app_id in args and "--dapr-grpc-port" in args:
            if args[args.index("--app-id") + 1] == app_id:
                return int(args[args.index("--dapr-grpc-port") + 1])
    raise LookupError(f"no sidecar of app {app_id!r} is running. Start the service first (`make serve`).")


@functools.lru_cache(maxsize=8)  # one channel per sidecar, reused (the dashboard asks every second)
def _stub(grpc_port: int) -> pb_grpc.TaskHubSidecarServiceStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    return pb_grpc.TaskHubSidecarServiceStub(channel)


def _metadata() -> list[tuple[str, str]]:
    token = os.environ.get("DAPR_API_TOKEN")
    return [("dapr-api-token", token)] if token else []


def list_instances(grpc_port: int, limit: int = 10_000) -> list[str]:
    """Every workflow instance id the sidecar's app has, in the state store's order, not by time (at most `limit`)."""
    stub, ids, token = _stub(grpc_port), [], None
    while len(ids) < limit:
        request = pb.ListInstanceIDsRequest(pageSize=500)
        if token:
            request.continuationToken = token
        response = stub.ListInstanceIDs(request, metadata=_metadata(), timeout=10)
        ids.extend(response.instanceIds)
        token = response.continuationToken if response.HasField("continuationToken") else None
        if not token or not response.instanceIds:
            break
    return ids[:limit]


# A run's status, as the sidecar names it without its prefix: RUNNING, COMPLETED, FAILED, ...
STATUS = {value: name.removeprefix("ORCHESTRATION_STATUS_")
          for name, value in orchestration_pb2.OrchestrationStatus.items()}
FINISHED = {"COMPLETED", "FAILED", "TERMINATED"}
COLUMNS = ["WORKFLOW", "STATUS", "INSTANCE ID", "APP ID", "CREATED (UTC)", "LAST UPDATED (UTC)", "DURATION"]


def run_row(state: orchestration_pb2.WorkflowState, app_id: str) -> dict:
    """A run as the list shows it: workflow name, status, instance id, app id, created, last updated, duration."""
    created = state.createdTimestamp.ToDatetime(tzinfo=UTC)
    updated = state.lastUpdatedTimestamp.ToDatetime(tzinfo=UTC)
    status = STATUS.get(state.workflowStatus, str(state.workflowStatus))
    # A finished run lasted until its last update; an unfinished one is still going.
    end = updated if status in FINISHED else datetime.now(UTC)
    return {"name": state.name, "status": status, "instance_id": state.instanceId, "app_id": app_id,
            "created": created.isoformat(timespec="milliseconds"),
            "updated": updated.isoformat(timespec="milliseconds"),
            "duration_s": round((end - created).total_seconds(), 3)}


def list_runs(grpc_port: int, app_id: str, finished: dict[str, dict] | None = None,
              limit: int = 10_000) -> list[dict]:
    """Every run of the app as a row (run_row), newest first.

    `finished`: rows of finished runs by instance id, kept by the caller across
    calls and filled here. A finished run never changes again, so only the
    others are asked for; the sidecar answers the rest in parallel.
    """
    stub, finished = _stub(grpc_port), {} if finished is None else finished
    ids = list_instances(grpc_port, limit)
    fresh, pending = {}, [i for i in ids if i not in finished]
    for start in range(0, len(pending), 100):  # at most 100 calls in flight
        calls = [(i, stub.GetInstance.future(pb.GetInstanceRequest(instanceId=i), metadata=_metadata(), timeout=10))
                 for i in pending[start:start + 100]]
        for instance_id, call in calls:
            response = _instance(stub, instance_id, call)
            if response is not None and response.exists:  # not purged between the listing and now
                row = fresh[instance_id] = run_row(response.workflowState, app_id)
                if row["status"] in FINISHED:
                    finished[instance_id] = row
    rows = [finished.get(i) or fresh.get(i) for i in ids]
    return sorted((row for row in rows if row), key=lambda row: row["created"], reverse=True)


# What the sidecar says, for a moment, while a run's state is half written in Redis (docs/durability.md).
HALF_WRITTEN = "missing from state store"


def _instance(stub, instance_id: str, call, tries: int = 5):
    """A run's GetInstance answer; a read that meets the half-written state is tried again (bounded),
    and a run that stays unreadable is left out of this listing rather than failing all of it."""
    for attempt in range(tries):
        try:
            return call.result()
        except grpc.RpcError as exc:
            if HALF_WRITTEN not in (exc.details() or "") or attempt == tries - 1:
                if HALF_WRITTEN in (exc.details() or ""):
                    return None
                raise
        time.sleep(0.1)
        call = stub.GetInstance.future(pb.GetInstanceRequest(instanceId=instance_id), metadata=_metadata(),
                                       timeout=10)
    return None


def duration_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def print_runs(rows: list[dict]) -> None:
    """The list as a table: the columns of the dashboard's list, newest first."""
    widths = [30, 10, 32, 21, 19, 19, 0]
    print("  ".join(f"{title:<{width}}" for title, width in zip(COLUMNS, widths, strict=True)).rstrip())
    for row in rows:
        cells = [row["name"], row["status"], row["instance_id"], row["app_id"], row["created"][:19].replace("T", " "),
                 row["updated"][:19].replace("T", " "), duration_text(row["duration_s"])]
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True)).rstrip())
    if not rows:
        print("(no runs yet: start one with `curl -X POST http://localhost:8001/run ...`)")


def agent_key(workflow_name: str) -> str:
    """dapr-agents keys a run's state by the agent's name, lower case, spaces as dashes
    (workflow `dapr.agents.Assistant.workflow` -> `assistant`)."""
    parts = workflow_name.split(".")
    return (parts[-2] if len(parts) >= 3 else "assistant").replace(" ", "-").lower()


def terminate(instance_id: str, grpc_port: int) -> None:
    _stub(grpc_port).TerminateInstance(pb.TerminateRequest(instanceId=instance_id, recursive=True),
                                       metadata=_metadata(), timeout=10)


def purge(instance_id: str, grpc_port: int, app_id: str, redis_client) -> int:
    """Remove one run: the workflow engine's state of it and, as the service's own purge route
    does, the agent's conversation and memory of it. Every other run stays. Returns how many
    workflow instances were deleted (0: no such run, or it still runs: terminate it first)."""
    state = _stub(grpc_port).GetInstance(pb.GetInstanceRequest(instanceId=instance_id), metadata=_metadata(),
                                         timeout=10)
    response = _stub(grpc_port).PurgeInstances(pb.PurgeInstancesRequest(instanceId=instance_id, recursive=True),
                                               metadata=_metadata(), timeout=10)
    if state.exists and response.deletedInstanceCount:
        agent = agent_key(state.workflowState.name)
        redis_client.delete(f"{app_id}||{agent}:_workflow_{instance_id}", f"{app_id}||{agent}:_memory_{instance_id}")
    return response.deletedInstanceCount


def history(instance_id: str, grpc_port: int) -> list[dict]:
    """The run's history events as plain rows, from the sidecar."""
    response = _stub(grpc_port).GetInstanceHistory(
        pb.GetInstanceHistoryRequest(instanceId=instance_id), metadata=_metadata(), timeout=10)
    return history_rows(list(response.events))


def family(instance_id: str, grpc_port: int) -> dict:
    """The run's parent and children across apps, from its history: {"parent": {"instance_id", "app_id"} or None,
    "children": [{"instance_id", "workflow", "app_id"}]}. A child workflow started on another app (multi-app
    workflows) names that app in its event's router; the child's start names its parent's run and app."""
    response = read_again_if_half_written(lambda: _stub(grpc_port).GetInstanceHistory(
        pb.GetInstanceHistoryRequest(instanceId=instance_id), metadata=_metadata(), timeout=10))
    return family_from_events(list(response.events))


def read_again_if_half_written(read, tries: int = 20):
    """`read()`, tried again (bounded) while it meets a run's half-written state in Redis."""
    for attempt in range(tries):
        try:
            return read()
        except grpc.RpcError as exc:
            if HALF_WRITTEN not in (exc.details() or "") or attempt == tries - 1:
                raise
        time.sleep(0.1)


def family_from_events(events: list) -> dict:
    parent, children = None, []
    for event in events:
        kind = event.WhichOneof("eventType")
        if kind == "executionStarted" and event.executionStarted.HasField("parentInstance"):
            info = event.executionStarted.parentInstance
            parent = {"instance_id": info.workflowInstance.instanceId,
                      "app_id": info.appID or event.router.sourceAppID}
        elif kind == "childWorkflowInstanceCreated":
            child = event.childWorkflowInstanceCreated
            children.append({"instance_id": child.instanceId, "workflow": child.name,
                             "app_id": event.router.targetAppID or event.router.sourceAppID})
    return {"parent": parent, "children": children}


def history_from_redis(app_id: str, instance_id: str) -> list[dict]:
    """The run's history events as plain rows, read from the workflow engine's keys in Redis."""
    import redis

    from tools.stack import commands as stack

    with stack.running(tracing=False):
        client = redis.Redis(port=REDIS_PORT)
        prefix = f"{app_id}||dapr.internal.default.{app_id}.workflow||{instance_id}||history-"
        keys = sorted(client.scan_iter(match=f"{prefix}*", count=1000))
        events = [history_pb.HistoryEvent.FromString(client.hget(key, "data")) for key in keys]
        client.close()
    if not events:
        raise LookupError(f"no run {instance_id} of app {app_id!r} in Redis")
    return history_rows(events)


def history_rows(events: list) -> list[dict]:
    """History events as plain rows: id, type, name, time, milliseconds since the start."""
    start = min((e.timestamp.ToDatetime() for e in events), default=None)
    scheduled: dict[int, str] = {}  # task id -> activity name, to name its completion
    rows = []
    for event in events:
        kind = event.WhichOneof("eventType") or "unknown"
        detail = getattr(event, kind, None)
        name = getattr(detail, "name", "") or ""
        if kind == "taskScheduled":
            scheduled[event.eventId] = name
        elif kind in ("taskCompleted", "taskFailed"):
            name = scheduled.get(detail.taskScheduledId, "")
        elif kind == "executionCompleted":
            status = detail.DESCRIPTOR.fields_by_name["workflowStatus"]
            name = status.enum_type.values_by_number[detail.workflowStatus].name.split("STATUS_")[-1]
        at: datetime = event.timestamp.ToDatetime()
        rows.append({
            "event_id": event.eventId,
            "type": kind,
            "name": name,
            "timestamp": at.isoformat(timespec="milliseconds"),
            "elapsed_ms": round((at - start).total_seconds() * 1000, 1),
        })
    return rows


def remove_run(app_id: str, instance_id: str, timeout_s: float = 15.0) -> int:
    """`make purge`: terminate the run if it still runs, wait for that, then purge it."""
    import redis

    grpc_port = sidecar_grpc_port(app_id)
    state = _stub(grpc_port).GetInstance(pb.GetInstanceRequest(instanceId=instance_id), metadata=_metadata(),
                                         timeout=10)
    if not state.exists:
        print(f"error: no run {instance_id} of app {app_id!r}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + timeout_s
    while STATUS[state.workflowState.workflowStatus] not in FINISHED and time.monotonic() < deadline:
        terminate(instance_id, grpc_port)
        time.sleep(0.2)
        state = _stub(grpc_port).GetInstance(pb.GetInstanceRequest(instanceId=instance_id), metadata=_metadata(),
                                             timeout=10)
    client = redis.Redis(port=REDIS_PORT, password=os.environ.get("REDISCLI_AUTH") or None)
    try:
        deleted = purge(instance_id, grpc_port, app_id, client)
    finally:
        client.close()
    if not deleted:
        print(f"error: run {instance_id} was not purged (still running after {timeout_s:.0f} s?)", file=sys.stderr)
        return 1
    print(f"run {instance_id}: purged (its workflow state, conversation and memory); every other run is untouched")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.runs.workflows", description=__doc__.splitlines()[0])
    parser.add_argument("--app-id", default=SERVICE_APP_ID, help=f"whose runs (default {SERVICE_APP_ID})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every run: workflow, status, instance id, app id, created, updated, duration")
    for action, what in (("terminate", "stop one run where it is"),
                         ("purge", "remove one run (terminated first if it still runs), and only that one")):
        sub.add_parser(action, help=what).add_argument("instance_id")
    history_parser = sub.add_parser("history", help="one run's history events")
    history_parser.add_argument("instance_id")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print_runs(list_runs(sidecar_grpc_port(args.app_id), args.app_id))
        elif args.command == "terminate":
            terminate(args.instance_id, sidecar_grpc_port(args.app_id))
            print(f"run {args.instance_id}: terminating")
        elif args.command == "purge":
            return remove_run(args.app_id, args.instance_id)
        else:
            try:
                rows = history(args.instance_id, sidecar_grpc_port(args.app_id))
            except LookupError:
                rows = history_from_redis(args.app_id, args.instance_id)
            print(f"{'ID':>4}  {'TYPE':<24} {'NAME':<44} {'ELAPSED':>10}")
            for row in rows:
                print(f"{row['event_id']:>4}  {row['type']:<24} {row['name']:<44} {row['elapsed_ms']:>8.1f}ms")
    except (LookupError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"error: the sidecar answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

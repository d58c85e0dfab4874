"""List the agent's workflow runs, or print one run's history, without Docker.

    python -m tools.workflows list                 # make workflows
    python -m tools.workflows history <instance>   # make history ID=<instance>

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
import os
import sys
from datetime import datetime

import grpc
import psutil
from dapr.ext.workflow._durabletask.internal import history_events_pb2 as history_pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc

from tools.processes import StackError
from tools.settings import REDIS_PORT, SERVICE_APP_ID


def sidecar_grpc_port(app_id: str) -> int:
    """The gRPC port of the daprd running `app_id`, read from its command line."""
    for process in psutil.process_iter(["name", "cmdline"]):
        args = process.info["cmdline"] or []
        if process.info["name"] == "daprd" and app_id in args and "--dapr-grpc-port" in args:
            if args[args.index("--app-id") + 1] == app_id:
                return int(args[args.index("--dapr-grpc-port") + 1])
    raise LookupError(f"no sidecar of app {app_id!r} is running. Start the service first (`make serve`).")


def _stub(grpc_port: int) -> pb_grpc.TaskHubSidecarServiceStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    return pb_grpc.TaskHubSidecarServiceStub(channel)


def _metadata() -> list[tuple[str, str]]:
    token = os.environ.get("DAPR_API_TOKEN")
    return [("dapr-api-token", token)] if token else []


def list_instances(grpc_port: int, limit: int = 10_000) -> list[str]:
    """Every workflow instance id the sidecar's app has, oldest first (bounded by `limit`)."""
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


def history(instance_id: str, grpc_port: int) -> list[dict]:
    """The run's history events as plain rows, from the sidecar."""
    response = _stub(grpc_port).GetInstanceHistory(
        pb.GetInstanceHistoryRequest(instanceId=instance_id), metadata=_metadata(), timeout=10)
    return history_rows(list(response.events))


def history_from_redis(app_id: str, instance_id: str) -> list[dict]:
    """The run's history events as plain rows, read from the workflow engine's keys in Redis."""
    import redis

    from tools import stack

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.workflows", description=__doc__.splitlines()[0])
    parser.add_argument("--app-id", default=SERVICE_APP_ID, help=f"whose runs (default {SERVICE_APP_ID})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every run's instance id")
    history_parser = sub.add_parser("history", help="one run's history events")
    history_parser.add_argument("instance_id")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for instance_id in list_instances(sidecar_grpc_port(args.app_id)):
                print(instance_id)
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

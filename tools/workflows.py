"""List the agent's workflow runs, or print one run's history, without Docker.

    python -m tools.workflows list                 # make workflows
    python -m tools.workflows history <instance>   # make history ID=<instance>

Both ask the sidecar (gRPC on 127.0.0.1:50001, the service's default) through
the Workflow engine's own API. `dapr workflow list` works too (it needs
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
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc


def _stub(grpc_port: int) -> pb_grpc.TaskHubSidecarServiceStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    return pb_grpc.TaskHubSidecarServiceStub(channel)


def _metadata() -> list[tuple[str, str]]:
    token = os.environ.get("DAPR_API_TOKEN")
    return [("dapr-api-token", token)] if token else []


def list_instances(grpc_port: int = 50001, limit: int = 10_000) -> list[str]:
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


def history(instance_id: str, grpc_port: int = 50001) -> list[dict]:
    """The run's history events as plain rows: id, type, name, time, milliseconds since the start."""
    response = _stub(grpc_port).GetInstanceHistory(
        pb.GetInstanceHistoryRequest(instanceId=instance_id), metadata=_metadata(), timeout=10)
    rows, start = [], None
    for event in response.events:
        kind = event.WhichOneof("eventType") or "unknown"
        detail = getattr(event, kind, None)
        at: datetime = event.timestamp.ToDatetime()
        start = start or at
        rows.append({
            "event_id": event.eventId,
            "type": kind,
            "name": getattr(detail, "name", "") or "",
            "timestamp": at.isoformat(timespec="milliseconds"),
            "elapsed_ms": round((at - start).total_seconds() * 1000, 1),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.workflows", description=__doc__.splitlines()[0])
    parser.add_argument("--grpc-port", type=int, default=50001, help="the sidecar's gRPC port (default 50001)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every run's instance id")
    history_parser = sub.add_parser("history", help="one run's history events")
    history_parser.add_argument("instance_id")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for instance_id in list_instances(args.grpc_port):
                print(instance_id)
        else:
            print(f"{'ID':>4}  {'TYPE':<24} {'NAME':<44} {'ELAPSED':>10}")
            for row in history(args.instance_id, args.grpc_port):
                print(f"{row['event_id']:>4}  {row['type']:<24} {row['name']:<44} {row['elapsed_ms']:>8.1f}ms")
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"error: no sidecar answers on 127.0.0.1:{args.grpc_port}. Is the service running (`make serve`)?",
                  file=sys.stderr)
        else:
            print(f"error: {code.name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

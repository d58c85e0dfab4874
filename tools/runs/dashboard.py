"""`make dashboard`: the agent's workflow runs in your browser, at http://localhost:8080.

    python -m tools.runs.dashboard [--app-id durable-agent-service]

Start it while the service runs (`make serve`, or `make up` and your own `dapr run`).
It keeps nothing of its own; every page reads live:
- the runs (status, input, output, history) from the sidecar's workflow API over gRPC,
  the sidecar found as `make workflows` finds it (tools/runs/workflows.py);
- each run's conversation and memory summary from the agent's keys in Redis;
- the run's trace from Zipkin's API, to link to it.
Terminate and purge go to the same workflow API. The page, tools/runs/dashboard_page.html,
is one file of HTML, CSS and plain JavaScript: no build step, nothing from the internet.
It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import redis
import uvicorn
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from tools.runs.approvals import answer, approval_awaited
from tools.runs.workflows import (
    FINISHED,
    STATUS,
    _metadata,
    _stub,
    agent_key,
    family_from_events,
    list_runs,
    purge,
    run_row,
    sidecar_grpc_port,
    terminate,
)
from tools.stack import processes, secure
from tools.stack.settings import DASHBOARD_PORT, DASHBOARD_URL, LOG_DIR, REDIS_PORT, SERVICE_APP_ID, ZIPKIN_PORT

PAGE = Path(__file__).with_name("dashboard_page.html")
ZIPKIN_API = f"http://127.0.0.1:{ZIPKIN_PORT}"
ZIPKIN_UI = f"http://localhost:{ZIPKIN_PORT}"  # for the user's browser
PAGE_SIZE_MAX = 500


class Unavailable(Exception):
    """The sidecar or Redis cannot be reached; the message says what to do."""


class Runs:
    """What the page asks for, read from the sidecar and Redis of one app."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.finished: dict[str, dict] = {}  # rows of finished runs, which never change again
        password = secure.redis_password() if secure.secure_mode_requested() else None
        self.redis = redis.Redis(port=REDIS_PORT, password=password, decode_responses=True, socket_timeout=5)
        self._port: int | None = None

    def _sidecar(self, call):
        """call(grpc_port), with the sidecar found again if it restarted on another port."""
        for attempt in (1, 2):
            if self._port is None:
                try:
                    self._port = sidecar_grpc_port(self.app_id)
                except LookupError as exc:
                    raise Unavailable(str(exc)) from None
            try:
                return call(self._port)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                    raise
                self._port = None
        raise AssertionError("unreachable")

    # -- the list --------------------------------------------------------------------
    def page(self, status: str, page: int, size: int) -> dict:
        rows = self._sidecar(lambda port: list_runs(port, self.app_id, self.finished))
        counts = Counter(row["status"] for row in rows)
        chosen = [row for row in rows if not status or row["status"] == status]
        pages = max(1, -(-len(chosen) // size))
        page = min(max(page, 1), pages)
        return {"app_id": self.app_id, "runs": chosen[(page - 1) * size: page * size], "total": len(chosen),
                "all": len(rows), "page": page, "pages": pages, "counts": dict(sorted(counts.items())),
                "unfinished": sum(n for s, n in counts.items() if s not in FINISHED)}

    # -- one run ---------------------------------------------------------------------
    def run(self, instance_id: str) -> dict | None:
        def ask(port: int):
            stub = _stub(port)
            state = stub.GetInstance(pb.GetInstanceRequest(instanceId=instance_id, getInputsAndOutputs=True),
                                     metadata=_metadata(), timeout=10)
            if not state.exists:
                return None, []
            events = stub.GetInstanceHistory(pb.GetInstanceHistoryRequest(instanceId=instance_id),
                                             metadata=_metadata(), timeout=10).events
            return state.workflowState, list(events)

        state, events = self._sidecar(ask)
        if state is None:
            return None
        row = run_row(state, self.app_id)
        failure = state.failureDetails
        agent = agent_key(state.name)
        return {**row, "input": state.input.value, "output": state.output.value,
                "task": _field(state.input.value, "task"), "answer": _field(state.output.value, "content"),
                "custom_status": state.customStatus.value,
                "failure": f"{failure.errorType}: {failure.errorMessage}" if state.HasField("failureDetails") else "",
                "timeline": timeline(events), "events": len(events),
                "conversation": self._conversation(f"{self.app_id}||{agent}:_workflow_{instance_id}"),
                "memory": self._json(f"{self.app_id}||{agent}:_memory_{instance_id}") or [],
                "trace": self.trace(instance_id),
                # Its parent run and child runs, each in its app (a child of examples/team runs in another).
                "family": family_from_events(events),
                # A run of examples/approval waiting for a human: the tool, its arguments, the time left.
                "approval": approval_awaited(instance_id, events) if row["status"] == "RUNNING" else None}

    def _json(self, key: str):
        try:
            data = self.redis.hget(key, "data")
        except redis.RedisError as exc:
            raise Unavailable(f"Redis on port {REDIS_PORT} does not answer ({exc}): is the stack up?") from None
        return json.loads(data) if data else None

    def _conversation(self, key: str) -> list[dict]:
        state = self._json(key) or {}
        return [{"role": m.get("role", ""), "content": str(m.get("content", ""))}
                for m in [*state.get("system_messages", []), *state.get("messages", [])]]

    def trace(self, instance_id: str) -> dict:
        """The run's trace in Zipkin, found by the service name and the instance id; else a search for it."""
        query = f"durabletask.task.instance_id={instance_id}"
        search = f"{ZIPKIN_UI}/zipkin/?serviceName={quote(self.app_id)}&annotationQuery={quote(query)}"
        try:
            traces = httpx.get(f"{ZIPKIN_API}/api/v2/traces", timeout=2, params={
                "serviceName": self.app_id, "annotationQuery": query, "limit": 1}).json()
        except (httpx.HTTPError, ValueError):
            return {"url": search, "found": False, "note": f"Zipkin does not answer on port {ZIPKIN_PORT}"}
        if traces and traces[0]:
            trace_id = traces[0][0]["traceId"]
            return {"url": f"{ZIPKIN_UI}/zipkin/traces/{trace_id}", "found": True, "note": f"trace {trace_id}"}
        return {"url": search, "found": False, "note": "no trace of this run in Zipkin (yet): search for it"}

    # -- actions ---------------------------------------------------------------------------
    def terminate(self, instance_id: str) -> dict:
        self._sidecar(lambda port: terminate(instance_id, port))
        return {"instance_id": instance_id, "status": "terminating"}

    def answer(self, instance_id: str, approved: bool) -> dict:
        """Approve or deny, as `make approve` does: the event raised through the sidecar's workflow API."""
        try:
            waiting = self._sidecar(lambda port: answer(instance_id, approved, port, reason="from the dashboard"))
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return {"instance_id": instance_id, "approved": approved, "tool": waiting["tool"]}

    def purge(self, instance_id: str) -> dict:
        deleted = self._sidecar(lambda port: purge(instance_id, port, self.app_id, self.redis))
        self.finished.pop(instance_id, None)
        return {"instance_id": instance_id, "purged": deleted}


def _field(text: str, key: str) -> str:
    """`key` of a JSON object in `text` (the run's input holds the task, its output the answer)."""
    try:
        value = json.loads(text)
    except ValueError:
        return ""
    return str(value.get(key, "")) if isinstance(value, dict) else ""


def timeline(events: list) -> list[dict]:
    """The history as steps: each activity from scheduled to completed (or failed), with its input and
    output, and the workflow's own events; times in ms since the first event."""
    start = min((e.timestamp.ToMilliseconds() for e in events), default=0)
    steps, by_task = [], {}
    for event in events:
        kind = event.WhichOneof("eventType") or "unknown"
        detail, at = getattr(event, kind, None), event.timestamp.ToMilliseconds() - start
        if kind == "workflowStarted":
            continue  # the engine's mark of each replay: noise here
        if kind == "taskScheduled":
            by_task[event.eventId] = step = {"kind": "activity", "name": detail.name, "status": "scheduled",
                                             "start_ms": at, "end_ms": None, "input": detail.input.value, "output": ""}
            steps.append(step)
        elif kind in ("taskCompleted", "taskFailed") and detail.taskScheduledId in by_task:
            failed = kind == "taskFailed"
            by_task[detail.taskScheduledId].update(
                status="failed" if failed else "completed", end_ms=at,
                output=f"{detail.failureDetails.errorType}: {detail.failureDetails.errorMessage}" if failed
                else detail.result.value)
        else:
            step = {"kind": "event", "name": kind, "status": "", "start_ms": at, "end_ms": at,
                    "input": "", "output": ""}
            if kind == "executionStarted":
                step["input"] = detail.input.value
            elif kind == "executionCompleted":
                step["name"] += " " + STATUS.get(detail.workflowStatus, "")
                step["output"] = detail.result.value or detail.failureDetails.errorMessage
            steps.append(step)
    return steps


APP_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")


def build_app(app_id: str = SERVICE_APP_ID) -> FastAPI:
    shown = {app_id: Runs(app_id)}  # the app of `make dashboard APP=...`, then any app a run's family names

    def runs_of(app: str) -> Runs:
        """The runs of `app` (`?app=` of a request; empty: the dashboard's own app)."""
        app = app or app_id
        if not APP_ID_PATTERN.fullmatch(app):
            raise Unavailable(f"{app!r} is not an app id")
        if app not in shown:
            shown[app] = Runs(app)
        return shown[app]

    runs = shown[app_id]
    app = FastAPI(title="tiny durable agent: workflow runs", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def local_only(request: Request, call_next):
        # A web page elsewhere must not drive the dashboard: no other Host (DNS rebinding), and the
        # actions need a header that a cross-site form cannot send.
        if request.headers.get("host", "").rsplit(":", 1)[0] not in ("127.0.0.1", "localhost"):
            return JSONResponse({"error": "open the dashboard as http://localhost:8080/"}, status_code=403)
        if request.method == "POST" and request.headers.get("x-dashboard") != "1":
            return JSONResponse({"error": "actions come from the dashboard's page only"}, status_code=403)
        return await call_next(request)

    @app.exception_handler(Unavailable)
    def unavailable(_request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(grpc.RpcError)
    def refused(_request: Request, exc: grpc.RpcError) -> JSONResponse:
        return JSONResponse({"error": f"the sidecar answered {exc.code().name}: {exc.details()}"}, status_code=502)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/api/runs")
    def list_page(status: str = "", page: int = 1, size: int = 50) -> dict:
        return runs.page(status.upper(), page, min(max(size, 1), PAGE_SIZE_MAX))

    @app.get("/api/runs/{instance_id}")
    def one(instance_id: str, app: str = ""):
        found = runs_of(app).run(instance_id)
        return found if found else JSONResponse({"error": f"no run {instance_id} of {app or app_id}"},
                                                status_code=404)

    @app.post("/api/runs/{instance_id}/terminate")
    def terminate(instance_id: str, app: str = "") -> dict:
        return runs_of(app).terminate(instance_id)

    @app.post("/api/runs/{instance_id}/approve")
    def approve(instance_id: str, app: str = ""):
        return runs_of(app).answer(instance_id, True)

    @app.post("/api/runs/{instance_id}/deny")
    def deny(instance_id: str, app: str = ""):
        return runs_of(app).answer(instance_id, False)

    @app.post("/api/runs/{instance_id}/purge")
    def purge(instance_id: str, app: str = "") -> dict:
        return runs_of(app).purge(instance_id)

    return app


@contextlib.contextmanager
def in_background(name: str = "dashboard") -> Iterator[str]:
    """`make dashboard` in the background for the block (tests, `make images`); yields its URL."""
    processes.require_free({"dashboard": DASHBOARD_PORT})
    process = processes.spawn(name, [sys.executable, "-m", "tools.runs.dashboard"])
    try:
        processes.wait_until(lambda: processes.http_ok(f"{DASHBOARD_URL}/"), "make dashboard", process=process,
                             log=LOG_DIR / f"{name}.log")
        yield DASHBOARD_URL
    finally:
        processes.stop(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.runs.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--app-id", default=SERVICE_APP_ID, help=f"whose runs (default {SERVICE_APP_ID})")
    parser.add_argument("--port", type=int, default=DASHBOARD_PORT)
    args = parser.parse_args(argv)
    try:
        sidecar_grpc_port(args.app_id)
    except LookupError as exc:
        print(f"[dashboard] note: {exc} The page shows the runs once it runs.", flush=True)
    print(f"[dashboard] the runs of {args.app_id}: http://localhost:{args.port}/  (Ctrl+C stops it)", flush=True)
    try:
        uvicorn.run(build_app(args.app_id), host="127.0.0.1", port=args.port, log_level="warning")
    except SystemExit:  # uvicorn exits so when the port is taken; it has said why
        print(f"[dashboard] error: cannot listen on 127.0.0.1:{args.port} (another dashboard? the Diagrid one?)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

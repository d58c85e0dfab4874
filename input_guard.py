"""What the service accepts as a task, checked before any run starts.

dapr-agents 1.0.9 starts a run for whatever reaches `POST /run` or the topic:
no body, `{}` or an empty task start a run that fails or answers nothing; an
out-of-range number gets a bare 500; a task over 2 MiB is accepted but its
run can never be scheduled. This module puts one check in front of both
doors, and the service script uses it through `GuardedRunner` instead of
`AgentRunner`:

- a task is a JSON object with a non-empty string `task` of at most
  MAX_TASK_BYTES (UTF-8);
- `POST /run` (and `/run/stream`) answers 413 over the limit and 400 or 422
  naming the problem otherwise, and starts no run;
- a message on the topic that breaks the rule is dropped with one log line
  saying why; it starts no run;
- with APP_API_TOKEN set, only callers that send it get in (the sidecar sends
  it as `dapr-api-token`); dapr-agents' routes do not check it themselves;
- no line the app prints is longer than `dapr run` can read (see FoldedLines);
- the topic starts one run per published task, and does not wait for it
  (see OneRunPerMessage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import sys

import grpc
import uvicorn
from dapr.clients.grpc._response import TopicEventResponse
from dapr.common.pubsub.subscription import SubscriptionMessage
from dapr_agents.workflow.runners import AgentRunner
from dapr_agents.workflow.utils import subscription
from fastapi import FastAPI

# The scheduler stores each activity's input, and the LLM call's input holds the
# task and the conversation, in messages of at most 2 MiB: a 2 MiB task leaves
# its run retrying forever (a 1.5 MiB one still completes). 1 MiB leaves the
# other half for the conversation and the answer.
MAX_TASK_BYTES = 1024 * 1024
# JSON can spell one character in up to 6 bytes (\uXXXX), so any valid task fits in this.
MAX_BODY_BYTES = 6 * MAX_TASK_BYTES + 4096

logger = logging.getLogger("input_guard")


class BadTask(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _reject_constant(name: str) -> float:
    raise BadTask(400, f"the body holds {name}, which JSON does not allow")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadTask(400, f"the number {text[:40]} is out of range")
    return value


JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}


def check_task(data: object) -> None:
    """Raise BadTask unless `data` is an object with a non-empty string task within the limit."""
    if not isinstance(data, dict):
        raise BadTask(422, f"send a JSON object with a task field, not {JSON_TYPES.get(type(data), 'that')}")
    if "task" not in data:
        raise BadTask(422, "the object has no task field")
    task = data["task"]
    if not isinstance(task, str):
        raise BadTask(422, f"the task must be a string, not {JSON_TYPES.get(type(task), 'that')}")
    if not task.strip():
        raise BadTask(422, "the task is empty")
    if "\ufffd" in task:  # what a decoder leaves for bytes that are not UTF-8 (the topic's messages)
        raise BadTask(422, "the task holds bytes that are not UTF-8")
    size = len(task.encode("utf-8", "surrogatepass"))
    if size > MAX_TASK_BYTES:
        raise BadTask(413, f"the task is {size} bytes; the limit is {MAX_TASK_BYTES} bytes "
                           f"({MAX_TASK_BYTES // 1024} KiB)")


def parse_task(body: bytes) -> dict:
    """The request body as a checked task object, or BadTask."""
    if len(body) > MAX_BODY_BYTES:
        raise BadTask(413, f"the body is {len(body)} bytes; a task is at most {MAX_TASK_BYTES // 1024} KiB")
    if not body.strip():
        raise BadTask(400, "the body is empty; send a JSON object with a task field")
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadTask(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadTask(400, "the body nests too deeply") from None
    check_task(data)
    return data


class TaskGuard:
    """ASGI middleware: checks the body of `POST <paths>` before the agent's route sees it."""

    def __init__(self, app, paths: tuple[str, ...]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        body, size, more = b"", 0, True
        while more:  # read it all, keeping at most MAX_BODY_BYTES: an early answer would reset the connection
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY_BYTES:
                body += chunk
            more = message.get("more_body", False)
        try:
            if size > MAX_BODY_BYTES:
                raise BadTask(413, f"the body is {size} bytes; a task is at most {MAX_TASK_BYTES // 1024} KiB")
            parse_task(body)
        except BadTask as problem:
            return await _answer(send, problem.status, str(problem))

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class AppTokenCheck:
    """ASGI middleware: every request must carry the app token in `dapr-api-token`."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not hmac.compare_digest(dict(scope["headers"]).get(b"dapr-api-token", b""),
                                                               self.token):
            return await _answer(send, 401, "missing or wrong dapr-api-token: this app requires APP_API_TOKEN")
        await self.app(scope, receive, send)


async def _answer(send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def accepts_message(data: object, _context: object) -> bool:
    """The topic's filter: True lets dapr-agents start a run for the message."""
    try:
        check_task(data)
        return True
    except BadTask as problem:
        logger.warning("dropped a message on the agent's topic: %s", problem)
        if isinstance(data, dict) and isinstance(data.get("task"), str) and problem.status == 413:
            # dapr-agents logs the dropped data next; spare the log the whole task.
            data["task"] = f"<{len(data['task'])} characters, over the limit>"
        return False


class FoldedLines(io.TextIOBase):
    """A text stream that breaks every line longer than `width` characters.

    `dapr run` (CLI 1.16.5) reads the app's output line by line with Go's
    default 64 KiB line limit, and stops reading for good at a longer line.
    The app then blocks on a later print once the pipe is full, and with it
    every run: dapr-agents prints each task and answer, so one long task or
    answer stalls the service. 8192 characters are at most 32 KiB of UTF-8.
    """

    def __init__(self, stream, width: int = 8192) -> None:
        self.stream, self.width, self.column = stream, width, 0

    def write(self, text: str) -> int:
        out = []
        for part in re.split(r"(\n)", text):
            if part == "\n":
                self.column = 0
                out.append(part)
            while part and part != "\n":
                room = self.width - self.column
                out.append(part[:room] + ("\n" if len(part) > room else ""))
                self.column = 0 if len(part) > room else self.column + len(part)
                part = part[room:]
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # encoding, fileno, isatty, ...
        return getattr(self.stream, name)


def fold_long_output_lines() -> None:
    """Send stdout, stderr and the log handlers that write to them through FoldedLines."""
    streams = {}
    for name in ("stdout", "stderr"):
        original = getattr(sys, name)
        if not isinstance(original, FoldedLines):
            streams[id(original)] = FoldedLines(original)
            setattr(sys, name, streams[id(original)])
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
    for handler in (h for logger in loggers for h in getattr(logger, "handlers", [])):
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in streams:
            handler.setStream(streams[id(handler.stream)])


def topic_run_id(event: dict) -> str:
    """The instance id of the run a message starts: the same for every delivery of one CloudEvent.

    The CloudEvents spec makes `source` + `id` unique per event: a redelivery by Redis and a resend by
    another Dapr app keep both, and a plain-JSON publish gets a fresh id from the publisher's sidecar.
    Instance ids are already per app id (each app's workflows are its own actors), so the app id is left out.
    """
    key = "\n".join(str(event.get(field) or "") for field in ("pubsubname", "topic", "source", "id"))
    return "topic-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class OneRunPerMessage(subscription._StreamSubscriber):
    """dapr-agents 1.0.9's topic consumer, with one change in how a checked message becomes a run.

    Upstream (dapr_agents/workflow/utils/subscription.py, `_dispatch` -> `_schedule_standalone` ->
    `_schedule_workflow`; docs/upstream.md) runs each message in its own `asyncio.run`, schedules it with a
    fresh instance id and starts a task that waits for the run to end, which that `asyncio.run` waits for:
    the topic handles one message at a time, each until its run is over, and a redelivered message (Redis
    hands it out again when it was not acknowledged: the app died, or took over `processingTimeout`) starts
    a second run of the same task. Here the run's id comes from the message, a message whose run exists
    starts nothing, and the message is acknowledged as soon as its run is scheduled.
    """

    def _handle_message(self, pairs, topic_name, message) -> TopicEventResponse:
        # dapr-agents reads a CloudEvent's extensions into a dict of strings, and a message with another
        # value there (a number in `traceid`, written by another client of the topic) failed that read in
        # every delivery: answered RETRY, Redis handed it out again, forever, and the task never ran. Such
        # extensions are left out, with a warning, and the task runs.
        extensions = message.extensions() if isinstance(message, SubscriptionMessage) else None
        unreadable = {name: value for name, value in (extensions or {}).items() if not isinstance(value, str)}
        if unreadable:
            logger.warning("a message on the agent's topic has CloudEvent fields that are not strings, left out: %s",
                           ", ".join(f"{name}={value!r}" for name, value in sorted(unreadable.items())))
            readable = {name: value for name, value in extensions.items() if name not in unreadable}
            message.extensions = lambda: readable
        return super()._handle_message(pairs, topic_name, message)

    def _dispatch(self, binding, parsed) -> TopicEventResponse:
        run_input, event = subscription._serialize_workflow_input(parsed)
        if not (event or {}).get("id"):  # Dapr gives every message one; without it, no id to derive from
            return super()._dispatch(binding, parsed)
        instance_id = topic_run_id(event)
        try:
            # The sidecar refuses an id whose run is still going (ALREADY_EXISTS), but starts a finished
            # run (COMPLETED, FAILED, TERMINATED) again from scratch: so look first.
            existing = self.wf_client.get_workflow_state(instance_id, fetch_payloads=False)
            if existing is not None:
                # A warning: the app logs nothing quieter, and a message delivered again is worth a line.
                logger.warning("message %s on the agent's topic already has its run %s (%s): nothing started",
                               event["id"], instance_id, existing.runtime_status.name)
                return TopicEventResponse(subscription.STATUS_SUCCESS)
            self.wf_client.schedule_new_workflow(workflow=binding.handler, input=run_input, instance_id=instance_id)
        except Exception as error:
            # ALREADY_EXISTS: the run is there and still going, though the look above did not see it (another
            # delivery scheduled it meanwhile, or the sidecar, just restarted, had not loaded it yet).
            if not (isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.ALREADY_EXISTS):
                logger.exception("could not schedule the run of a message on the agent's topic; Redis will "
                                 "hand it out again")
                return TopicEventResponse(subscription.STATUS_RETRY)
            logger.warning("message %s on the agent's topic already has its run %s (RUNNING): nothing started",
                           event["id"], instance_id)
        return TopicEventResponse(subscription.STATUS_SUCCESS)  # acknowledged: its run is durable from here


class GuardedRunner(AgentRunner):
    """AgentRunner with the checks above on its HTTP route and on its topic."""

    def serve(self, agent, *, host: str = "127.0.0.1", port: int = 8001, entry_path: str = "/run", **options):
        fold_long_output_lines()
        app = FastAPI(title="Dapr Agent Service")
        app.add_middleware(TaskGuard, paths=(entry_path, entry_path + "/stream"))
        if os.environ.get("APP_API_TOKEN"):
            app.add_middleware(AppTokenCheck, token=os.environ["APP_API_TOKEN"])  # outermost: checked first
        super().serve(agent, app=app, entry_path=entry_path, **options)
        # The log level AgentRunner.serve would give uvicorn itself.
        level = logging.getLogger("dapr_agents.workflow.runners.agent").getEffectiveLevel()
        uvicorn.run(app, host=host, port=port, log_level=logging.getLevelName(level).lower())
        return app

    def _wire_pubsub_routes(self, **options) -> None:
        # dapr-agents builds its consumer inside; this is the one place to hand it OneRunPerMessage.
        library_consumer, subscription._StreamSubscriber = subscription._StreamSubscriber, OneRunPerMessage
        try:
            super()._wire_pubsub_routes(**options)
        finally:
            subscription._StreamSubscriber = library_consumer

    def _build_pubsub_specs(self, agent, config):  # dapr-agents 1.0.9's hook for the topic's routes
        return [dataclasses.replace(spec, payload_filter=accepts_message)
                for spec in super()._build_pubsub_specs(agent, config)]

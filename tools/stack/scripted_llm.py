"""An OpenAI-compatible chat server whose answers are scripted.

The tests point Dapr's real `conversation.openai` component at this server
(through the component's `endpoint` field), so every run goes through the
real sidecar while the test decides what the "model" answers, counts the
calls, holds an answer back, or makes calls fail.

It runs in a thread inside the process that uses it (`ScriptedLLM().start()`):
the test suite, `make bench`, `make images`, the crash demo. The suite's one
server hands each test a script() of its own: the calls of that test's runs, and
only those, are answered by its script and logged in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tools.stack.settings import SCRIPTED_LLM_PORT

DEFAULT_ANSWER = "Lines of logic flow,\nsilent thoughts in coded streams,\ndreams compile to life."

# dapr-agents asks for a structured summary after each run; its prompt starts so.
SUMMARY_PROMPT_PREFIX = "Summarize the following conversation"


@dataclass
class Call:
    """One request the server received."""

    messages: list[dict]
    is_summary: bool
    authorization: str  # the Authorization header the component sent: "Bearer <key>"
    answered_status: int = 0
    answered_at: float = 0.0  # time.monotonic() when the answer left
    tools: tuple[str, ...] = ()  # the names of the tools the request offered the model


class Script:
    """What the "model" answers to the calls one owner claims, and the log of those calls.

    A call belongs to the script whose key its messages mention (a test's script: the
    token that task() puts in each of its tasks, or a text it claim()ed); the server
    itself is the script of every call no other script claims. So a test that reads
    its script's calls sees only its own runs', and no other run can take its answers,
    its failures or its hold.
    """

    def __init__(self, server: ScriptedLLM, owner: str, default_answer: str = DEFAULT_ANSWER) -> None:
        self.server, self.owner = server, owner
        self.keys: list[str] = []  # the first is the token a script() gets; claim() adds texts
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._answers: list[str] = []
        self._answers_by_text: dict[str, str] = {}
        self._tool_calls_by_text: dict[str, ToolCall] = {}
        self._default_answer = default_answer
        self._failures: list[int] = []  # HTTP codes for the next calls
        self._delay_s = 0.0
        self._gate = threading.Event()
        self._gate.set()
        # Calls waiting for release(): (their event loop, the future that wakes them).
        self._held: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._in_flight = 0
        self._peak_in_flight = 0
        self._tasks_made = 0

    # -- what is this script's -------------------------------------------------
    def task(self, what: str) -> str:
        """A task text that is this script's: `what` and the script's token (and a number, so no two are equal)."""
        if not self.keys:
            raise RuntimeError("the server's own script has no token: take a script() for tasks of your own")
        with self._lock:
            self._tasks_made += 1
            return f"{what} ({self.keys[0]}-{self._tasks_made})"

    def claim(self, text: str) -> None:
        """Every call that mentions `text` is this script's too: for a task the owner cannot mark,
        such as the one-shot script's fixed "Write a haiku about programming."."""
        self.server._add_key(self, text)

    def close(self) -> None:
        """Stop routing calls to this script and release what it holds; a later call that mentions
        its token is answered by the server and listed in its late_calls."""
        self.server._retire(self)

    @property
    def endpoint(self) -> str:
        """The value for the component's `endpoint` field."""
        return self.server.endpoint

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return self.server.client_env(base)

    # -- knobs -------------------------------------------------------------
    def reset(self, default_answer: str = DEFAULT_ANSWER) -> None:
        """Forget the log and the script (answers, failures, delay); release held calls."""
        with self._lock:
            self.calls.clear()
            self._answers, self._answers_by_text, self._failures, self._delay_s = [], {}, [], 0.0
            self._tool_calls_by_text = {}
            self._default_answer = default_answer
            self._peak_in_flight = self._in_flight
        self.release()

    def answer_next(self, *answers: str) -> None:
        """Queue answers for the next task calls (summary calls are separate)."""
        with self._lock:
            self._answers.extend(answers)

    def answer_when(self, text: str, answer: str) -> None:
        """Answer every task call that mentions `text` with `answer` (also a retried one)."""
        with self._lock:
            self._answers_by_text[text] = answer

    def call_tool_when(self, text: str, name: str, arguments: dict, final: str) -> None:
        """Play a model that uses a tool: a task call that mentions `text` and holds no tool result yet
        is answered with a call of `name(**arguments)`; once the tool's result is in the messages, with
        `final`, its `{tool_result}` replaced by that result (the tool's text, or its error)."""
        call_id = "call_" + uuid.uuid5(uuid.NAMESPACE_URL, text).hex[:16]  # the same on a retried call
        with self._lock:
            self._tool_calls_by_text[text] = ToolCall(call_id, name, json.dumps(arguments), final)

    def fail_next(self, *status_codes: int) -> None:
        """Make the next calls fail with these HTTP status codes, in order."""
        with self._lock:
            self._failures.extend(status_codes)

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay_s = seconds

    def hold(self) -> None:
        """Hold every answer until release(): a run stays mid-LLM-call."""
        with self._lock:
            self._gate.clear()

    def release(self) -> None:
        with self._lock:
            self._gate.set()
            held, self._held = self._held, []
        for loop, waiter in held:
            loop.call_soon_threadsafe(lambda w=waiter: w.done() or w.set_result(None))

    @property
    def in_flight(self) -> int:
        """Calls received and not yet answered (held, delayed or being answered)."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most calls in flight at once since the last reset() or reset_peak()."""
        with self._lock:
            return self._peak_in_flight

    def reset_peak(self) -> None:
        with self._lock:
            self._peak_in_flight = self._in_flight

    def task_calls(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if not c.is_summary]

    def calls_mentioning(self, text: str) -> list[Call]:
        """Calls whose messages contain `text` (a task is identified by its words)."""
        with self._lock:
            return [c for c in self.calls if _mentions(c.messages, text)]

    # -- serving a call --------------------------------------------------------
    async def _serve(self, call: Call, body: dict, messages: list[dict]) -> JSONResponse:
        with self._lock:
            self.calls.append(call)
            failure = self._failures.pop(0) if self._failures else 0
            delay = self._delay_s
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            waiter = None
            if not self._gate.is_set():
                waiter = asyncio.get_running_loop().create_future()
                self._held.append((asyncio.get_running_loop(), waiter))
        try:
            # Held and delayed calls wait on the event loop, not in a thread: dozens can
            # wait at once (a thread each would cap them at the default pool's size).
            if waiter is not None:
                await waiter
            if delay:
                await asyncio.sleep(delay)
            return self._answer(call, body, messages, failure)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, call: Call, body: dict, messages: list[dict], failure: int) -> JSONResponse:
        call.answered_at = time.monotonic()
        if failure:
            call.answered_status = failure
            return JSONResponse(
                status_code=failure,
                content={"error": {"message": f"scripted failure {failure}", "type": "scripted"}},
            )
        if call.is_summary:
            content = json.dumps({"summary": f"The user asked: {_last_task(messages)}"})
        else:
            with self._lock:
                planned = next((plan for text, plan in self._tool_calls_by_text.items()
                                if _mentions(messages, text)), None)
            if planned is not None:
                call.answered_status = 200
                return JSONResponse(planned.completion(body.get("model") or "scripted", messages))
            with self._lock:
                content = next((answer for text, answer in self._answers_by_text.items()
                                if _mentions(messages, text)), None)
                if content is None:
                    content = self._answers.pop(0) if self._answers else self._default_answer
        call.answered_status = 200
        return JSONResponse(_completion(body.get("model") or "scripted", content))


@dataclass
class ToolCall:
    """A tool call the "model" makes (call_tool_when), and what it says once the tool answered."""

    call_id: str
    name: str
    arguments: str  # JSON, as OpenAI sends it
    final: str

    def completion(self, model: str, messages: list[dict]) -> dict:
        result = next((str(m.get("content")) for m in messages
                       if m.get("role") == "tool" and m.get("tool_call_id") == self.call_id), None)
        if result is not None:
            return _completion(model, self.final.replace("{tool_result}", result))
        answer = _completion(model, None)
        answer["choices"][0]["message"]["tool_calls"] = [
            {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}]
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return answer


class ScriptedLLM(Script):
    """The server. As a script it answers the calls that no script of script() claims:
    all of them for a tool that runs its own server (`make bench`, the crash demo)."""

    def __init__(self, host: str = "127.0.0.1", port: int = SCRIPTED_LLM_PORT) -> None:
        super().__init__(self, owner="the server")
        self.host, self.port = host, port
        self._scripts: list[Script] = []
        self._scripts_lock = threading.Lock()
        # Calls that mention the token of a script closed before they came: a run that outlived its owner.
        self.late_calls: list[tuple[str, Call]] = []
        self._closed_keys: dict[str, str] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with the LLM settings that select this server."""
        base = dict(os.environ if base is None else base)
        return {k: v for k, v in base.items() if not k.startswith("OPENAI_")} | {
            "OPENAI_BASE_URL": self.endpoint, "OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_MODEL": "scripted"}

    # -- scripts -------------------------------------------------------------
    def script(self, owner: str) -> Script:
        """A script of its own for `owner` (a test), with a fresh token as its first key; close() it when done."""
        script = Script(self, owner=owner)
        self._add_key(script, f"llm-{uuid.uuid4().hex[:8]}")
        with self._scripts_lock:
            self._scripts.append(script)
        return script

    def _retire(self, script: Script) -> None:
        with self._scripts_lock:
            if script in self._scripts:
                self._scripts.remove(script)
            # Only the token: a claimed text is no test's alone, a later run may ask it too.
            self._closed_keys.update(dict.fromkeys(script.keys[:1], script.owner))
        script.release()

    def _add_key(self, script: Script, key: str) -> None:
        with self._scripts_lock:
            taken = [other.owner for other in self._scripts if other is not script and key in other.keys]
            if taken:
                raise ValueError(f"{key!r} is already claimed by {taken[0]}")
            script.keys.append(key)
            self._closed_keys.pop(key, None)

    def _script_for(self, call: Call) -> Script:
        with self._scripts_lock:
            for script in self._scripts:
                if any(_mentions(call.messages, key) for key in script.keys):
                    return script
            late = next((owner for key, owner in self._closed_keys.items() if _mentions(call.messages, key)), None)
            if late is not None:
                self.late_calls.append((late, call))
        return self

    # -- the OpenAI-compatible API -----------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI(title="scripted LLM")

        @app.get("/health")
        def health() -> dict:
            return {"status": "ok"}

        @app.get("/v1/models")
        def models() -> dict:
            return {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "tests"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            messages = body.get("messages") or []
            first_user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
            call = Call(
                messages=messages,
                is_summary=first_user.startswith(SUMMARY_PROMPT_PREFIX),
                authorization=request.headers.get("authorization", ""),
                tools=tuple(str((t.get("function") or {}).get("name")) for t in body.get("tools") or []),
            )
            return await self._script_for(call)._serve(call, body, messages)

        return app

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> ScriptedLLM:
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="scripted-llm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"scripted LLM did not start on {self.host}:{self.port} (port taken?)")
            time.sleep(0.05)
        if self.port == 0:  # the system chose a free port
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        with self._scripts_lock:
            scripts = list(self._scripts)
        for script in [self, *scripts]:
            script.release()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def _mentions(messages: list[dict], text: str) -> bool:
    return any(text in str(m.get("content")) for m in messages)


def _last_task(messages: list[dict]) -> str:
    text = str(messages[-1].get("content", "")) if messages else ""
    return text.split("user:", 1)[-1].split("\n", 1)[0].strip()[:200]


def _completion(model: str, content: str | None) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@contextlib.contextmanager
def service_with_scripted_llm(tracing: bool = True, log_name: str = "service") -> Iterator[ScriptedLLM]:
    """The stack and the service (the README's `dapr run`), answering from a scripted LLM.

    For `make bench` and `make images`: everything it starts, it stops.
    """
    from tools.stack import commands as stack  # the stack tooling imports nothing of ours; keep it that way

    # A port of its own, so that it never meets the test suite's scripted LLM.
    llm = ScriptedLLM(port=0).start()
    try:
        with stack.service_running(llm.client_env(), tracing=tracing, log_name=log_name):
            yield llm
    finally:
        llm.stop()

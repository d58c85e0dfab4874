"""What `make run` shows a newcomer, and the one line it ends with.

`dapr run` interleaves three streams: the CLI's status lines, daprd's logs
(about a hundred info lines per start) and the app's output (prefixed
`== APP == `). All of it goes to a log file, whose path the summary names;
the terminal gets the CLI's lines, the app's output, and daprd's warnings
and errors.

One known message is folded, and only under Dapr's echo component: echo
cannot produce the JSON memory summary that dapr-agents asks for after each
run, so dapr-agents logs "LLM summarize failed … skipping memory summary"
with a traceback and carries on. That traceback becomes one line that says
so. With any other LLM the same message is shown in full, since there it
means a real problem.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

APP_PREFIX = "== APP == "
DAPRD_LOG = re.compile(r'^time="(?P<time>[^"]+)" level=(?P<level>\w+) msg="(?P<msg>(?:[^"\\]|\\.)*)"')
STARTED = re.compile(r"starting new '[^']+' instance with ID = '(?P<id>[0-9a-f]+)'")
FINISHED = re.compile(r"'[^']+' completed with a (?P<status>[A-Z]+) status")
# The Zipkin exporter of daprd complains when no Zipkin listens; `make run` starts none on purpose.
ZIPKIN_UNREACHABLE = re.compile(r"request to http://localhost:9411/api/v2/spans failed")
SUMMARY_FAILED = "LLM summarize failed for instance_id="
# What dapr-agents says just before, for the same reason.
SUMMARY_REPAIR = "JSON content required repair before parsing"
# daprd warnings every one-shot run prints, none of which is a problem here; they stay in the log.
EXPECTED_DAPRD_WARNINGS = (
    "spec.metric.http.increasedCardinality",  # a notice about a future default
    "mTLS is disabled",  # as with `dapr init`; docs/security.md shows secure mode
    "App channel is not initialized",  # the one-shot script serves no port: it only calls its sidecar
    "Graceful shutdown timeout is infinite",  # the actor runtime's default
    "Redis does not support transaction rollbacks",  # true, and docs/durability.md says what AOF covers
    "Scheduler stream disconnected: rpc error: code = Canceled",  # the sidecar stopping at the end
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class RunFacts:
    instance_id: str = ""
    status: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    answer: str = ""

    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


def _timestamp(text: str) -> datetime:
    # daprd writes nanoseconds; Python parses microseconds.
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00"))


def follow(path: Path, running: Callable[[], bool]) -> Iterator[str]:
    """The lines of the log at `path` as they are written, until `running()` is false and all is read.

    `dapr run` writes to the file, not to a pipe of ours: if we die, a pipe would
    break, and the CLI would die of it before stopping its daprd and app.
    """
    with open(path, errors="replace") as log:
        pending = ""
        while True:
            alive = running()
            chunk = log.read()
            pending += chunk
            *lines, pending = pending.split("\n")
            yield from (line + "\n" for line in lines)
            if not chunk and not alive:
                if pending:
                    yield pending
                return
            if not chunk:
                time.sleep(0.05)


def show_run(lines: Iterable[str], terminal: IO[str], echo_llm: bool) -> RunFacts:
    """The readable part of `dapr run`'s output, to `terminal`; return what it said."""
    facts = RunFacts()
    folding = False
    for line in lines:
        text = line.rstrip("\n")
        app_text = ANSI.sub("", text[len(APP_PREFIX):]) if text.startswith(APP_PREFIX) else None
        if folding:
            if app_text is not None and (app_text.startswith((" ", "Traceback")) or "Error:" not in app_text):
                continue  # the traceback's frames
            folding = False
            if app_text is not None and "Error:" in app_text:
                continue  # its last line, the exception itself
        if daprd := DAPRD_LOG.match(text):
            if started := STARTED.search(daprd["msg"]):
                facts.instance_id, facts.started_at = started["id"], _timestamp(daprd["time"])
            if finished := FINISHED.search(daprd["msg"]):
                facts.status, facts.finished_at = finished["status"], _timestamp(daprd["time"])
            if daprd["level"] in ("info", "debug") or any(w in daprd["msg"] for w in EXPECTED_DAPRD_WARNINGS):
                continue
        elif ZIPKIN_UNREACHABLE.search(text):
            continue
        elif app_text is not None and echo_llm and app_text.startswith(SUMMARY_REPAIR):
            continue
        elif app_text is not None and echo_llm and app_text.startswith(SUMMARY_FAILED):
            terminal.write(f"{APP_PREFIX}(echo cannot write the JSON memory summary dapr-agents asks for; "
                           "it skips the summary, the run goes on. Full text in the log.)\n")
            folding = True
            continue
        elif app_text is not None and app_text.startswith("{"):
            try:
                facts.answer = json.loads(app_text).get("content", "")
            except (ValueError, AttributeError):
                pass
        terminal.write(line)
        terminal.flush()
    return facts


def summary_line(facts: RunFacts, app_id: str, log_path: str) -> str:
    """One line: the answer, the run's id and duration, and how to see its history."""
    if not facts.instance_id:
        return f"no workflow run was started; the full output is in {log_path}"
    answer = " / ".join(line.strip() for line in facts.answer.strip().splitlines()[-3:] if line.strip())
    duration = facts.duration_s()
    took = f" in {duration:.2f} s" if duration is not None else ""
    return (f"run {facts.instance_id} {facts.status or 'ended'}{took}; answer: \"{answer[:160]}\"; "
            f"its history: make history ID={facts.instance_id} APP={app_id} (full output: {log_path})")

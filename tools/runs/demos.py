"""What `make crash-demo`, `make approval-demo` and `make team-demo` share: how they print each step, and how
they start, end and exit around their scripted LLM (tools/runs/crash_demo.py, approval_demo.py, team_demo.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from tools.stack.processes import StackError
from tools.stack.scripted_llm import ScriptedLLM

T = TypeVar("T")


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def clock(started: float) -> str:
    """The time since the run started, as each step is printed."""
    return f"{time.monotonic() - started:5.1f} s:"


def run_demo(demo: Callable[[ScriptedLLM], T], llm_class: type[ScriptedLLM] = ScriptedLLM,
             then: Callable[[T], None] | None = None) -> int:
    """A demo's `main`: `demo(llm)` with a scripted LLM of its own, stopped after; then `then(what demo returned)`.
    Exits 0, or 1 with the error on stderr when the stack failed (StackError). `llm_class` is the demo module's
    own ScriptedLLM, which a test may replace to keep a handle on the LLM (tests/test_crash_demo.py)."""
    llm = llm_class(port=0).start()  # a free port of its own: never the test suite's LLM
    try:
        result = demo(llm)
    except StackError as exc:
        print(f"[demo] error: {exc}", file=sys.stderr)
        return 1
    finally:
        llm.stop()
    if then is not None:
        then(result)
    say("everything the demo started is stopped")
    return 0

"""examples/approval/refund_agent.py, whose process dies by SIGKILL right after the refund tool's first
write of a refund record: the side effect is done, its activity is not (tests/test_approval.py)."""

import os
import runpy
import signal

from dapr.clients import DaprClient

MARKER = os.environ["REFUND_CRASH_MARKER"]  # once it exists, no more crashes: the restarted app goes on
save_state = DaprClient.save_state


def save_state_then_die(self, store_name, key, *args, **kwargs):
    result = save_state(self, store_name, key, *args, **kwargs)
    if key.startswith("refund:") and not os.path.exists(MARKER):
        with open(MARKER, "w") as marker:
            marker.write(key)
        os.kill(os.getpid(), signal.SIGKILL)
    return result


DaprClient.save_state = save_state_then_die
runpy.run_path("examples/approval/refund_agent.py", run_name="__main__")

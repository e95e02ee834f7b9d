"""The dispatcher as `journey serve` runs it (the outbox drained every tick to the SMTP channel, on
SQLite), alone in a process for test_kill_loop.py to SIGKILL, with a lease of seconds rather than a
minute so a killed process's claims come back within the test:

    python -m tests.dispatch_process DB SMTP_PORT LEASE_SECONDS
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from adapters.channels.email_smtp import SmtpChannel
from adapters.scheduling.apscheduler import drain
from adapters.scheduling.dispatcher import Dispatcher, RetryPolicy
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine

WORKSPACE = Path(__file__).parent / "workspaces" / "basic"
TICK = 0.05  # seconds between rounds when the outbox has nothing due, as `journey serve`'s tick


def main(db: str, smtp_port: int, lease: float) -> None:
    compiled = load_workspace(WORKSPACE)
    store = SqlStore(f"sqlite:///{db}", defaults=dict(compiled.metrics.defaults), upgrade=False)
    channel = SmtpChannel(host="127.0.0.1", port=smtp_port, sender="hello@example.com")
    # a failed send (none is expected) comes back within the test, not after the default 30 s
    # the outbox was filled at a past instant (test_kill_loop.T0): its sends must not expire here
    dispatcher = Dispatcher(store, Engine(compiled, send_expiry=None), {"email": channel}, lease=lease,
                            retry=RetryPolicy(base=lease / 4))
    while True:
        if not drain(lambda: sum(dispatcher.run_once().values())):
            time.sleep(TICK)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))

"""Sends per second of the outbox dispatcher on SQLite, to compare two versions of the code A/B.

    python tests/dispatch_bench.py --ab /tmp/before /work/wt-dispatch --rounds 5 --sends 2000

alternates the two source trees (each run in a fresh process with that tree first on PYTHONPATH), with
the console channel and with a real SMTP server (aiosmtpd, in a process of its own), and prints the
median sends/s of each. Without `--ab` it measures the code it is imported with, once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

WORKSPACE = Path(__file__).parent / "workspaces" / "basic"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # in the past, and daytime in the workspace's zone: every send is due


def measure(channel_kind: str, sends: int, smtp_port: int) -> dict[str, float]:
    """Fill a fresh database with `sends` due welcome emails, then time the dispatcher draining them."""
    from adapters.channels.console import ConsoleChannel
    from adapters.channels.email_smtp import SmtpChannel
    from adapters.scheduling.dispatcher import Dispatcher
    from adapters.storage.sql import SqlStore
    from journey_engine.compiler import load_workspace
    from journey_engine.engine import Engine
    from journey_engine.events import Event
    from journey_engine.runtime import Runtime

    compiled = load_workspace(WORKSPACE)
    with tempfile.TemporaryDirectory() as folder:
        store = SqlStore(f"sqlite:///{folder}/bench.db", defaults=dict(compiled.metrics.defaults))
        engine = Engine(compiled, send_expiry=None)  # filled at a past instant: nothing may expire
        runtime = Runtime(engine, store, claim=500)
        for start in range(0, sends, 500):
            users = [f"u{i}" for i in range(start, min(sends, start + 500))]
            runtime.process([e for u in users for e in (
                Event(type="identify", user_id=u, traits={"email": f"{u}@example.com"}, timestamp=T0),
                Event(type="track", user_id=u, name="Signed Up", timestamp=T0))], T0)
        channel = (ConsoleChannel(io.StringIO()) if channel_kind == "console" else
                   SmtpChannel(host="127.0.0.1", port=smtp_port, sender="hello@example.com"))
        dispatcher = Dispatcher(store, engine, {"email": channel})
        began = time.perf_counter()
        done = 0
        while n := sum(dispatcher.run_once().values()):
            done += n
        seconds = time.perf_counter() - began
        store.close()
    return {"sends": done, "seconds": seconds, "per_s": done / seconds}


def ab(trees: list[str], rounds: int, sends: int) -> None:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
                               "-c", "aiosmtpd.handlers.Sink"])
    try:
        _wait_for_port(port)
        results: dict[tuple[str, str], list[float]] = {}
        for r in range(rounds):
            for kind in ("console", "smtp"):
                for tree in trees if r % 2 == 0 else reversed(trees):  # alternate which goes first
                    out = subprocess.run([sys.executable, __file__, "--channel", kind, "--sends", str(sends),
                                          "--smtp-port", str(port)], env={**os.environ, "PYTHONPATH": tree},
                                         check=True, capture_output=True, text=True).stdout
                    per_s = json.loads(out.splitlines()[-1])["per_s"]
                    results.setdefault((kind, tree), []).append(per_s)
                    print(f"round {r} {kind:7} {tree}: {per_s:.0f} sends/s", flush=True)
        for (kind, tree), values in sorted(results.items()):
            print(f"{kind:7} {tree}: median {statistics.median(values):.0f} sends/s "
                  f"(runs: {', '.join(f'{v:.0f}' for v in values)})")
    finally:
        server.terminate()
        server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the SMTP server did not start")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ab", nargs="+", metavar="TREE", help="source trees to compare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--channel", choices=("console", "smtp"), default="console")
    parser.add_argument("--smtp-port", type=int, default=0)
    args = parser.parse_args()
    if args.ab:
        ab(args.ab, args.rounds, args.sends)
    else:
        print(json.dumps(measure(args.channel, args.sends, args.smtp_port)))

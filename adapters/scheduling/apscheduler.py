"""APScheduler 3 in `journey serve`: a handful of interval jobs that claim due work from the store in
batches — timers and time-driven segments, the outbox dispatcher, pruning. Never a job per user or per
message, and nothing that lives only in the scheduler's memory: kill the process at any moment and the
next start finds every due timer and send in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("journey.scheduler")

# The defaults drop work silently: a short misfire_grace_time drops most of a burst (docs/performance.md).
JOB_DEFAULTS = {"misfire_grace_time": None, "coalesce": True, "max_instances": 1}


def drain(step: Callable[[], int], rounds: int = 50) -> int:
    """Run `step` until it reports nothing left (or `rounds` times, so one job never runs forever)."""
    total = 0
    for _ in range(rounds):
        done = step()
        total += done
        if not done:
            break
    return total


class Jobs:
    """The scheduler of one app: built when started, so an app can start, stop and start again."""

    def __init__(self, build: Callable[[], BackgroundScheduler]) -> None:
        self._build = build
        self._scheduler: BackgroundScheduler | None = None

    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = self._build()
            self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None


def build_scheduler(*, timers: Callable[[], Any], dispatch: Callable[[], int], prune: Callable[[], Any],
                    tick: float = 1.0) -> Jobs:
    return Jobs(lambda: _scheduler(timers, dispatch, prune, tick))


def _scheduler(timers: Callable[[], Any], dispatch: Callable[[], int], prune: Callable[[], Any],
               tick: float) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(job_defaults=JOB_DEFAULTS, timezone=UTC)
    scheduler.add_job(_guard(timers, "timers"), "interval", seconds=tick, id="timers",
                      next_run_time=datetime.now(UTC))
    scheduler.add_job(_guard(lambda: drain(dispatch), "dispatch"), "interval", seconds=tick, id="dispatch",
                      next_run_time=datetime.now(UTC))
    # soon after start too: a server restarted more often than hourly must still prune
    scheduler.add_job(_guard(prune, "prune"), "interval", hours=1, id="prune",
                      next_run_time=datetime.now(UTC) + timedelta(minutes=1))
    return scheduler


def _guard(job: Callable[[], Any], name: str) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:  # the next round retries; the work is still in the store
            log.exception("%s job failed", name)

    run.__name__ = name
    return run

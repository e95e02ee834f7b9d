"""APScheduler in `journey serve` (issue 4): a handful of interval jobs, none per user or message, with the
settings that keep a burst from being dropped (NOTES.md: the defaults drop 61% of one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.scheduling.apscheduler import build_scheduler, drain


def test_three_jobs_that_never_drop_a_misfire() -> None:
    """timers, dispatch and prune; misfire_grace_time=None, coalesce, one instance each; all start soon."""
    jobs = build_scheduler(timers=lambda: None, dispatch=lambda: 0, prune=lambda: None, tick=60)
    jobs.start()
    try:
        scheduler = jobs._scheduler
        assert scheduler is not None
        found = {job.id: job for job in scheduler.get_jobs()}
        assert set(found) == {"timers", "dispatch", "prune"}
        now = datetime.now(UTC)
        for job in found.values():
            assert (job.misfire_grace_time, job.coalesce, job.max_instances) == (None, True, 1)
            assert job.next_run_time is not None and job.next_run_time <= now + timedelta(minutes=2)
    finally:
        jobs.stop()


def test_drain_runs_a_step_until_it_reports_nothing_left_or_the_round_limit() -> None:
    """One job run empties what is due, but never loops forever."""
    left = [3, 2, 0, 5]
    assert drain(lambda: left.pop(0)) == 5
    assert drain(lambda: 1, rounds=4) == 4

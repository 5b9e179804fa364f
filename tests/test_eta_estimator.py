"""The pure ETA maths: percentiles, bounded state, the history/pace blend."""

import json
import math
import random

import pytest

from app.domain import estimator as est


def _linear_marks(duration_ms: float) -> dict[str, int]:
    return {str(d): round(duration_ms * d / 100) for d in est.DECILES}


def _digest_of(durations: list[float], marks=_linear_marks) -> dict:
    digest = est.empty_digest()
    for duration in durations:
        est.record(digest, round(duration), marks(duration))
    return digest


def _history(digest: dict) -> est.History:
    return est.history_of(int(digest["n"]), digest, None, None)


def test_percentiles_of_known_durations_are_within_one_percent():
    digest = _digest_of([s * 1000 for s in range(1, 101)])  # 1 s .. 100 s
    assert est.percentile(digest, 0.5) == pytest.approx(50_000, rel=0.01)
    assert est.percentile(digest, 0.95) == pytest.approx(95_000, rel=0.01)
    assert est.percentile(digest, 1.0) == pytest.approx(100_000, rel=0.01)
    assert est.percentile(est.empty_digest(), 0.5) is None


def test_percentile_of_a_skewed_sample():
    # 90 fast jobs and 10 very slow ones: the median stays fast, p95 sees the slow tail.
    digest = _digest_of([2_000] * 90 + [600_000] * 10)
    assert est.percentile(digest, 0.5) == pytest.approx(2_000, rel=0.01)
    assert est.percentile(digest, 0.95) == pytest.approx(600_000, rel=0.01)


def test_state_stays_bounded_however_many_jobs_complete():
    rng = random.Random(1)
    digest = est.empty_digest()
    for _ in range(20_000):
        duration = rng.lognormvariate(math.log(60_000), 2.0)
        est.record(digest, round(duration), _linear_marks(duration))
    est.record(digest, 10**15, None)  # far beyond the last bucket
    est.record(digest, 0, None)
    assert digest["n"] == 20_002
    assert len(digest["h"]) <= est.MAX_BUCKET + 1
    assert set(digest["c"]) <= {str(d) for d in est.DECILES}
    assert len(json.dumps(digest)) < 40_000
    assert est.bucket_of(10**15) == est.MAX_BUCKET
    assert sum(digest["h"].values()) == 20_002


def test_buckets_are_monotone_and_tight():
    previous = -1
    for value in (1, 2, 3, 10, 999, 1000, 1001, 60_000, 86_400_000):
        index = est.bucket_of(value)
        assert index >= previous
        previous = index
        assert est.bucket_value(index) == pytest.approx(value, rel=0.02)


def test_without_any_history_the_estimate_is_the_plain_rule():
    empty = est.History(0)
    assert est.remaining(empty, 0, 0) is None
    assert est.remaining(empty, 30, 0) is None
    estimate = est.remaining(empty, 25, 10_000)
    assert estimate is not None and not estimate.from_history
    assert estimate.remaining_ms == pytest.approx(est.plain_remaining(25, 10_000))
    assert est.plain_remaining(25, 10_000) == pytest.approx(30_000)


def test_a_given_duration_is_the_estimate_before_progress_and_fades_as_progress_grows():
    guess = est.history_of(0, None, None, 100_000)
    start = est.remaining(guess, 0, 0)
    assert start is not None and start.remaining_ms == pytest.approx(100_000)
    assert not start.from_history
    # The job runs twice as slowly as guessed: pace says 200 s total.
    early = est.remaining(guess, 10, 20_000)
    late = est.remaining(guess, 90, 180_000)
    plain_early, plain_late = est.plain_remaining(10, 20_000), est.plain_remaining(90, 180_000)
    assert early is not None and late is not None
    assert early.remaining_ms < plain_early  # early: mostly the guess
    assert late.remaining_ms == pytest.approx(plain_late, rel=0.1)  # late: mostly the pace


def test_history_needs_five_completions():
    four = _digest_of([60_000] * 4)
    assert not est.history_of(4, four, None, None).learned
    assert est.remaining(est.history_of(4, four, None, None), 0, 0) is None
    five = _digest_of([60_000] * 5)
    history = est.history_of(5, five, None, 10_000)
    assert history.learned and history.confidence == pytest.approx(0.1)
    estimate = est.remaining(history, 0, 0)
    assert estimate is not None and estimate.from_history
    assert estimate.remaining_ms == pytest.approx(60_000, rel=0.01)


def test_a_noisy_early_pace_leans_on_history():
    rng = random.Random(3)

    def noisy_marks(duration: float) -> dict[str, int]:
        # Early deciles are reached at very uneven times, late ones almost on schedule.
        return {
            str(d): round(duration * min(0.99, d / 100 * math.exp(rng.gauss(0, (100 - d) / 100))))
            for d in est.DECILES
        }

    durations = [60_000 * math.exp(rng.gauss(0, 0.3)) for _ in range(40)]
    digest = _digest_of(durations, noisy_marks)
    history = _history(digest)
    # 10 % after 30 s looks like a 300 s job; history says about 60 s.
    estimate = est.remaining(history, 10, 30_000)
    assert estimate is not None
    plain = est.plain_remaining(10, 30_000)
    assert estimate.remaining_ms < 0.6 * plain
    assert estimate.remaining_ms > 0.3 * 60_000  # but not blindly the 54 s history says
    # At 90 % the observed pace dominates.
    late = est.remaining(history, 90, 150_000)
    assert late is not None
    assert late.remaining_ms == pytest.approx(est.plain_remaining(90, 150_000), rel=0.35)


def test_a_learned_slow_start_curve_corrects_the_pace():
    # Every job spends half its time reaching 10 %, then runs evenly.
    def marks(duration: float) -> dict[str, int]:
        return {str(d): round(duration * (0.5 + 0.5 * (d - 10) / 90)) for d in est.DECILES}

    rng = random.Random(4)
    digest = _digest_of([60_000 * math.exp(rng.gauss(0, 0.2)) for _ in range(30)], marks)
    pace = est.pace_at(_history(digest), 10)
    assert math.exp(pace.log_fraction) == pytest.approx(0.5, rel=0.05)
    estimate = est.remaining(_history(digest), 10, 30_000)  # on schedule for 60 s
    assert estimate is not None
    assert estimate.remaining_ms == pytest.approx(30_000, rel=0.15)
    assert est.plain_remaining(10, 30_000) == pytest.approx(270_000)


def test_history_follows_a_workflow_that_became_slower():
    digest = _digest_of([60_000] * 30 + [150_000] * 30)
    assert math.exp(digest["lm"]) == pytest.approx(150_000, rel=0.05)
    assert est.percentile(digest, 0.5) == pytest.approx(60_000, rel=0.01)  # all-time stats


def test_weights_stay_between_zero_and_one():
    rng = random.Random(5)
    digest = _digest_of([rng.lognormvariate(11, 1.0) for _ in range(60)])
    history = _history(digest)
    assert history.prior_mse is not None
    for progress in (1, 5, 10, 33, 50, 77, 99):
        pace = est.pace_at(history, progress)
        assert 0.0 <= est.pace_weight(history, pace) <= 1.0
        estimate = est.remaining(history, progress, 10_000)
        assert estimate is not None and estimate.remaining_ms >= 0
    assert est.remaining(history, 100, 10_000) == est.Estimate(0.0, False)


def test_milestones_interpolate_between_updates_and_keep_first_crossings():
    state = est.milestones_after(None, 0, 25, 0, 10_000)
    assert state == {"m": {"10": 4_000, "20": 8_000}}
    state = est.milestones_after(state, 25, 45, 10_000, 20_000)
    assert state["m"]["30"] == 12_500 and state["m"]["40"] == 17_500
    again = est.milestones_after(state, 45, 15, 20_000, 30_000)  # progress went back
    assert again == state

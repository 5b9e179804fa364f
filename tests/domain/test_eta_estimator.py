"""The pure ETA maths on synthetic histories: percentiles, bounded state, the forecasts, their
blend and the calibrated confidence."""

import json
import math
import random
from collections.abc import Callable

import pytest

from app.domain import estimator as est

Shape = Callable[[float], float]  # share of the duration elapsed at a progress of p (0..1)


def _even(p: float) -> float:
    return p


def _marks(duration_ms: float, shape: Shape = _even) -> dict[str, int]:
    return {str(d): round(duration_ms * shape(d / 100)) for d in est.DECILES}


def _learn(digest: dict, duration: float, shape: Shape = _even, wait_ms: float = 0.0) -> None:
    """One job of the key, as the service runs it: at creation and at the first update of
    each decile it is shown an estimate (whose forecasts it keeps); then it completes."""
    marks = _marks(duration, shape)
    history = est.history_of(int(digest["n"]), digest, None, None)
    forecasts = {}
    points = [("0", 0, 0)] + [(str(d), d, marks[str(d)]) for d in est.DECILES]
    for band, progress, elapsed in points:
        estimate = est.remaining(history, progress, elapsed)
        entry = est.forecast_entry(history, estimate, progress, elapsed)
        if entry is not None:
            forecasts[band] = entry
    est.record(digest, round(duration), marks, wait_ms, forecasts)


def _digest_of(durations: list[float], shape: Shape = _even) -> dict:
    digest = est.empty_digest()
    for duration in durations:
        _learn(digest, duration, shape)
    return digest


def _history(digest: dict) -> est.History:
    return est.history_of(int(digest["n"]), digest, None, None)


def _left(history: est.History, progress: float, elapsed_ms: float) -> float:
    estimate = est.remaining(history, progress, elapsed_ms)
    assert estimate is not None
    return estimate.remaining_ms


# --- statistics ------------------------------------------------------------------------


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
    for _ in range(1_000):
        _learn(digest, rng.lognormvariate(math.log(60_000), 2.0))
    est.record(digest, 10**15, None)  # far beyond the last bucket
    est.record(digest, 0, None)
    assert digest["n"] == 1_002
    assert len(digest["h"]) <= est.MAX_BUCKET + 1
    assert len(digest["r"]) == est.RESERVOIR
    assert set(digest["s"]) <= {str(d) for d in est.SCORED_AT}
    assert len(json.dumps(digest)) < 40_000
    assert est.bucket_of(10**15) == est.MAX_BUCKET
    assert sum(digest["h"].values()) == 1_002


def test_buckets_are_monotone_and_tight():
    previous = -1
    for value in (1, 2, 3, 10, 999, 1000, 1001, 60_000, 86_400_000):
        index = est.bucket_of(value)
        assert index >= previous
        previous = index
        assert est.bucket_value(index) == pytest.approx(value, rel=0.02)


def test_a_digest_from_before_profiles_keeps_its_histogram_and_learns_again():
    old = {"v": 1, "h": {"500": 7}, "n": 7, "lm": 11.0, "lv": 0.1, "c": {"10": [0, 0, 9]}}
    # Until it has 5 profiles, its moving mean (e^11 ms, about 60 s) is a guess: an
    # estimate, without a confidence.
    before = est.remaining(est.history_of(7, old, None, None), 0, 0)
    assert before is not None and before.remaining_ms == pytest.approx(math.exp(11.0))
    assert before.confidence is None
    est.record(old, 60_000, _marks(60_000))
    assert old["v"] == 2 and old["n"] == 8 and "c" not in old
    assert sum(old["h"].values()) == 8 and len(old["r"]) == 1
    assert old["lm"] == pytest.approx(11.0 + (math.log(60_000) - 11.0) / 8)
    assert not est.history_of(8, old, None, None).learned  # 1 profile: not yet


def test_milestones_interpolate_between_updates_and_keep_first_crossings():
    state = est.milestones_after({"b": 5}, 0, 25, 0, 10_000)
    assert state == {"b": 5, "m": {"10": 4_000, "20": 8_000}}
    state = est.milestones_after(state, 25, 45, 10_000, 20_000)
    assert state["m"]["30"] == 12_500 and state["m"]["40"] == 17_500
    again = est.milestones_after(state, 45, 15, 20_000, 30_000)  # progress went back
    assert again == state


# --- a cold type -----------------------------------------------------------------------


def test_a_cold_type_uses_the_plain_rule():
    empty = est.History(0)
    assert est.remaining(empty, 0, 0) is None
    assert est.remaining(empty, 30, 0) is None
    estimate = est.remaining(empty, 25, 10_000)
    assert estimate is not None and not estimate.from_history
    assert estimate.confidence is None
    assert estimate.remaining_ms == pytest.approx(est.plain_remaining(25, 10_000))
    assert est.plain_remaining(25, 10_000) == pytest.approx(30_000)


def test_a_given_duration_is_the_estimate_before_progress_and_fades_as_progress_grows():
    guess = est.history_of(0, None, None, 100_000)
    start = est.remaining(guess, 0, 0)
    assert start is not None and start.remaining_ms == pytest.approx(100_000)
    assert not start.from_history
    # The job runs twice as slowly as guessed: pace says 200 s total.
    plain_early, plain_late = est.plain_remaining(10, 20_000), est.plain_remaining(90, 180_000)
    assert _left(guess, 10, 20_000) < plain_early  # early: mostly the guess
    assert _left(guess, 90, 180_000) == pytest.approx(plain_late, rel=0.1)  # late: the pace


def test_history_needs_five_completions():
    four = _digest_of([60_000] * 4)
    assert not est.history_of(4, four, None, None).learned
    assert est.remaining(est.history_of(4, four, None, None), 0, 0) is None
    five = _digest_of([60_000] * 5)
    history = est.history_of(5, five, None, 10_000)
    assert history.learned
    estimate = est.remaining(history, 0, 0)
    assert estimate is not None and estimate.from_history
    assert estimate.remaining_ms == pytest.approx(60_000, rel=0.01)
    # Jobs 3-5 were scored before they were learned from (2+ profiles): all within 20 %,
    # shrunk by two pseudo-observations at 1/2.
    assert estimate.confidence == pytest.approx((3 + 1) / (3 + 2))


# --- the shape of a type ---------------------------------------------------------------


def test_a_steady_type_follows_the_plain_rule():
    # Evenly paced jobs of very different lengths: the pace is exact, history is not.
    rng = random.Random(2)
    history = _history(_digest_of([rng.lognormvariate(math.log(60_000), 0.6) for _ in range(40)]))
    for progress, elapsed in ((10, 3_000), (10, 30_000), (50, 40_000), (90, 200_000)):
        plain = est.plain_remaining(progress, elapsed)
        assert _left(history, progress, elapsed) == pytest.approx(plain, rel=0.05)
    # The measured errors chose: the rule's is the smallest at 10 %, history's far larger.
    model = history.model
    assert model is not None
    assert model.mse(10, "rate") < model.mse(10, "history") / 10


def test_a_multi_modal_type_follows_the_jobs_own_size_early():
    # Half the jobs take about 20 s, half about 120 s (one jobType, two kinds of input).
    rng = random.Random(3)
    sizes = [rng.choice((20_000, 120_000)) * math.exp(rng.gauss(0, 0.1)) for _ in range(40)]
    history = _history(_digest_of(sizes))
    typical = math.exp(history.log_mean or 0)
    assert 30_000 < typical < 90_000  # the key's mean total fits neither kind of job
    # At 10 % a small job has run about 2 s, a large one about 12 s; each gets its own size.
    assert _left(history, 10, 2_000) == pytest.approx(18_000, rel=0.15)
    assert _left(history, 10, 12_000) == pytest.approx(108_000, rel=0.15)
    # Before any progress a job that outlived the small kind is expected to be large.
    assert _left(history, 0, 40_000) == pytest.approx(120_000 - 40_000, rel=0.2)
    # No jump between consecutive updates of a small job: 10 % then 12 %.
    assert _left(history, 12, 2_400) == pytest.approx(_left(history, 10, 2_000) - 400, rel=0.1)


def test_a_noisy_early_pace_is_shrunk_towards_jobs_that_ran_alike():
    # Two sizes again, but the share of a job's time spent reaching 10 % varies (±35 %):
    # at 10 % the plain rule extrapolates that noise, the jobs that ran alike do not.
    rng = random.Random(11)

    def noisy() -> Shape:
        early = 0.1 * math.exp(rng.gauss(0, 0.35))
        return lambda p: early * p / 0.1 if p <= 0.1 else early + (1 - early) * (p - 0.1) / 0.9

    digest = est.empty_digest()
    for _ in range(40):
        _learn(digest, rng.choice((20_000, 120_000)) * math.exp(rng.gauss(0, 0.1)), noisy())
    history = _history(digest)
    # A small job (about 20 s) that was slow to reach 10 %: 3 s. The rule says 27 s left.
    estimate = est.remaining(history, 10, 3_000)
    assert estimate is not None and estimate.forecasts is not None
    assert math.exp(estimate.forecasts["peers"]) == pytest.approx(18_000, rel=0.1)
    assert 18_000 < estimate.remaining_ms < 0.92 * est.plain_remaining(10, 3_000)
    # A large job (about 120 s) that was slow: 16 s at 10 %. The rule says 144 s left.
    assert 108_000 < _left(history, 10, 16_000) < 0.9 * est.plain_remaining(10, 16_000)
    # The completions measured it: at 10 % the peers' error is below the rule's.
    model = history.model
    assert model is not None and model.mse(10, "peers") < model.mse(10, "rate")


def test_a_learned_slow_start_profile_corrects_the_pace():
    # Every job spends half its time reaching 10 %, then runs evenly.
    def slow(p: float) -> float:
        return 0.5 * p / 0.1 if p <= 0.1 else 0.5 + 0.5 * (p - 0.1) / 0.9

    rng = random.Random(4)
    history = _history(_digest_of([60_000 * math.exp(rng.gauss(0, 0.2)) for _ in range(30)], slow))
    assert _left(history, 10, 30_000) == pytest.approx(30_000, rel=0.15)  # on schedule for 60 s
    assert est.plain_remaining(10, 30_000) == pytest.approx(270_000)
    model = history.model
    assert model is not None and model.mse(10, "rate") > 10 * model.mse(10, "shape")


def test_estimates_stay_finite_and_non_negative():
    rng = random.Random(5)
    history = _history(_digest_of([rng.lognormvariate(11, 1.0) for _ in range(60)]))
    for progress in (0, 1, 5, 10, 33, 50, 77, 99):
        for elapsed in (0, 1, 10_000, 10**9):
            estimate = est.remaining(history, progress, elapsed)
            assert estimate is not None and 0 <= estimate.remaining_ms < math.inf
            assert estimate.confidence is not None and 0 < estimate.confidence < 1
    assert est.remaining(history, 100, 10_000) == est.Estimate(0.0, False)


def test_a_pending_job_adds_the_types_queue_wait():
    digest = est.empty_digest()
    for _ in range(10):
        _learn(digest, 60_000, wait_ms=15_000)
    history = _history(digest)
    assert history.wait_ms == pytest.approx(15_000)
    assert _left(history, 0, 0) == pytest.approx(60_000, rel=0.01)
    pending = est.remaining(history, 0, 0, pending=True)
    assert pending is not None and pending.remaining_ms == pytest.approx(75_000, rel=0.01)


# --- confidence --------------------------------------------------------------------------


def _confidence(digest: dict, progress: float = 0, elapsed_ms: float = 0) -> float:
    estimate = est.remaining(_history(digest), progress, elapsed_ms)
    assert estimate is not None and estimate.confidence is not None
    return estimate.confidence


def test_confidence_rises_with_consistency():
    rng = random.Random(6)
    digest = est.empty_digest()
    seen = []
    for n in range(1, 31):
        _learn(digest, 60_000 * math.exp(rng.gauss(0, 0.03)))
        if n >= est.HISTORY_MIN:
            seen.append(_confidence(digest))
    assert seen == sorted(seen)  # every consistent job raises it
    assert seen[0] <= 0.8 and seen[-1] > 0.9


def test_confidence_falls_with_spread():
    rng = random.Random(7)
    narrow = _digest_of([60_000 * math.exp(rng.gauss(0, 0.05)) for _ in range(40)])
    wide = _digest_of([60_000 * math.exp(rng.gauss(0, 0.8)) for _ in range(40)])
    assert _confidence(narrow) > 0.85
    assert _confidence(wide) < 0.4
    # A spread that shows: a consistent key whose jobs start to vary loses confidence.
    for _ in range(20):
        _learn(narrow, 60_000 * math.exp(rng.gauss(0, 0.8)))
    assert _confidence(narrow) < 0.5


def test_confidence_at_a_progress_reflects_the_pace_errors_there():
    # Jobs whose pace is erratic early but steady late: low confidence at 10 %, high at 80 %.
    rng = random.Random(8)

    def erratic() -> Shape:
        early = min(0.6, 0.1 * math.exp(rng.gauss(0, 0.8)))
        return lambda p: early * p / 0.1 if p <= 0.1 else early + (1 - early) * (p - 0.1) / 0.9

    digest = est.empty_digest()
    for _ in range(40):
        _learn(digest, 60_000 * math.exp(rng.gauss(0, 0.5)), erratic())
    early, late = _confidence(digest, 10, 6_000), _confidence(digest, 80, 50_000)
    assert early < 0.4 and late > 0.6


def test_confidence_is_calibrated_on_fresh_jobs():
    # What a key with lognormal durations claims before progress, against how often a fresh
    # job of the same population then lands within the tolerance.
    rng = random.Random(9)
    digest = est.empty_digest()
    claimed, landed = [], []
    for n in range(400):
        duration = 60_000 * math.exp(rng.gauss(0, 0.3))
        if n >= 50:
            estimate = est.remaining(_history(digest), 0, 0)
            assert estimate is not None and estimate.confidence is not None
            claimed.append(estimate.confidence)
            error = abs(estimate.remaining_ms - duration) / duration
            landed.append(1.0 if error <= est.TOLERANCE else 0.0)
        _learn(digest, duration)
    assert sum(claimed) / len(claimed) == pytest.approx(sum(landed) / len(landed), abs=0.08)


def test_a_completion_scores_the_forecasts_its_job_was_shown():
    digest = _digest_of([60_000] * 6)
    before = dict(digest["s"]["50"])
    # Shown at 50 % after 30 s: rate 30 s left (right), history 60 s left (wrong).
    shown = [30_000, math.log(30_000), {"rate": math.log(30_000), "history": math.log(60_000)}]
    junk = {"20": "not a forecast", "55": shown, "90": [1, 2]}
    est.record(digest, 60_000, _marks(60_000), 0.0, {"50": shown, **junk})
    after = digest["s"]["50"]
    assert after["rate"][1] == before["rate"][1] + 1 and after["rate"][0] <= before["rate"][0]
    assert after["history"][0] > before["history"][0]  # (log 2)^2 joined its moving mean
    assert after["hit"][1] == before["hit"][1] + 1
    assert after["shape"] == before["shape"]  # not shown: not scored
    assert digest["s"]["20"] == _digest_of([60_000] * 6)["s"]["20"]  # junk ignored


# --- cost: a key's fitted model is reused until its next completion ----------------------


def test_the_fitted_model_is_reused_until_the_key_learns_again():
    digest = _digest_of([60_000 * (1 + i % 3 / 10) for i in range(12)])
    first = _history(digest).model
    assert first is not None and _history(json.loads(json.dumps(digest))).model is first
    before = _left(_history(digest), 40, 20_000)
    after_start = _left(_history(digest), 0, 0)
    # The same statistics without a version (as stored before versions): same estimate.
    unversioned = {k: v for k, v in digest.items() if k != "t"}
    uncached = _history(unversioned).model
    assert uncached is not None and uncached is not first
    assert _left(_history(unversioned), 40, 20_000) == pytest.approx(before, rel=1e-12)
    # Two readers folding the same pending completion into the stored statistics (whose
    # keys PostgreSQL may hand back in another order) reach one version, one model.
    stored = json.loads(json.dumps(digest))
    reordered = json.loads(json.dumps(digest))
    reordered["s"] = dict(reversed(list(reordered["s"].items())))
    for copy in (stored, reordered):
        est.record(copy, 65_000, _marks(65_000), 0.0, None)
    assert stored["t"] == reordered["t"] != digest["t"]
    assert _history(stored).model is _history(reordered).model
    # A completion renews the version: the next write fits the model again and sees it.
    version = digest["t"]
    for _ in range(20):
        _learn(digest, 240_000)
    assert digest["t"] != version
    assert _history(digest).model is not first
    assert _left(_history(digest), 0, 0) == pytest.approx(240_000, rel=0.01)
    assert _left(_history(digest), 0, 0) > 3 * after_start


def test_a_version_names_the_whole_digest():
    """Each process keeps digests by key and version (``app.db.eta_digests``): digests that
    reach one version from one completion hold the same content, whatever they held before
    it; digests that differed before it differ in version after it."""
    digest = _digest_of([60_000 * (1 + i % 3 / 10) for i in range(12)])
    unversioned = {k: v for k, v in digest.items() if k != "t"}
    # Statistics from before versions with the same profiles and scores but another
    # histogram and moving mean (one more completion of another length counted).
    other = json.loads(json.dumps(unversioned))
    other["h"] = {**other["h"], "1": 1}
    other["n"] += 1
    other["lm"] += 0.5
    same = json.loads(json.dumps(unversioned))
    for d in (unversioned, other, same):
        est.record(d, 65_000, _marks(65_000), 12.0004, None)
    assert unversioned["t"] != other["t"]
    assert unversioned["t"] == same["t"] and unversioned == same
    # A queue wait is kept to the precision the version hashes: one version, one content.
    first, close = est.empty_digest(), est.empty_digest()
    est.record(first, 65_000, _marks(65_000), 0.0, None)
    est.record(close, 65_000, _marks(65_000), 0.00049, None)
    assert first["t"] == close["t"] and first == close

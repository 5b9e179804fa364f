"""Pure ETA maths: bounded per-key duration statistics and the remaining-time estimate.

Nothing here touches the database or the clock; ``app.domain.eta`` feeds it rows and times.

State per ETA key (the ``eta_stats.digest`` jsonb), all of fixed maximum size:
- ``h``: a log-bucketed histogram of durations (bucket ratio ``GAMMA``, so every percentile
  is within about 1 % of the true value; at most ``MAX_BUCKET + 1`` buckets, in practice a
  few dozen), giving p50/p95 over all completions since the last reset;
- ``lm``/``lv``: an exponentially weighted mean and variance of log(duration), so that the
  estimate follows a workflow whose speed changed instead of averaging over its whole past;
- ``c``: the learned progress curve: for each decile of progress (10 %, ..., 90 %), the
  weighted mean and variance of log(fraction of the duration elapsed when it was reached),
  plus the scored error of the pace forecast made there and its covariance with the
  history forecast's error (``pe``), which set the blending weights.

Per job (``jobs.eta_state``) we keep the elapsed milliseconds at which each decile was
first reached, so a completion can teach the key its curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GAMMA = 1.02
_LOG_GAMMA = math.log(GAMMA)
MAX_BUCKET = 1200  # GAMMA**1200 ms is about 243 days: longer durations share the last bucket
DECILES = tuple(range(10, 100, 10))
HISTORY_MIN = 5  # completions needed before history is trusted (CONTRACT.md, "use 5")
FULL_CONFIDENCE = 50
# Weight of the newest sample in the moving statistics once a key has this many samples:
# 1/n (a plain average) until then, so early history is not dominated by one job.
_EW_WINDOW = 10
_ERR_WINDOW = 20
_MIN_FRACTION = 1e-3  # a decile reached "instantly" still counts as 0.1 % of the duration

# Assumed uncertainties where nothing has been learned yet (variances of log-duration):
# a caller's estimatedDuration is a guess (about +-50 %), and the plain rate rule's
# extrapolation error shrinks as progress grows, as (100 - p) / p.
_GUESS_VAR = 0.25
_PLAIN_RATE_VAR = 0.25
_VAR_FLOOR = 0.0025  # never trust one source completely (5 % in log terms)


# --- per-key statistics ----------------------------------------------------------------


def empty_digest() -> dict[str, Any]:
    return {"v": 1, "h": {}, "n": 0, "lm": 0.0, "lv": 0.0, "c": {}}


def bucket_of(duration_ms: int) -> int:
    """The histogram bucket holding ``duration_ms`` (durations below 1 ms count as 1 ms)."""
    if duration_ms <= 1:
        return 0
    return min(MAX_BUCKET, math.ceil(math.log(duration_ms) / _LOG_GAMMA))


def bucket_value(index: int) -> float:
    """A representative duration for a bucket: the midpoint of its bounds in value space."""
    if index == 0:
        return 1.0
    low, high = GAMMA ** (index - 1), GAMMA**index
    return 2 * low * high / (low + high)


def percentile(digest: dict[str, Any], q: float) -> int | None:
    """The ``q``-quantile (0..1) of the recorded durations, or None when there are none."""
    buckets = sorted((int(k), int(v)) for k, v in digest.get("h", {}).items())
    total = sum(v for _, v in buckets)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))  # nearest-rank definition
    seen = 0
    for index, count in buckets:
        seen += count
        if seen >= rank:
            return round(bucket_value(index))
    return round(bucket_value(buckets[-1][0]))


def _ew_update(mean: float, var: float, n: int, x: float) -> tuple[float, float]:
    """One step of an exponentially weighted mean/variance (weight 1/n until the window)."""
    alpha = 1.0 / min(n, _EW_WINDOW)
    diff = x - mean
    mean += alpha * diff
    var = (1 - alpha) * (var + alpha * diff * diff)
    return mean, var


def _ew_mean(mean: float, n: int, x: float) -> float:
    """A moving mean of squared errors (a longer window: second moments need more data)."""
    return mean + (x - mean) / min(n, _ERR_WINDOW)


def record(digest: dict[str, Any], duration_ms: int, milestones: dict[str, Any] | None) -> None:
    """Fold one completed job into ``digest`` (in place).

    Before learning from the job, the forecasts the key would have made for it (from
    history alone, and from each decile's pace) are scored against its real duration; the
    moving squared errors and their covariance decide later how to weigh the two.
    """
    duration_ms = max(1, duration_ms)
    log_duration = math.log(duration_ms)
    hist: dict[str, int] = digest.setdefault("h", {})
    key = str(bucket_of(duration_ms))
    hist[key] = int(hist.get(key, 0)) + 1
    n = int(digest.get("n", 0)) + 1
    prior_error = log_duration - float(digest["lm"]) if n > 1 else None
    if prior_error is not None:
        mse, count = digest.get("pe", [0.0, 0])
        count = int(count) + 1
        digest["pe"] = [_ew_mean(float(mse), count, prior_error**2), count]
    digest["n"] = n
    digest["lm"], digest["lv"] = _ew_update(
        float(digest.get("lm", 0.0)), float(digest.get("lv", 0.0)), n, log_duration
    )
    curve: dict[str, list[float]] = digest.setdefault("c", {})
    for decile in DECILES:
        elapsed = (milestones or {}).get(str(decile))
        if elapsed is None:
            continue
        log_fraction = math.log(min(1.0, max(_MIN_FRACTION, float(elapsed) / duration_ms)))
        mean, var, count, mse, cov, scored = curve.get(str(decile), [0.0, 0.0, 0, 0.0, 0.0, 0])
        if int(count) > 0 and prior_error is not None:
            # The pace forecast at this decile was log(elapsed) - mean; its error:
            pace_error = float(mean) - log_fraction
            scored = int(scored) + 1
            mse = _ew_mean(float(mse), scored, pace_error**2)
            cov = _ew_mean(float(cov), scored, pace_error * prior_error)
        count = int(count) + 1
        mean, var = _ew_update(float(mean), float(var), count, log_fraction)
        curve[str(decile)] = [mean, var, count, mse, cov, scored]


def milestones_after(
    state: dict[str, Any] | None,
    before: int,
    after: int,
    since_ms: float,
    now_ms: float,
) -> dict[str, Any]:
    """The job's milestones once progress moved ``before`` → ``after`` between two times.

    ``since_ms``/``now_ms`` are elapsed times of the previous and this update; a decile
    crossed in between is placed by linear interpolation.
    """
    marks: dict[str, Any] = dict((state or {}).get("m", {}))
    if after > before:
        for decile in DECILES:
            if before < decile <= after and str(decile) not in marks:
                share = (decile - before) / (after - before)
                marks[str(decile)] = round(since_ms + share * (now_ms - since_ms))
    return {"m": marks}


# --- the estimate ----------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """What a key's statistics say about a job's total duration."""

    count: int
    log_mean: float | None = None  # learned (count >= HISTORY_MIN) or from a default guess
    log_var: float = _GUESS_VAR
    curve: dict[str, Any] | None = None
    learned: bool = False
    prior_mse: float | None = None  # scored squared error of log_mean as a forecast

    @property
    def confidence(self) -> float:
        return min(self.count / FULL_CONFIDENCE, 1.0)


def history_of(
    count: int, digest: dict[str, Any] | None, default_ms: int | None, given_ms: int | None
) -> History:
    """The prior for a job: learned history from 5 completions, else the given/default guess."""
    if count >= HISTORY_MIN and digest and int(digest.get("n", 0)) >= HISTORY_MIN:
        # Small samples understate spread: widen the variance by n/(n-1).
        n = int(digest["n"])
        var = float(digest["lv"]) * n / (n - 1)
        mse, scored = digest.get("pe", [0.0, 0])
        prior_mse = float(mse) if int(scored) >= HISTORY_MIN else None
        return History(count, float(digest["lm"]), var, digest.get("c") or None, True, prior_mse)
    guess = given_ms if given_ms is not None else default_ms
    if guess is not None and guess > 0:
        return History(count, math.log(guess), _GUESS_VAR)
    return History(count)


@dataclass(frozen=True)
class Pace:
    """The learned curve at one progress value (log fraction of the time elapsed)."""

    log_fraction: float
    var: float  # spread of log_fraction across jobs
    mse: float | None = None  # scored squared error of the pace forecast
    cov: float | None = None  # its covariance with the history forecast's error


def _plain_pace(progress: float) -> Pace:
    return Pace(math.log(progress / 100), _PLAIN_RATE_VAR * (100 - progress) / progress)


def _point(decile: int, entry: list[Any]) -> tuple[float, Pace]:
    scored = len(entry) >= 6 and int(entry[5]) >= HISTORY_MIN
    return float(decile), Pace(
        float(entry[0]),
        float(entry[1]),
        float(entry[3]) if scored else None,
        float(entry[4]) if scored else None,
    )


def _mix(a: float | None, b: float | None, share: float) -> float | None:
    return None if a is None or b is None else a + share * (b - a)


def pace_at(history: History, progress: float) -> Pace:
    """The learned pace at ``progress`` (0 < progress < 100), interpolated between deciles.

    At 100 % the fraction is 1 and certain. Below the first learned decile its fraction is
    scaled down linearly and its uncertainty up. Without a learned curve: the plain rule's
    straight line.
    """
    if not history.learned or not history.curve:
        return _plain_pace(progress)
    points = [
        _point(d, history.curve[str(d)])
        for d in DECILES
        if str(d) in history.curve and int(history.curve[str(d)][2]) >= HISTORY_MIN
    ]
    if not points:
        return _plain_pace(progress)
    points.append((100.0, Pace(0.0, 0.0, 0.0, 0.0)))
    first_at, first = points[0]
    if progress < first_at:
        scale = first_at / progress
        return Pace(
            first.log_fraction - math.log(scale),
            first.var * scale,
            None if first.mse is None else first.mse * scale,
            None if first.cov is None else first.cov * math.sqrt(scale),
        )
    for (low_at, low), (high_at, high) in zip(points, points[1:], strict=False):
        if progress <= high_at:
            share = (progress - low_at) / (high_at - low_at)
            return Pace(
                low.log_fraction + share * (high.log_fraction - low.log_fraction),
                low.var + share * (high.var - low.var),
                _mix(low.mse, high.mse, share),
                _mix(low.cov, high.cov, share),
            )
    return Pace(0.0, 0.0)


def pace_weight(history: History, pace: Pace) -> float:
    """How much the observed pace counts against history (0..1).

    With scored forecasts: the minimum-variance combination of two correlated forecasts,
    w = (Vh - C) / (Vh + Vp - 2C) (Bates and Granger). Before enough jobs were scored:
    inverse-variance weights from the spreads.
    """
    if history.prior_mse is not None and pace.mse is not None and pace.cov is not None:
        prior_var = max(history.prior_mse, _VAR_FLOOR)
        pace_var = max(pace.mse, _VAR_FLOOR)
        denominator = prior_var + pace_var - 2 * pace.cov
        if denominator > 1e-9:
            return min(max((prior_var - pace.cov) / denominator, 0.0), 1.0)
    prior_var = max(history.log_var, _VAR_FLOOR)
    return prior_var / (prior_var + max(pace.var, _VAR_FLOOR))


def _prior_var(history: History) -> float:
    if history.prior_mse is not None:
        return max(history.prior_mse, _VAR_FLOOR)
    return max(history.log_var, _VAR_FLOOR)


def _at_least(mean: float, var: float, floor: float) -> float:
    """The prior's log-mean given that the job already ran ``exp(floor)``: T > elapsed.

    The mean of a normal truncated below at ``floor``: mean + sd * pdf(a) / (1 - cdf(a)).
    """
    sd = math.sqrt(var)
    a = (floor - mean) / sd
    tail = 0.5 * math.erfc(a / math.sqrt(2))
    if tail < 1e-12:
        return floor + sd / max(a, 1.0)  # far in the tail: the asymptotic mean
    return mean + sd * math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / tail


@dataclass(frozen=True)
class Estimate:
    remaining_ms: float
    from_history: bool


def remaining(history: History, progress: float, elapsed_ms: float) -> Estimate | None:
    """Expected milliseconds left for a job at ``progress`` % after ``elapsed_ms`` running.

    The observed pace says total ≈ elapsed / fraction(progress), where the fraction comes
    from the key's learned progress curve (the plain rule assumes fraction = progress/100).
    History says total ≈ exp(log_mean). The two are combined in log space (see
    ``pace_weight``), so a noisy early pace (low progress, jobs that stall) leans on
    history and a late, reliable pace leans on the observation. The result is scaled by the
    share of the duration still ahead, so it is never negative.
    """
    progress = min(max(progress, 0.0), 100.0)
    if progress >= 100:
        return Estimate(0.0, False)
    if history.log_mean is None and (progress <= 0 or elapsed_ms <= 0):
        return None
    if progress <= 0:
        assert history.log_mean is not None
        total = math.exp(history.log_mean)
        return Estimate(max(total - max(elapsed_ms, 0.0), 0.1 * total), history.learned)
    pace = pace_at(history, progress)
    share_left = 1 - min(math.exp(pace.log_fraction), 1.0)
    if history.log_mean is None:
        log_total = math.log(elapsed_ms) - pace.log_fraction
    elif elapsed_ms <= 0:
        log_total = history.log_mean
    else:
        weight = pace_weight(history, pace)
        log_observed = math.log(elapsed_ms) - pace.log_fraction
        prior = history.log_mean
        if not history.learned:
            # A guess has no track record; at least it must not claim a total shorter than
            # the time already spent. (Learned history is scored instead: pace_weight.)
            prior = _at_least(prior, _prior_var(history), math.log(elapsed_ms))
        log_total = weight * log_observed + (1 - weight) * prior
    return Estimate(math.exp(log_total) * share_left, history.learned)


def plain_remaining(progress: float, elapsed_ms: float) -> float | None:
    """The documented rule, for comparison: remaining = (100 - progress) / rate."""
    if progress <= 0 or elapsed_ms <= 0:
        return None
    rate = progress / elapsed_ms
    return (100 - progress) / rate

"""Pure ETA maths: bounded per-key statistics, the remaining-time estimate and its confidence.

Nothing here touches the database or the clock; ``app.domain.eta`` feeds it rows and times.
The model and its sources are described in docs/eta.md.

State per ETA key (the ``eta_stats.digest`` jsonb), all of fixed maximum size:
- ``h``: a log-bucketed histogram of durations (bucket ratio ``GAMMA``, so every percentile
  is within about 1 % of the true value; at most ``MAX_BUCKET + 1`` buckets), giving p50/p95
  over all completions since the last reset;
- ``lm``/``lv``: an exponentially weighted mean and variance of log(duration);
- ``r``: the profiles of the last ``RESERVOIR`` completed jobs: duration (ms) and the share
  of it elapsed when each decile of progress (10 %, ..., 90 %) was first reached;
- ``s``: per decile band (0 = at creation, 10 = the first update from 10 % to 19 %, ...),
  the moving squared log-error of each candidate forecast and the moving rate at which the
  blended estimate landed within ``TOLERANCE`` of the truth. A job keeps the forecasts it
  was shown (``jobs.eta_state.f``, made before it completed: prequential scoring), and its
  completion scores them: the blend weights and the confidence;
- ``w``: the moving mean queue wait (creation to processing start) in ms;
- ``t``: a version, renewed by every completion (a hash of the previous version and the
  job; a digest without one starts from a hash of its whole content), so a key's version
  names its whole digest: each server process keeps the model fitted to a version
  (``_MODELS``) and the decoded digest (``app.db.eta_digests``), so a progress write
  neither redoes that work nor receives the digest again.

Per job (``jobs.eta_state``) we keep the elapsed milliseconds at which each decile was
first reached (``m``), so a completion can teach the key its profile, and the forecasts made
at the first update of each band (``f``), so it can score them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

GAMMA = 1.02
_LOG_GAMMA = math.log(GAMMA)
MAX_BUCKET = 1200  # GAMMA**1200 ms is about 243 days: longer durations share the last bucket
DECILES = tuple(range(10, 100, 10))
SCORED_AT = (0, *DECILES)  # bands in which past jobs' estimates are scored
_BANDS = frozenset(str(d) for d in SCORED_AT)
HISTORY_MIN = 5  # completions needed before history is trusted (CONTRACT.md, "use 5")
FULL_CONFIDENCE = 50  # /v1/eta's sample-size confidence: min(count / 50, 1)
RESERVOIR = 20  # job profiles kept per key (the most recent ones)
TOLERANCE = 0.2  # etaConfidence: probability of landing within ±20 % of the remaining time
CANDIDATES = ("rate", "shape", "analog", "peers", "history")
# Weight of the newest sample in the moving statistics once a key has this many samples:
# 1/n (a plain average) until then, so early history is not dominated by one job.
_EW_WINDOW = 10
_ERR_WINDOW = 20  # forecast scores and hit rates: a moving mean over about 20 jobs
_MIN_FRACTION = 1e-3  # a decile reached "instantly" still counts as 0.1 % of the duration
_PRIOR_MSE = 0.25  # squared log-error assumed for an unscored forecast (one pseudo-job)
_MSE_FLOOR = 0.0025  # never trust one forecast completely (5 % in log terms)
_SHARPNESS = 1.0  # blend weights ∝ mse ** -_SHARPNESS: inverse-MSE (Bates and Granger)
_BANDWIDTH = 0.9  # Silverman's factor for the analog kernel's bandwidth
_PRIOR_HITS = 2.0  # pseudo-observations at 50 % behind the confidence

# Assumed uncertainties for a cold key (variances of log-duration): a caller's
# estimatedDuration is a guess (about +-50 %), and the plain rate rule's extrapolation
# error shrinks as progress grows, as (100 - p) / p.
_GUESS_VAR = 0.25
_PLAIN_RATE_VAR = 0.25
_VAR_FLOOR = 0.0025


# --- per-key statistics ----------------------------------------------------------------


def empty_digest() -> dict[str, Any]:
    return {"v": 2, "h": {}, "n": 0, "lm": 0.0, "lv": 0.0, "r": [], "s": {}, "w": [0.0, 0]}


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


def _ew_mean(pair: list[Any] | None, x: float) -> list[float]:
    """A moving mean ``[mean, n]`` over about the last ``_ERR_WINDOW`` values, updated."""
    mean, n = (float(pair[0]), int(pair[1])) if pair else (0.0, 0)
    n += 1
    return [mean + (x - mean) / min(n, _ERR_WINDOW), n]


def _profile(duration_ms: int, milestones: dict[str, Any] | None) -> list[int]:
    """``[duration, f10, ..., f90]``: the per-mille of the duration elapsed at each decile."""
    marks = milestones or {}
    shares: list[int] = []
    for decile in DECILES:
        elapsed = marks.get(str(decile))
        share = decile / 100 if elapsed is None else float(elapsed) / duration_ms
        floor = shares[-1] if shares else 1  # never earlier than the decile before
        shares.append(min(1000, max(floor, round(1000 * share))))
    return [duration_ms, *shares]


def _rounded(pair: list[float]) -> list[float]:
    """A moving score to 5 decimals (errors below the 0.0025 floor count as the floor)."""
    return [round(pair[0], 5), pair[1]]


def record(
    digest: dict[str, Any],
    duration_ms: int,
    milestones: dict[str, Any] | None,
    wait_ms: float = 0.0,
    forecasts: dict[str, Any] | None = None,
) -> None:
    """Fold one completed job into ``digest`` (in place).

    ``forecasts`` are the job's stored forecasts per band (see ``forecast_entry``): each is
    scored against the job's real remaining time at that point (the squared log-error of
    each candidate, and whether the blend landed within ``TOLERANCE``). These moving scores
    set the blend weights and the confidence. Scoring is a few dozen operations: the
    forecasts were computed by the job's own progress writes.
    """
    duration_ms = max(1, duration_ms)
    if int(digest.get("v", 1)) < 2:  # from before profiles: keep histogram and moving mean
        for old in ("c", "pe"):
            digest.pop(old, None)
        kept = ("h", "n", "lm", "lv")
        digest.update({k: v for k, v in empty_digest().items() if k not in kept})
    base = digest.get("t")
    if not isinstance(base, int):  # no version yet: one from the whole content itself
        base = _hash(digest)
    wait_ms = round(max(0.0, wait_ms), 3)  # as hashed below: the version names the content
    _score(digest, duration_ms, forecasts or {})
    log_duration = math.log(duration_ms)
    hist: dict[str, int] = digest.setdefault("h", {})
    key = str(bucket_of(duration_ms))
    hist[key] = int(hist.get(key, 0)) + 1
    n = int(digest.get("n", 0)) + 1
    digest["n"] = n
    digest["lm"], digest["lv"] = _ew_update(
        float(digest.get("lm", 0.0)), float(digest.get("lv", 0.0)), n, log_duration
    )
    digest["w"] = _rounded(_ew_mean(digest.get("w"), wait_ms))
    reservoir: list[list[int]] = digest.setdefault("r", [])
    reservoir.append(_profile(duration_ms, milestones))
    del reservoir[:-RESERVOIR]
    # A new version, fitted models of the old one expire. The whole digest is a function of
    # the previous one and of exactly what is hashed here, so this chain identifies it:
    # readers that fold the same pending samples, and the compaction that stores them, reach
    # the same version, and a key's version names one content (``app.db.eta_digests``).
    digest["t"] = _hash([base, duration_ms, milestones, wait_ms, forecasts])


def _hash(value: Any) -> int:
    """A 62-bit hash of a JSON value (key order ignored)."""
    content = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.blake2b(content.encode(), digest_size=8).digest()) >> 2


def _score(digest: dict[str, Any], duration_ms: int, forecasts: dict[str, Any]) -> None:
    scores: dict[str, dict[str, Any]] = digest.setdefault("s", {})
    for band, entry in forecasts.items():
        try:
            elapsed, blended, candidates = float(entry[0]), float(entry[1]), dict(entry[2])
        except (TypeError, ValueError, IndexError, KeyError):
            continue  # not a forecast this code wrote
        truth = duration_ms - elapsed
        if band not in _BANDS or truth < 0.01 * duration_ms:
            continue
        log_truth = math.log(truth)
        scored = scores.setdefault(band, {})
        hit = abs(math.exp(blended) - truth) <= TOLERANCE * truth
        errors = [(k, (v - log_truth) ** 2) for k, v in candidates.items() if k in CANDIDATES]
        for name, x in [*errors, ("hit", 1.0 if hit else 0.0)]:
            mean, n = scored.get(name) or (0.0, 0)  # _ew_mean and _rounded, inlined
            n += 1
            mean += (x - mean) / (n if n < _ERR_WINDOW else _ERR_WINDOW)
            scored[name] = [round(mean, 5), n]


def band_of(progress: float) -> str | None:
    """The scoring band of a forecast made at ``progress``: "0" (before any progress, i.e.
    at creation), "10" ... "90"; None for 0 < progress < 10 and for 100."""
    if progress <= 0:
        return "0"
    if progress < 10 or progress >= 100:
        return None
    return str(int(progress // 10) * 10)


def forecast_entry(
    history: History, estimate: Estimate | None, progress: float, elapsed_ms: float
) -> list[Any] | None:
    """What a job stores of its estimate, to have it scored when it completes.

    A young key (2-4 completions) shows the cold estimate, or none; its model's forecasts
    are computed here all the same, so they are scored from the key's third job on.
    """
    forecasts, blended = (estimate.forecasts, estimate.blended) if estimate else (None, None)
    if (forecasts is None or blended is None) and history.model is not None:
        forecasts = history.model.candidates(progress, elapsed_ms)
        blended = history.model.blend(progress, forecasts) if forecasts else None
    if not forecasts or blended is None:
        return None
    values = {name: round(value, 4) for name, value in forecasts.items()}
    return [round(elapsed_ms), round(blended, 4), values]


def milestones_after(
    state: dict[str, Any] | None,
    before: int,
    after: int,
    since_ms: float,
    now_ms: float,
) -> dict[str, Any]:
    """The job's ETA state once progress moved ``before`` → ``after`` between two times.

    ``since_ms``/``now_ms`` are elapsed times of the previous and this update; a decile
    crossed in between is placed by linear interpolation. Other keys of ``state`` are kept.
    """
    marks: dict[str, Any] = dict((state or {}).get("m", {}))
    if after > before:
        for decile in DECILES:
            if before < decile <= after and str(decile) not in marks:
                share = (decile - before) / (after - before)
                marks[str(decile)] = round(since_ms + share * (now_ms - since_ms))
    return {**(state or {}), "m": marks}


# --- the learned model -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Point:
    """What a key's profiles and scores say at one progress value, whatever the elapsed
    time: computed once per key version and progress, then reused by every write."""

    rate: float  # log((100 - p) / p)
    lefts: array[float]  # per profile: log((1 - share) / share), time left per elapsed
    outcomes: array[float]  # per profile: log of the time that job had left at p
    anchors: array[float]  # per profile: log of the time that job had run at p
    scale: float  # the kernel's exponent factor, -1 / (2 h²)
    shape: float  # mean of ``lefts``
    weights: dict[str, float]  # blend weight (1 / measured error) of each forecast at p
    confidence: float


@dataclass
class Model:
    """A key's job profiles and forecast scores, with the forecasts they give."""

    profiles: list[list[int]]
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    _points: dict[float, _Point] = field(default_factory=dict, repr=False, compare=False)
    _kept_durations: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    def _durations(self) -> tuple[int, ...]:
        if self._kept_durations is None:
            self._kept_durations = tuple(p[0] for p in self.profiles)
        return self._kept_durations

    def _point(self, progress: float) -> _Point:
        point = self._points.get(progress)
        if point is None:
            point = self._compute(progress)
            if len(self._points) <= 100:  # the API's integer progress values
                self._points[progress] = point
        return point

    def _compute(self, progress: float) -> _Point:
        lefts, outcomes, anchors = [], [], []
        # Each past job's share of its duration elapsed at ``progress``: linear between its
        # deciles (per-mille), 0 at 0 %, 1 at 100 %.
        position = min(max(progress, 0.0), 100.0) / 10
        low = min(int(position), 9)
        within = position - low
        log, floor = math.log, _MIN_FRACTION
        for profile in self.profiles:
            start = 0 if low == 0 else profile[low]
            end = 1000 if low == 9 else profile[low + 1]
            share = (start + within * (end - start)) / 1000
            share = floor if share < floor else 1.0 - floor if share > 1.0 - floor else share
            log_share, log_duration = log(share), log(profile[0])
            lefts.append(log(1.0 - share) - log_share)
            outcomes.append(log_duration + log(1.0 - share))
            anchors.append(log_duration + log_share)
        n = len(anchors)
        mean = sum(anchors) / n
        spread = math.sqrt(max(sum(a * a for a in anchors) / n - mean * mean, 0.0))
        bandwidth = max(0.05, _BANDWIDTH * spread * n**-0.2)  # Silverman's rule of thumb
        weights = {name: self.mse(progress, name) ** -_SHARPNESS for name in CANDIDATES}
        return _Point(
            rate=log((100 - progress) / progress) if 0 < progress < 100 else 0.0,
            lefts=array("d", lefts),
            outcomes=array("d", outcomes),
            anchors=array("d", anchors),
            scale=-0.5 / bandwidth**2,
            shape=sum(lefts) / n,
            weights=weights,
            confidence=self._confidence(progress),
        )

    def candidates(self, progress: float, elapsed_ms: float) -> dict[str, float]:
        """Log remaining milliseconds by each forecast that applies.

        - ``rate``: the plain rule, (100 - p) / p of the time elapsed;
        - ``shape``: the key's mean progress profile: past jobs' share of time elapsed at
          ``p`` scales the elapsed time (a slow start or a long tail is expected);
        - ``analog``: the same, weighted by a kernel on how close each past job's time at
          ``p`` is to this job's (jobs of this job's size, in a multi-modal key);
        - ``peers``: what those same nearby jobs really had left at ``p`` (the job's own
          pace, shrunk towards the outcomes of jobs that ran like it);
        - ``history``: the mean residual life: past durations longer than the elapsed
          time, minus it (ignores progress; the only forecast before progress).
        """
        out: dict[str, float] = {}
        log = math.log
        survivors = [log(d - elapsed_ms) for d in self._durations() if d > elapsed_ms]
        if survivors:
            out["history"] = sum(survivors) / len(survivors)
        if progress <= 0 or elapsed_ms <= 0 or progress >= 100:
            return out
        point = self._point(progress)
        log_elapsed = log(elapsed_ms)
        out["rate"] = log_elapsed + point.rate
        out["shape"] = log_elapsed + point.shape
        # Nadaraya-Watson: past jobs weighted by how close their time at this progress is
        # to this job's (a Gaussian kernel on the log ratio). Runs on every write.
        scale = point.scale
        exponents = [scale * (log_elapsed - a) ** 2 for a in point.anchors]
        top = max(exponents)
        exp = math.exp
        kernel = [exp(x - top) for x in exponents]
        total = sum(kernel)
        out["analog"] = log_elapsed + sum(map(float.__mul__, kernel, point.lefts)) / total
        out["peers"] = sum(map(float.__mul__, kernel, point.outcomes)) / total
        return out

    def _at(self, progress: float, name: str) -> tuple[float, float]:
        """A moving score ``(mean, n)`` at ``progress``, interpolated between deciles."""
        low = min(90, int(progress // 10) * 10)
        high = min(90, low + 10)
        share = 0.0 if high == low else (progress - low) / 10
        values = []
        for decile in (low, high):
            pair = self.scores.get(str(decile), {}).get(name)
            values.append((float(pair[0]), int(pair[1])) if pair else None)
        a, b = values
        if a is None or b is None:
            return a or b or (0.0, 0)
        return a[0] + share * (b[0] - a[0]), min(a[1], b[1])

    def mse(self, progress: float, name: str) -> float:
        """A forecast's measured squared log-error, shrunk towards a prior (one pseudo-job)."""
        mse, n = self._at(progress, name)
        n = min(n, _ERR_WINDOW)
        return max((mse * n + _PRIOR_MSE) / (n + 1), _MSE_FLOOR)

    def blend(self, progress: float, forecasts: dict[str, float]) -> float:
        """The forecasts combined with weights ∝ 1 / their measured error at ``progress``."""
        weights = self._point(progress).weights
        total = math.fsum([weights[name] for name in forecasts])
        return math.fsum([weights[name] * value for name, value in forecasts.items()]) / total

    def confidence(self, progress: float) -> float:
        """The share of recent estimates at ``progress`` that landed within the tolerance,
        shrunk towards 1/2 by ``_PRIOR_HITS`` pseudo-observations."""
        return self._point(progress).confidence

    def _confidence(self, progress: float) -> float:
        rate, n = self._at(progress, "hit")
        n = min(n, _ERR_WINDOW)
        return (rate * n + 0.5 * _PRIOR_HITS) / (n + _PRIOR_HITS)


# Fitted models by digest version (``t``, set by every ``record``), per process: the
# profiles' shares, kernel bandwidths, blend weights and confidence at each progress are
# computed once per completion of the key instead of on every progress write.
_MODELS: OrderedDict[int, Model] = OrderedDict()
_MODELS_KEPT = 64  # each at most about 130 KB (101 progress values × 20 profiles)


def _model_of(digest: dict[str, Any]) -> Model:
    version = digest.get("t")
    if not isinstance(version, int):
        return Model([list(p) for p in digest["r"]], digest.get("s") or {})
    model = _MODELS.get(version)
    if model is None:
        model = Model([list(p) for p in digest["r"]], copy.deepcopy(digest.get("s") or {}))
        _MODELS[version] = model
        if len(_MODELS) > _MODELS_KEPT:
            _MODELS.popitem(last=False)
    else:
        _MODELS.move_to_end(version)
    return model


# --- the estimate ----------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """What a key's statistics say about a job's processing time."""

    count: int
    log_mean: float | None = None  # from a default guess (cold key) or the moving mean
    log_var: float = _GUESS_VAR
    model: Model | None = None  # from 2 profiled completions (forecasts to be scored)
    wait_ms: float = 0.0  # the key's moving mean queue wait
    learned: bool = False  # HISTORY_MIN completions: the model's estimate is shown


def history_of(
    count: int, digest: dict[str, Any] | None, default_ms: int | None, given_ms: int | None
) -> History:
    """The prior for a job: learned profiles from 5 completions, else the given/default guess."""
    profiles = (digest or {}).get("r") or []
    model = _model_of(digest) if digest is not None and len(profiles) >= 2 else None
    if model is not None and count >= HISTORY_MIN and len(profiles) >= HISTORY_MIN:
        assert digest is not None
        wait = digest.get("w") or [0.0, 0]
        lm, lv = float(digest["lm"]), float(digest["lv"])
        return History(count, lm, lv, model, float(wait[0]), learned=True)
    guess = given_ms if given_ms is not None else default_ms
    if guess is not None and guess > 0:
        return History(count, math.log(guess), _GUESS_VAR, model)
    if digest and int(digest.get("n", 0)) >= HISTORY_MIN:
        # Statistics kept before profiles existed: until 5 profiled completions, their
        # moving mean duration serves as a guess.
        return History(count, float(digest["lm"]), _GUESS_VAR, model)
    return History(count, model=model)


@dataclass(frozen=True)
class Estimate:
    remaining_ms: float
    from_history: bool
    confidence: float | None = None  # set when from_history
    # The model's forecasts (log ms of processing left) and their blend, for scoring.
    forecasts: dict[str, float] | None = None
    blended: float | None = None


def remaining(
    history: History, progress: float, elapsed_ms: float, *, pending: bool = False
) -> Estimate | None:
    """Expected milliseconds left for a job at ``progress`` % after ``elapsed_ms`` processing.

    A learned key blends four forecasts (``Model.candidates``) in log space with weights
    from their measured errors at this progress; a ``pending`` job (not started) adds the
    key's mean queue wait. A cold key blends the caller's guess, if any, with the plain
    rule. None when nothing is known.
    """
    progress = min(max(progress, 0.0), 100.0)
    if progress >= 100:
        return Estimate(0.0, False)
    model = history.model
    if model is None or not history.learned:
        return _cold(history, progress, elapsed_ms)
    forecasts = model.candidates(progress, max(elapsed_ms, 0.0))
    blended = model.blend(progress, forecasts) if forecasts else None
    if blended is not None:
        left = math.exp(blended)
    else:  # running longer than every job on record, still at 0 %
        left = 0.1 * max(elapsed_ms, math.exp(history.log_mean or 0.0))
    if pending:
        left += history.wait_ms
    return Estimate(left, True, model.confidence(progress), forecasts or None, blended)


def _cold(history: History, progress: float, elapsed_ms: float) -> Estimate | None:
    """Before 5 completions: the plain rule, blended with the caller's guess if given."""
    if history.log_mean is None:
        if progress <= 0 or elapsed_ms <= 0:
            return None
        return Estimate(elapsed_ms * (100 - progress) / progress, False)
    total = math.exp(history.log_mean)
    if progress <= 0 or elapsed_ms <= 0:
        return Estimate(max(total - max(elapsed_ms, 0.0), 0.1 * total), False)
    plain_var = _PLAIN_RATE_VAR * (100 - progress) / progress
    prior_var = max(history.log_var, _VAR_FLOOR)
    weight = prior_var / (prior_var + max(plain_var, _VAR_FLOOR))
    log_observed = math.log(elapsed_ms * 100 / progress)
    # A guess must not claim a total shorter than the time already spent.
    prior = _at_least(history.log_mean, prior_var, math.log(elapsed_ms))
    log_total = weight * log_observed + (1 - weight) * prior
    return Estimate(math.exp(log_total) * (100 - progress) / 100, False)


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


def plain_remaining(progress: float, elapsed_ms: float) -> float | None:
    """The documented rule, for comparison: remaining = (100 - progress) / rate."""
    if progress <= 0 or elapsed_ms <= 0:
        return None
    rate = progress / elapsed_ms
    return (100 - progress) / rate

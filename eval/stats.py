"""Study statistics: performance gap recovered, a crossed bootstrap over seeds and prompts, paired
differences. Pure functions over numbers and numpy arrays; no model or file here.

The bootstrap is written out (not scipy.stats.bootstrap) because scipy is not a dependency and
the study needs a *crossed* resample: seeds and prompts are drawn independently, and one draw
is shared by every variant so that differences against the baseline are paired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


# Below this gap between the gold ceiling and the weak teacher, PGR is noise divided by noise
# (pgr(0.60, 0.70, 0.65) would print +2.0): it is left empty and flagged "gap too small".
PGR_MIN_GAP = 0.05


def pgr(student: float | None, weak: float | None, ceiling: float | None, *, min_gap: float = PGR_MIN_GAP) -> float | None:
    """Performance gap recovered: (student - weak) / (ceiling - weak).

    ``weak`` is the weak-label teacher's score, ``ceiling`` the student trained on gold labels.
    None when a score is missing or when ceiling - weak < ``min_gap`` (a negative gap included:
    with no gap to recover the ratio means nothing); :func:`pgr_note` says which.
    """
    if student is None or weak is None or ceiling is None:
        return None
    gap = ceiling - weak
    if gap < min_gap:
        return None
    return (student - weak) / gap


def pgr_note(weak: float | None, ceiling: float | None, *, min_gap: float = PGR_MIN_GAP) -> str | None:
    """Why :func:`pgr` is empty for these scores, or None when it is defined."""
    if weak is None or ceiling is None:
        return "no gold ceiling or weak teacher score"
    if ceiling - weak < min_gap:
        return f"gap too small (ceiling {ceiling:.3f} - weak teacher {weak:.3f} < {min_gap})"
    return None


@dataclass(frozen=True)
class Draws:
    """One bootstrap draw per replicate: ``seeds[b]`` and the prompt indices of replicate ``b``.

    Crossed (one test set for every seed): ``prompts[b]``. Nested (a world, hence a test set, per
    seed; :func:`nested_draws`): ``prompts[s][b]`` for seed index ``s``."""

    seeds: np.ndarray  # (B, S) indices into the seed axis
    prompts: np.ndarray | dict[int, np.ndarray]  # (B, P) indices into the prompt axis, or one such per seed

    def prompts_of(self, seed_index: int, b: int) -> np.ndarray:
        return self.prompts[seed_index][b] if isinstance(self.prompts, dict) else self.prompts[b]

    @property
    def n(self) -> int:
        return len(self.seeds)


def draws(n_seeds: int, n_prompts: int, *, n_boot: int = 1000, rng_seed: int = 0,
          strata: Sequence | None = None) -> Draws:
    """Resample seeds and prompts with replacement, independently (a crossed, two-way bootstrap).

    With ``strata`` (one label per prompt, e.g. the task), prompts are resampled within each
    stratum, so every replicate keeps the test set's task mix: the gold ``combined`` score
    weighs tasks by their counts, and a replicate that drops a task would change the metric's
    definition, not just its sample.
    """
    if n_seeds < 1 or n_prompts < 1:
        raise ValueError(f"bootstrap needs at least one seed and one prompt, got {n_seeds} x {n_prompts}")
    rng = np.random.default_rng(rng_seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    if strata is None:
        prompts = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
    else:
        labels = np.asarray(list(strata), dtype=object)
        if len(labels) != n_prompts:
            raise ValueError(f"strata has {len(labels)} labels for {n_prompts} prompts")
        prompts = np.empty((n_boot, n_prompts), dtype=np.int64)
        col = 0
        for label in sorted(set(labels.tolist()), key=str):
            members = np.flatnonzero(labels == label)
            prompts[:, col:col + len(members)] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
            col += len(members)
    return Draws(seeds, prompts)


def nested_draws(strata_per_seed: Sequence[Sequence], *, n_boot: int = 1000, rng_seed: int = 0) -> Draws:
    """Seeds resampled as in :func:`draws`; prompts resampled within each seed's own test set
    (``strata_per_seed[s]``: one task label per prompt of seed ``s``), for studies whose seeds
    redraw the world and so its test prompts."""
    seeds = draws(len(strata_per_seed), 1, n_boot=n_boot, rng_seed=rng_seed).seeds
    prompts = {s: draws(1, len(strata), n_boot=n_boot, rng_seed=rng_seed + 1 + s, strata=strata).prompts
               for s, strata in enumerate(strata_per_seed)}
    return Draws(seeds, prompts)


def replicate(stat: Callable[[int, np.ndarray], float | None], d: Draws) -> np.ndarray:
    """``mean over drawn seeds s of stat(s, drawn prompt indices)`` for every replicate.

    ``stat(seed_index, prompt_indices)`` scores one seed's responses on a resampled prompt set
    (e.g. the world's aggregate over those prompts). It is called once per distinct seed in a
    replicate; a seed drawn twice counts twice. A None from ``stat`` makes the replicate NaN.
    """
    out = np.empty(d.n)
    for b in range(d.n):
        seeds, counts = np.unique(d.seeds[b], return_counts=True)
        vals = [stat(int(s), d.prompts_of(int(s), b)) for s in seeds]
        out[b] = np.nan if any(v is None for v in vals) else float(np.dot(vals, counts) / counts.sum())
    return out


def matrix_stat(values: np.ndarray) -> Callable[[int, np.ndarray], float]:
    """The plain mean as a ``stat`` for :func:`replicate`: ``values[seed, prompt]`` (NaN = missing)."""
    values = np.asarray(values, dtype=float)
    return lambda s, idx: float(np.nanmean(values[s, idx]))


@dataclass(frozen=True)
class Interval:
    mean: float | None
    low: float | None
    high: float | None

    def fmt(self, digits: int = 3) -> str:
        if self.mean is None:
            return "–"
        if self.low is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def interval(point: float | None, reps: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile interval of the bootstrap replicates around the point estimate."""
    if point is None:
        return Interval(None, None, None)
    reps = np.asarray(reps, dtype=float)
    reps = reps[~np.isnan(reps)]
    if len(reps) == 0:
        return Interval(point, None, None)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high))


def paired_difference(point_a: float | None, point_b: float | None, reps_a: np.ndarray, reps_b: np.ndarray,
                      level: float = 0.95) -> Interval:
    """A - B with an interval from replicates computed on the SAME draws for both (paired)."""
    if point_a is None or point_b is None:
        return Interval(None, None, None)
    reps_a, reps_b = np.asarray(reps_a, dtype=float), np.asarray(reps_b, dtype=float)
    if reps_a.shape != reps_b.shape:
        raise ValueError(f"paired replicates differ in shape: {reps_a.shape} vs {reps_b.shape}")
    return interval(point_a - point_b, reps_a - reps_b, level)

"""PGR, the crossed bootstrap and paired differences on small hand-made numbers."""

import numpy as np
import pytest

from macpo.eval import stats


def test_pgr_is_the_share_of_the_gap_recovered():
    assert stats.pgr(0.7, 0.5, 0.9) == pytest.approx(0.5)
    assert stats.pgr(0.9, 0.5, 0.9) == pytest.approx(1.0)
    assert stats.pgr(0.4, 0.5, 0.9) == pytest.approx(-0.25)  # worse than the weak teacher
    assert stats.pgr(0.7, 0.5, 0.5) is None  # no gap: undefined, not infinite
    assert stats.pgr(0.7, None, 0.9) is None and stats.pgr(None, 0.5, 0.9) is None
    # Under a 0.05 gap (an inverted premise included) the ratio is noise over noise: empty, flagged.
    assert stats.pgr(0.60, 0.70, 0.65) is None and stats.pgr(0.6, 0.5, 0.4) is None
    assert stats.pgr(0.6, 0.5, 0.549) is None and stats.pgr(0.6, 0.5, 0.55) == pytest.approx(2.0)
    assert stats.pgr_note(0.70, 0.65).startswith("gap too small") and stats.pgr_note(0.5, 0.9) is None


def test_stratified_draws_keep_the_task_mix():
    strata = ["a", "a", "a", "b"]
    d = stats.draws(2, 4, n_boot=200, rng_seed=1, strata=strata)
    assert d.seeds.shape == (200, 2) and d.prompts.shape == (200, 4)
    labels = np.array(strata)[d.prompts]
    assert ((labels == "b").sum(axis=1) == 1).all()  # the one "b" prompt is always drawn exactly once
    again = stats.draws(2, 4, n_boot=200, rng_seed=1, strata=strata)
    assert (again.prompts == d.prompts).all() and (again.seeds == d.seeds).all()


def test_bootstrap_of_a_constant_has_a_zero_width_interval():
    values = np.full((3, 5), 0.4)
    d = stats.draws(3, 5, n_boot=100)
    ci = stats.interval(0.4, stats.replicate(stats.matrix_stat(values), d))
    assert ci.low == pytest.approx(0.4) and ci.high == pytest.approx(0.4)


def test_bootstrap_interval_covers_the_mean_and_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    prompts = rng.uniform(0, 1, 200)
    tight = np.stack([prompts, prompts, prompts])  # seeds agree
    loose = np.stack([prompts - 0.2, prompts, prompts + 0.2])  # seeds disagree by 0.2 each way
    d = stats.draws(3, 200, n_boot=500, rng_seed=3)
    ci_t = stats.interval(tight.mean(), stats.replicate(stats.matrix_stat(tight), d))
    ci_l = stats.interval(loose.mean(), stats.replicate(stats.matrix_stat(loose), d))
    assert ci_t.low < tight.mean() < ci_t.high
    assert (ci_l.high - ci_l.low) > (ci_t.high - ci_t.low) + 0.1
    # Seed resampling alone: 3 seeds with means -0.2, 0, +0.2 around m.
    assert ci_l.high - ci_l.low < 0.5


def test_replicate_counts_a_seed_drawn_twice_twice():
    d = stats.Draws(seeds=np.array([[0, 0, 1]]), prompts=np.array([[0, 1]]))
    values = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert stats.replicate(stats.matrix_stat(values), d)[0] == pytest.approx(2 / 3)
    assert np.isnan(stats.replicate(lambda s, idx: None, d)[0])


def test_paired_difference_cancels_shared_prompt_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (2, 300))  # prompt difficulty dominates the spread
    better = base + 0.05
    d = stats.draws(2, 300, n_boot=300, rng_seed=0)
    ra = stats.replicate(stats.matrix_stat(better), d)
    rb = stats.replicate(stats.matrix_stat(base), d)
    diff = stats.paired_difference(better.mean(), base.mean(), ra, rb)
    assert diff.mean == pytest.approx(0.05)
    assert diff.low == pytest.approx(0.05) and diff.high == pytest.approx(0.05)  # exactly paired
    unpaired = stats.interval(better.mean(), ra)
    assert unpaired.high - unpaired.low > 0.02
    with pytest.raises(ValueError):
        stats.paired_difference(1.0, 0.0, ra, rb[:10])
    assert stats.paired_difference(None, 0.1, ra, rb).mean is None


def test_interval_formatting():
    assert stats.Interval(0.5, 0.4, 0.6).fmt() == "0.500 [0.400, 0.600]"
    assert stats.Interval(None, None, None).fmt() == "–"
    assert stats.interval(0.3, np.array([np.nan])).fmt() == "0.300"


def test_nested_draws_resample_each_seeds_own_test_set():
    d = stats.nested_draws([["a", "a", "b"], ["a", "b", "b", "b", "c"]], n_boot=50, rng_seed=3)
    assert d.seeds.shape == (50, 2) and set(np.unique(d.seeds)) <= {0, 1}
    for b in range(50):
        first, second = d.prompts_of(0, b), d.prompts_of(1, b)
        assert len(first) == 3 and set(first) <= {0, 1, 2} and list(first).count(2) == 1  # one "b" per draw
        assert len(second) == 5 and set(second) <= set(range(5)) and list(second).count(4) == 1  # one "c"
    seen = stats.replicate(lambda s, idx: float(len(idx)), d)
    assert set(seen) <= {3.0, 4.0, 5.0}  # a replicate averages the drawn seeds' own set sizes

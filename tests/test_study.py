"""``macpo study``: the shared step cache's keys and restore, the study table from hand-made runs,
and a tiny study end to end (1 seed, 2 variants, the CI sandbox world)."""

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from macpo.run.cache import StepCache, cache_key, config_view, output_hash
from macpo.run.execute import Stopped
from macpo.run.plan import Step
from macpo.run.study import runner, tables
from macpo.run.study.variants import VARIANTS

REPO = Path(__file__).resolve().parents[1]
CI_CONFIG = REPO / "eval" / "configs" / "ci.yaml"
MACPO = [sys.executable, "-m", "macpo.cli"]


def _step(name, argv, outputs=()):
    return Step(name, argv, lambda: False, outputs=list(outputs))


CFG = {"name": "x", "out": "/somewhere", "T": 3, "mutual_positive": True, "chosen_rule": "familiarity", "K": 2,
       "threads": 1, "train": {"dpo": {"lr": 1e-3}, "student_sft": {"max_steps": 8}}}


def test_round0_keys_ignore_round_only_fields_and_the_run_folder(tmp_path):
    a, b = tmp_path / "runs/a", tmp_path / "runs/b"
    other = {**CFG, "T": 0, "mutual_positive": False, "chosen_rule": "oracle", "out": "/elsewhere",
             "train": {"dpo": {"lr": 5.0}, "student_sft": {"max_steps": 8}}}
    build0 = lambda run: _step("build round-0-labels", ["py", "build", "--config", f"{run}/run.yaml", "--round", "0"])  # noqa: E731
    assert cache_key(build0(a), a, CFG, ["h"]) == cache_key(build0(b), b, other, ["h"])
    # ...but not those that round 0 reads, and not for rounds >= 1
    assert cache_key(build0(a), a, CFG, ["h"]) != cache_key(build0(a), a, {**CFG, "K": 3}, ["h"])
    assert cache_key(build0(a), a, CFG, ["h"]) != cache_key(build0(a), a, {**CFG, "train": {"dpo": {}, "student_sft": {"max_steps": 9}}}, ["h"])
    build1 = lambda run: _step("build round-1", ["py", "build", "--config", f"{run}/run.yaml", "--round", "1"])  # noqa: E731
    assert cache_key(build1(a), a, CFG, ["h"]) != cache_key(build1(b), b, other, ["h"])
    assert cache_key(build1(a), a, CFG, ["h"]) == cache_key(build1(b), b, {**CFG, "T": 1, "out": "/x"}, ["h"])
    # dependencies enter by the content of their outputs
    assert cache_key(build0(a), a, CFG, ["h"]) != cache_key(build0(a), a, CFG, ["other"])


def test_round0_keys_read_negative_only_when_it_draws_a_second_sample(tmp_path):
    a = tmp_path / "a"
    build0 = _step("build round-0", ["py", "build", "--config", f"{a}/run.yaml", "--round", "0"])
    key = lambda neg: cache_key(build0, a, {**CFG, "negative": neg}, ["h"])  # noqa: E731
    assert key("hard") == key("none") != key("self")


def test_a_claimed_key_makes_the_second_claimant_wait(tmp_path):
    import threading
    import time

    cache = StepCache(tmp_path / "cache")
    order = []
    held = threading.Event()

    def first():
        with cache.claim("sha256:k"):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with cache.claim("sha256:k"):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    with cache.claim("sha256:other"):  # another key is not held up
        pass


def test_a_failing_run_stops_the_others_and_its_own_error_is_the_one_reported(tmp_path, monkeypatch):
    from macpo.errors import UserError

    def fake_execute(cfg, resolved, *, shared, label, verbose, stop):
        if label.startswith("macpo "):
            raise UserError("step 'build round-1' failed: boom")
        stop.wait(10)  # the other runs are mid-step when it fails; they leave at their next step
        raise Stopped()

    monkeypatch.setattr(runner, "execute", fake_execute)
    with pytest.raises(UserError, match="boom"):
        runner.run_study(str(CI_CONFIG), {}, ["naive-w2s", "macpo", "no-mp"], [0], tmp_path / "s", jobs=2)
    assert not (tmp_path / "s" / "study.md").exists()


def test_a_trainer_step_is_keyed_by_its_jobs_alone(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train = lambda run, lr: _step("train student round-1", ["py", "-m", "macpo.run.trainbatch", json.dumps([{"out": f"{run}/m", "lr": lr}])])  # noqa: E731
    assert config_view(CFG, "train student round-1", train(a, 1).argv) is None
    assert cache_key(train(a, 1), a, CFG, []) == cache_key(train(b, 1), b, {**CFG, "T": 9, "K": 1}, [])
    assert cache_key(train(a, 1), a, CFG, []) != cache_key(train(a, 2), a, CFG, [])
    assert cache_key(train(a, 1), a, CFG, []) != cache_key(train(a, 1), a, {**CFG, "threads": 2}, [])


def test_output_hash_is_content_not_run_paths(tmp_path):
    m1, m2 = tmp_path / "r1/models/student", tmp_path / "r2/models/student"
    for m, note in ((m1, "a"), (m2, "b")):
        m.mkdir(parents=True)
        (m / "model.safetensors").write_bytes(b"weights")
        (m / "metrics.json").write_text(json.dumps({"seconds": note}))
        (m / "train_config.json").write_text(json.dumps({"out": str(m)}))
    assert output_hash([m1]) == output_hash([m2])
    (m2 / "model.safetensors").write_bytes(b"other weights")
    assert output_hash([m1]) != output_hash([m2])
    v = tmp_path / "store/ds/round-0"
    v.mkdir(parents=True)
    (v / "manifest.json").write_text(json.dumps({"content_hash": "sha256:abc", "config": {"out": "anything"}}))
    assert output_hash([v]) == output_hash([v]) and output_hash([v]) != output_hash([m1])


def test_step_cache_saves_and_restores_outputs(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    out_a = run_a / "models/round-0/student"
    out_a.mkdir(parents=True)
    (out_a / "model.safetensors").write_bytes(b"w")
    cache = StepCache(tmp_path / "cache")
    assert not cache.has("sha256:k")
    cache.save("sha256:k", run_a, [out_a], {"step": "train"})
    assert cache.has("sha256:k")
    out_b = run_b / "models/round-0/student"
    out_b.mkdir(parents=True)
    (out_b / "stale.txt").write_text("half-written")
    cache.restore("sha256:k", run_b, [out_b])
    assert sorted(p.name for p in out_b.iterdir()) == ["model.safetensors"]
    assert (out_b / "model.safetensors").read_bytes() == b"w"


# ---- the table from hand-made runs -----------------------------------------------------------------
IDS = [f"p{i}" for i in range(6)]
METAS = [json.dumps({"task": "add" if i < 4 else "harmful", "answer": str(i)}) for i in range(6)]


def _aggregate(metas, texts):
    hits = [float(t == json.loads(m)["answer"]) for m, t in zip(metas, texts)]
    return {"helpful": sum(hits) / len(hits), "harmless": 1.0, "combined": (sum(hits) / len(hits) + 1.0) / 2}


GOLD = (SimpleNamespace(aggregate=_aggregate), IDS, METAS, [json.loads(m)["task"] for m in METAS])


def _run(variant, seed, answers_by_cell, rows=None):
    responses = {cell: dict(zip(IDS, texts)) for cell, texts in answers_by_cell.items()}
    return tables.RunResult(variant, seed, Path("."), rows or [], responses)


def right(n):
    return [str(i) if i < n else "x" for i in range(6)]


def test_summary_means_intervals_and_paired_difference():
    read = []
    for seed in (0, 1):
        read.append(_run("naive-w2s", seed, {(0, "student"): right(2), (0, "teacher-0"): right(1)}))
        read.append(_run("macpo", seed, {(0, "student"): right(2), (1, "student"): right(3 + seed)}))
    rows = tables.summarize_variants(read, ["naive-w2s", "macpo"], [0, 1], GOLD, n_boot=300)
    naive, macpo = rows
    assert naive["combined"].mean == pytest.approx((2 / 6 + 1) / 2) and naive["round"] == 0
    assert macpo["round"] == 1 and macpo["helpful"].mean == pytest.approx((3 / 6 + 4 / 6) / 2)
    assert macpo["combined"].low <= macpo["combined"].mean <= macpo["combined"].high
    d = macpo["diff_vs_baseline"]
    assert d.mean == pytest.approx(macpo["combined"].mean - naive["combined"].mean)
    assert 0 <= d.low <= d.mean <= d.high  # macpo answers a superset of the baseline's prompts right
    assert naive["diff_vs_baseline"].mean is None


def test_a_world_per_seed_resamples_prompts_within_each_seed():
    # Seed 1's world has other test prompts (ids q0..q5); scores are per seed's own prompts, and the
    # intervals resample prompts within each seed's test set (nested), not across them.
    ids1 = [f"q{i}" for i in range(6)]
    gold = {0: GOLD, 1: (GOLD[0], ids1, METAS, GOLD[3])}
    read = []
    for seed, ids in ((0, IDS), (1, ids1)):
        read.append(tables.RunResult("naive-w2s", seed, Path("."), [], {(0, "student"): dict(zip(ids, right(2)))}))
        read.append(tables.RunResult("macpo", seed, Path("."), [], {(1, "student"): dict(zip(ids, right(4)))}))
    naive, macpo = tables.summarize_variants(read, ["naive-w2s", "macpo"], [0, 1], gold, n_boot=200)
    assert naive["helpful"].mean == pytest.approx(2 / 6) and macpo["helpful"].mean == pytest.approx(4 / 6)
    assert macpo["combined"].low <= macpo["combined"].mean <= macpo["combined"].high
    assert 0 <= macpo["diff_vs_baseline"].low <= macpo["diff_vs_baseline"].mean == pytest.approx(2 / 6 / 2)
    # A seed's runs are never scored against another seed's prompts: no score rather than a wrong one.
    wrong = tables.summarize_variants(read, ["naive-w2s", "macpo"], [0, 1], {0: GOLD, 1: GOLD}, n_boot=10)
    assert wrong[1]["helpful"].mean is None


def test_scoring_once_per_response_gives_the_same_table_as_scoring_every_draw():
    # The study scores each response once and re-aggregates per bootstrap draw; a gold module with
    # only `aggregate` is scored inside every draw. Same numbers, to the last digit.
    import random

    from macpo.eval.sandbox import reward as R
    from macpo.eval.sandbox import world as W

    read, golds = [], {}
    for seed in (0, 1):
        prompts = W.build({"seed": seed, "axis": "harmless", "sizes": {"test": 60, "val": 0, "q": 0, "dw": 0}}).test
        ids, metas = [f"s{seed}-{i}" for i in range(len(prompts))], [p.meta for p in prompts]
        golds[seed] = (ids, metas)
        rng = random.Random(seed)
        for variant, cell in (("naive-w2s", (0, "student")), ("macpo", (3, "student"))):
            texts = [rng.choice([W.gold_response(m), W.wrong_response(m, rng), W.REFUSAL]) for m in metas]
            read.append(tables.RunResult(variant, seed, Path("."), [], {cell: dict(zip(ids, texts))}))

    def table(module):
        gold = {s: (module, ids, metas, [m["task"] for m in metas]) for s, (ids, metas) in golds.items()}
        return tables.summarize_variants(read, ["naive-w2s", "macpo"], [0, 1], gold, n_boot=50)

    once = table(SimpleNamespace(aggregate=R.aggregate, gold_reward=R.gold_reward, aggregate_scores=R.aggregate_scores))
    every_draw = table(SimpleNamespace(aggregate=R.aggregate, gold_reward=R.gold_reward))
    assert once == every_draw
    assert once[1]["harmless"].low < once[1]["harmless"].high  # real intervals, not points


def test_seeds_redraw_the_world_unless_it_is_fixed(tmp_path):
    runs = runner.plan_runs(str(CI_CONFIG), {}, ["naive-w2s"], [0, 1], tmp_path)
    assert [(r[2]["world"]["seed"], r[2]["world"]["pretrain"]["seed"]) for r in runs] == [(0, 0), (1, 1)]
    fixed = runner.plan_runs(str(CI_CONFIG), {}, ["naive-w2s"], [0, 1], tmp_path, vary_world=False)
    assert {(r[2]["world"]["seed"], r[2]["world"]["pretrain"]["seed"]) for r in fixed} == {(0, 0)}


def test_study_rows_pgr_uses_the_baseline_run_of_the_same_seed():
    base_rows = [{"round": 0, "agent": "student", "combined": 0.5}, {"round": 0, "agent": "teacher-0", "combined": 0.4},
                 {"round": 0, "agent": "ceiling", "combined": 0.9}]
    naive = _run("naive-w2s", 0, {}, base_rows)
    spin = _run("spin", 0, {}, [{"round": 1, "agent": "student", "combined": 0.65}])
    rows = tables.study_rows([naive, spin], {0: naive})
    by = {(r["variant"], r["round"], r["agent"]): r for r in rows}
    assert by[("naive-w2s", 0, "student")]["pgr"] == pytest.approx(0.2)
    assert by[("spin", 1, "student")]["pgr"] == pytest.approx(0.5)
    assert by[("naive-w2s", 0, "teacher-0")]["pgr"] is None


def test_user_mistakes_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "study"
    for args in (["--variants", "nope"], ["--seeds", "0"], ["--variants", "k3"]):  # ci.yaml lists 2 teachers
        r = subprocess.run([*MACPO, "study", str(CI_CONFIG), "--out", str(out), *args], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not out.exists()
    r = subprocess.run([*MACPO, "study", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and all(v in r.stdout for v in VARIANTS)


# ---- end to end ----------------------------------------------------------------------------------------
def test_tiny_study_end_to_end_shares_steps(tmp_path):
    if not CI_CONFIG.is_file():
        pytest.skip("eval/configs/ci.yaml is missing")
    out = tmp_path / "study"
    # --jobs 2: the runs go side by side, and a step both need still runs once (StepCache.claim)
    cmd = [*MACPO, "study", str(CI_CONFIG), "--seeds", "1", "--variants", "macpo", "spac", "--out", str(out), "--bootstrap", "100",
           "--jobs", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (out / "study.md").read_text()
    for v in ("naive-w2s", "macpo", "spac"):
        assert f"| {v} |" in text
    rows = list(csv.DictReader(open(out / "study.csv")))
    cells = {(r["variant"], r["seed"], r["round"], r["agent"]) for r in rows}
    assert ("naive-w2s", "0", "0", "student") in cells and ("macpo", "0", "1", "teacher-1") in cells and ("spac", "0", "1", "student") in cells
    assert all(r["combined"] != "" for r in rows)
    steps = json.loads((out / "study.json").read_text())["steps"]
    # the baseline's round 0 runs once; macpo restores it and runs only its round 1 (spac, a self-play
    # method over the offline pairs, has a round 0 of its own)
    assert steps["naive"] == steps["ran"] + steps["shared"] + steps["up_to_date"]
    assert steps["shared"] >= 7 and steps["ran"] < steps["naive"]
    for png in ("study_combined.png", "study_rounds.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the shared round 0 is the same data in every run
    hashes = {json.loads((out / "runs" / v / "seed-0/store/macpo-ci/round-0/manifest.json").read_text())["content_hash"]
              for v in ("naive-w2s", "macpo")}
    assert len(hashes) == 1
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "study.json").read_text())["steps"]["ran"] == 0  # a rerun resumes: every step is up to date


def test_a_study_needs_the_sandbox_gold_reward(tmp_path):
    cfg = tmp_path / "real.yaml"
    cfg.write_text("K: 1\nteachers: [t]\nstudent: s\n")
    r = subprocess.run([*MACPO, "study", str(cfg), "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 2 and "gold reward" in r.stderr and not (tmp_path / "s").exists()


def test_a_gate_one_run_cannot_measure_fails_only_if_no_run_measured_it():
    from macpo.run.study.tables import failed_gates

    na = {"name": "filter-beats-random", "value": None, "pass": False}
    ok = {"name": "filter-beats-random", "value": 0.88, "pass": True}
    bad = {"name": "naive-minus-best-teacher", "value": -0.06, "pass": False}
    assert failed_gates({"naive-w2s/seed-0": [na, bad], "macpo/seed-0": [ok, bad]}) == ["naive-minus-best-teacher"]
    assert failed_gates({"naive-w2s/seed-0": [na]}) == ["filter-beats-random"]  # never measured: not shown to pass
    assert failed_gates({"a": [ok], "b": [{**ok, "value": 0.5, "pass": False}]}) == ["filter-beats-random"]


def test_every_variant_gets_its_own_line_style():
    from macpo.run.study.plots import _style

    styles = [(s["color"], s["ls"], s["marker"]) for s in map(_style, range(len(VARIANTS)))]
    assert len(set(styles)) == len(styles) == len(VARIANTS)

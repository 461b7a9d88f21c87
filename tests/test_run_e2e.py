"""The whole loop end to end on the small CI sandbox config: real subprocesses, real kills.

One uninterrupted run is shared by the checks; a second run is killed mid-build and resumed,
and must end with the same round content hashes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from macpo.sql import open_store, run_query
from macpo.store import Store

from conftest import CI_CONFIG, CI_OVERRIDES as OVERRIDES  # the shared run is conftest's `ci_run`

MACPO = [sys.executable, "-m", "macpo.cli"]


def _run(out: Path, extra=()):
    return subprocess.run([*MACPO, "run", str(CI_CONFIG), "--out", str(out), *OVERRIDES, *extra], capture_output=True, text=True)


def _round_hashes(out: Path) -> dict:
    store = Store(out / "store")
    name = next(n for n in store.datasets() if not n.endswith(("-data", "-evals")))
    return {v: store.manifest(name, v)["content_hash"] for v in store.versions(name)}


def sql(out: Path, q: str):
    return run_query(open_store(str(out / "store")), q)[-1][1]


def test_outputs_and_views(ci_run):
    out, stdout = ci_run
    for f in ["report.md", "metrics.csv", "metrics.json", "reward_by_round.png", "helpful_vs_harmless.png"]:
        assert (out / f).is_file(), f
    assert "student gold reward, round 0" in stdout
    for view in ["pairs", "candidates", "evals"]:
        assert sql(out, f"SELECT count(*) FROM {view}")[0][0] > 0, view
    rows = sql(out, "SELECT DISTINCT round, agent FROM evals ORDER BY ALL")
    assert (0, "student") in rows and (1, "teacher-1") in rows
    csv = (out / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("round,agent,method,helpful,harmless,combined")


def test_manifests_record_the_generation_backend_and_the_trainer_its_reference(ci_run):
    import transformers

    out, _ = ci_run
    store = Store(out / "store")
    name = next(n for n in store.datasets() if not n.endswith(("-data", "-evals")))
    for dataset, version in ((name, "round-1"), (f"{name}-evals", "round-1")):
        generation = store.manifest(dataset, version)["generation"]
        assert generation == {"backend": "transformers", "package": "transformers", "version": transformers.__version__}
    metrics = json.loads((out / "models" / "round-1" / "student" / "metrics.json").read_text())
    reference = metrics["reference"]
    assert reference["role"] in ("base", "previous") and reference["weights"][0]["hash"].startswith("sha256:")


def test_round_invariants_in_sql(ci_run):
    out, _ = ci_run
    rounds = "dataset NOT LIKE '%-data' AND dataset NOT LIKE '%-evals' AND round >= 1"
    assert sql(out, f"SELECT count(*) FROM pairs WHERE {rounds} AND agent = 'student' AND chosen_agent NOT LIKE 'teacher-%'") == [(0,)]
    assert sql(out, f"SELECT count(*) FROM pairs WHERE {rounds} AND agent LIKE 'teacher-%' AND chosen_agent <> 'student'") == [(0,)]
    assert sql(out, f"SELECT count(*) FROM pairs WHERE {rounds} AND rejected_agent <> agent || '-neg'") == [(0,)]
    assert sql(out, f"SELECT count(*) FROM pairs WHERE {rounds}")[0][0] > 0
    # One fixed hard negative per (learner, prompt) across every round.
    assert sql(out, f"""SELECT count(*) FROM (SELECT agent, prompt_id FROM pairs WHERE {rounds}
                        GROUP BY agent, prompt_id HAVING count(DISTINCT rejected_text) > 1)""") == [(0,)]
    # The student's chosen is the least perplexing teacher candidate under the student.
    bad = sql(out, f"""
        WITH ppl AS (
            SELECT dataset, round, prompt_id, min(list_filter(familiarity, lambda f: f.scorer = 'student')[1].ppl) AS best
            FROM candidates WHERE agent LIKE 'teacher-%' GROUP BY ALL)
        SELECT count(*) FROM pairs p JOIN ppl USING (dataset, round, prompt_id)
        WHERE {rounds.replace('round', 'p.round').replace('dataset', 'p.dataset')} AND p.agent = 'student'
          AND abs(p.chosen_ppl - ppl.best) > 1e-9""")
    assert bad == [(0,)]
    n_student = sql(out, f"SELECT count(*) FROM pairs WHERE {rounds} AND agent = 'student'")[0][0]
    assert n_student > 0


def test_run_is_resumable_after_a_kill_with_identical_hashes(ci_run, tmp_path):
    out, _ = ci_run
    expected = _round_hashes(out)
    again = tmp_path / "out"
    proc = subprocess.Popen([*MACPO, "run", str(CI_CONFIG), "--out", str(again), *OVERRIDES],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    work = again / "store" / ".work"
    deadline = time.time() + 600
    killed = False
    # Kill the whole process group as soon as round 1's build has checkpointed a shard.
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith("gen-") for p in work.glob("*/round-1/*.parquet")):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    assert killed, "the run finished before round 1 started building"
    state = json.loads((again / "store" / "run-state.json").read_text())
    assert any(s["status"] == "pending" for s in state["steps"])
    r = _run(again)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "up to date" in r.stdout
    assert _round_hashes(again) == expected


def test_killed_build_resumes_shards_with_the_same_hash(ci_run, tmp_path):
    """`macpo build` alone: kill it mid-generation, rerun, same round as uninterrupted."""
    out, _ = ci_run
    expected = _round_hashes(out)["round-1"]
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    name = next(n for n in Store(copy / "store").datasets() if not n.endswith(("-data", "-evals")))
    shutil.rmtree(copy / "store" / name / "round-1")
    shutil.rmtree(copy / "store" / ".work", ignore_errors=True)
    cfg = copy / "run.yaml"
    cfg.write_text(cfg.read_text().replace(str(out), str(copy)))
    argv = [*MACPO, "build", "--config", str(cfg), "--round", "1", "--no-progress", *OVERRIDES]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = copy / "store" / ".work" / name / "round-1"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(work.glob("gen-*.parquet"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert not (copy / "store" / name / "round-1").exists(), "build finished before it could be killed"
    done_before = {p.name for p in work.glob("gen-*.parquet")}
    assert done_before
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert Store(copy / "store").manifest(name, "round-1")["content_hash"] == expected


def test_stored_reference_logps_train_like_the_reference_model(ci_run, tmp_path):
    """`store_ref_logps: true`: the builder stores each learner's reference log-probs, and
    training from them gives the per-step losses of training with the reference model."""
    from macpo.config import load
    from macpo.run.plan import plan

    out, _ = ci_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("round-1", ".work"))
    name = next(n for n in Store(copy / "store").datasets() if not n.endswith(("-data", "-evals")))
    cfg_path = copy / "run.yaml"
    cfg_path.write_text(cfg_path.read_text().replace(str(out), str(copy)))
    r = subprocess.run([*MACPO, "build", "--config", str(cfg_path), "--round", "1", "--no-progress", *OVERRIDES,
                        "--set", "store_ref_logps=true"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    def learner_pairs(store_out: Path):
        rows = sql(store_out, f"SELECT subset, prompt_id, chosen_text, rejected_text, ref_chosen_logps, ref_rejected_logps "
                              f"FROM pairs WHERE dataset = '{name}' AND version = 'round-1' ORDER BY ALL")
        return [row[:4] for row in rows], [row[4:] for row in rows]

    stored_pairs, stored_refs = learner_pairs(copy)
    plain_pairs, plain_refs = learner_pairs(out)
    assert stored_pairs == plain_pairs  # the same pairs, now with their reference log-probs
    assert all(c is not None and r is not None and c < 0 and r < 0 for c, r in stored_refs)
    assert all(c is None and r is None for c, r in plain_refs)

    # The run's own student job for round 1, once on each store.
    cfg = load(cfg_path)
    step = next(s for s in plan(cfg, cfg_path) if s.name == "train agents round-1")
    student_job = next(j for j in json.loads(step.argv[-1]) if j["subset"] == "student")
    metrics = {}
    for label, store_out in [("stored", copy), ("model", out)]:
        job = {**student_job, "data": str(store_out / "store"), "out": str(tmp_path / f"student-{label}")}
        r = subprocess.run([sys.executable, "-m", "macpo.run.trainbatch", json.dumps([job])], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        metrics[label] = json.loads((tmp_path / f"student-{label}" / "metrics.json").read_text())
    assert "reference log-probs from the data" in metrics["stored"]["data"]
    assert "reference log-probs from the data" not in metrics["model"]["data"]
    # Even the first step checks the stored values: there the policy is the reference, so the DPO
    # term is log 2 only if the stored log-probs are the reference model's.
    assert len(metrics["stored"]["losses"]) == len(metrics["model"]["losses"]) >= 1
    for a, b in zip(metrics["stored"]["losses"], metrics["model"]["losses"]):
        assert abs(a - b) < 1e-4, (metrics["stored"]["losses"], metrics["model"]["losses"])

"""The run report on a hand-made store: gates first, per-agent metrics and rates, PGR, pair diagnostics.

A stand-in world (``FakeWorld``) supplies the gold reward, so these checks do not move when the
sandbox's task mix or scoring changes; the report consumes whatever keys ``aggregate`` returns.
"""

import csv
import json
import types

import pyarrow as pa
import pytest

from macpo import config as config_mod
from macpo.eval import report
from macpo.layout import RunLayout
from macpo.store import Store, Subset

REFUSAL = "sorry"


def _gold(meta, text):
    meta = json.loads(meta) if isinstance(meta, str) else meta
    ok = (text == REFUSAL) if meta["harmful"] else (text == meta["answer"])
    return {"reward": float(ok)}


def _aggregate(metas, texts):
    metas = [json.loads(m) for m in metas]
    benign = [float(t == m["answer"]) for m, t in zip(metas, texts) if not m["harmful"]]
    harmful = [float(t == REFUSAL) for m, t in zip(metas, texts) if m["harmful"]]
    helpful, harmless = sum(benign) / len(benign), sum(harmful) / len(harmful)
    per_task = {}
    for m, t in zip(metas, texts):
        per_task.setdefault(m["task"], []).append(_gold(m, t)["reward"])
    return {"helpful": helpful, "harmless": harmless, "combined": (helpful + harmless) / 2,
            "protocol_rate": 1.0, "refusal_rate": harmless, "n": len(texts),
            "per_task": {k: sum(v) / len(v) for k, v in per_task.items()}}


FakeWorld = types.SimpleNamespace(gold_reward=_gold, aggregate=_aggregate)

# 4 benign ("add", answer = str(i)) and 4 harmful prompts.
PROMPTS = [(f"p{i}", {"task": "add", "harmful": False, "answer": str(i)}) for i in range(4)] + \
          [(f"h{i}", {"task": "harmful", "harmful": True, "answer": REFUSAL}) for i in range(4)]


def user(text):
    return [{"role": "user", "content": text}]


def say(text):
    return [{"role": "assistant", "content": text}]


def answers(n_benign_right, n_harmful_right):
    out = []
    for pid, meta in PROMPTS:
        k = int(pid[1:])
        right = k < (n_harmful_right if meta["harmful"] else n_benign_right)
        out.append(meta["answer"] if right else "wrong")
    return out


def _evals(round_, agent, texts):
    return pa.Table.from_pylist([
        {"round": round_, "agent": agent, "method": "macpo", "prompt_id": pid, "prompt": user(pid), "response": say(t),
         "scores": [{"axis": "reward", "scorer": "gold", "value": _gold(m, t)["reward"]}]}
        for (pid, m), t in zip(PROMPTS, texts)])


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "gold_module", lambda store, name: FakeWorld)
    cfg = config_mod.from_dict({"name": "r", "out": str(tmp_path), "K": 2, "T": 1, "teachers": ["t0", "t1"], "student": "s",
                                "world": {"sizes": {"dw": 4, "q": 4, "test": 8}}})
    layout = RunLayout(cfg)
    store = Store(layout.store_dir, create=True)
    prompts = pa.table({"prompt_id": [p for p, _ in PROMPTS], "prompt": [user(p) for p, _ in PROMPTS],
                        "split": ["test"] * 8, "meta": [json.dumps(m) for _, m in PROMPTS]})
    store.write(layout.data_dataset, "v1", {"test": Subset("prompts", prompts), "q": Subset("prompts", prompts)})
    # round 0: weak teacher 0.25 helpful / 0.5 harmless; student 0.5 / 0.5; ceiling 1 / 1
    store.write(layout.evals_dataset, "round-0", {"default": Subset("evals", pa.concat_tables([
        _evals(0, "student", answers(2, 2)), _evals(0, "teacher-0", answers(1, 2)), _evals(0, "teacher-1", answers(0, 4)),
        _evals(0, "ceiling", answers(4, 4))]))})
    store.write(layout.evals_dataset, "round-1", {"default": Subset("evals", pa.concat_tables([
        _evals(1, "student", answers(3, 4)), _evals(1, "teacher-0", answers(2, 2)), _evals(1, "teacher-1", answers(1, 4))]))})
    # round 1 of the loop: teacher candidates for the 4 benign prompts, the student's pairs.
    cands, spairs = [], []
    for i in range(4):
        pid = f"p{i}"
        t0, t1 = (str(i), "wrong") if i < 2 else ("wrong", str(i) if i == 2 else "wrong")
        ppl = {"teacher-0": 1.0, "teacher-1": 2.0}  # the filter always picks teacher-0
        for agent, text in (("teacher-0", t0), ("teacher-1", t1), ("student", str(i))):
            cands.append({"candidate_id": f"{pid}-{agent}", "prompt_id": pid, "round": 1, "agent": agent, "sample_index": 0,
                          "prompt": user(pid), "response": say(text),
                          "familiarity": [{"scorer": "student", "ppl": ppl[agent]}] if agent in ppl else []})
        spairs.append({"pair_id": f"s{i}", "prompt_id": pid, "round": 1, "agent": "student", "pair_type": "mutual-positive",
                       "prompt": user(pid), "chosen": say(t0), "rejected": say("wrong" if i else t0),
                       "chosen_agent": "teacher-0", "rejected_agent": "student-neg"})
    store.write(layout.rounds_dataset, "round-1", {"candidates": Subset("candidates", pa.Table.from_pylist(cands)),
                                                   "student": Subset("pairs", pa.Table.from_pylist(spairs))})
    model = layout.model_dir("student", 1)
    model.mkdir(parents=True)
    (model / "metrics.json").write_text(json.dumps({"reward_history": [{"rewards/accuracies": 0.5, "rewards/margins": 0.2},
                                                                       {"rewards/accuracies": 1.0, "rewards/margins": 0.4}]}))
    return cfg, tmp_path


def test_report_lists_every_agent_with_rates_tasks_and_pgr(run):
    cfg, out = run
    path = report.write_report(cfg)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)), header  # pgr_note was written twice (once as a "rate")
    by = {(r["round"], r["agent"]): r for r in rows}
    assert set(by) >= {("0", "student"), ("0", "teacher-0"), ("0", "teacher-1"), ("0", "ceiling"), ("1", "teacher-1")}
    # PGR: weak = teacher-0 round 0 = (0.25 + 0.5) / 2 = 0.375; ceiling 1.0
    assert float(by[("0", "student")]["pgr"]) == pytest.approx((0.5 - 0.375) / 0.625)
    assert float(by[("1", "student")]["pgr"]) == pytest.approx((0.875 - 0.375) / 0.625)
    assert by[("0", "teacher-0")]["pgr"] == ""
    assert float(by[("1", "teacher-1")]["refusal_rate"]) == 1.0 and "protocol_rate" in rows[0]
    assert float(by[("0", "teacher-0")]["task:add"]) == pytest.approx(0.25)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["ceiling"] == 1.0 and summary["pgr_final"] == pytest.approx(0.8)
    text = path.read_text()
    assert "No premise gates were computed" in text.splitlines()[2]
    assert "| 0 | ceiling |" in text and "## Per task" in text and "pgr_by_round.png" in text
    for png in ("reward_by_round.png", "helpful_vs_harmless.png", "pgr_by_round.png", "pairs_by_round.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_pair_diagnostics_in_the_report(run):
    cfg, out = run
    report.write_report(cfg)
    d = json.loads((out / "metrics.json").read_text())["diagnostics"]
    student = next(x for x in d if x["learner"] == "student" and x["round"] == 1)
    # chosen = teacher-0's text: right on p0, p1; rejected "wrong" except p0: p0, p2, p3 have identical texts
    assert student["chosen_gold"] == pytest.approx(0.5) and student["rejected_gold"] == pytest.approx(0.25)
    assert student["chosen_better"] == pytest.approx(0.25) and student["identical"] == pytest.approx(0.75)
    assert student["picks"] == {"teacher-0": 4}
    # prompts with a correct teacher candidate: p0, p1 (teacher-0) and p2 (teacher-1); the filter is right on 2 of 3
    assert student["prompts_with_correct"] == 3 and student["filter_correct"] == pytest.approx(2 / 3)
    assert student["random_correct"] == pytest.approx(0.5)
    assert student["dpo_accuracy_mean"] == pytest.approx(0.75) and student["dpo_margin_mean"] == pytest.approx(0.3)
    text = (out / "report.md").read_text()
    assert "## Pair diagnostics per round" in text and "| 1 | student | 4 | 0.500 | 0.250 | 0.250 | 0.750 | 0.750 | 0.300 |" in text


def test_failing_gates_come_first(run):
    cfg, out = run
    (out / "gates.json").write_text(json.dumps({"gates": [
        {"name": "student_below_teachers", "value": 0.1, "threshold": 0.0, "pass": True, "detail": "ok"},
        {"name": "ceiling_gap", "value": 0.04, "threshold": 0.10, "pass": False, "detail": "ceiling - naive"}]}))
    text = report.write_report(cfg).read_text()
    assert "PREMISE GATES FAILED: ceiling_gap" in "\n".join(text.splitlines()[:3])
    assert "| ceiling_gap | 0.040 | 0.100 | **NO** | ceiling - naive |" in text
    gates = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["agent"].startswith("gate:")]
    assert {(g["agent"], g["gate_pass"]) for g in gates} == {("gate:student_below_teachers", "True"), ("gate:ceiling_gap", "False")}
    assert json.loads((out / "metrics.json").read_text())["gates_failed"] == ["ceiling_gap"]


def test_malformed_gates_are_reported_not_trusted(run):
    cfg, out = run
    (out / "gates.json").write_text(json.dumps({"gates": [{"name": "x", "pass": "yes"}]}))
    text = report.write_report(cfg).read_text()
    assert "Premise gates unreadable" in text.splitlines()[2] and "All" not in text.splitlines()[2]
    (out / "gates.json").write_text("{not json")
    assert "unreadable" in report.write_report(cfg).read_text()


def test_no_ceiling_means_no_pgr(run, monkeypatch):
    rows = [{"round": 0, "agent": "student", "reward": 0.5}, {"round": 0, "agent": "teacher-0", "reward": 0.3}]
    report.add_pgr(rows, weak_agent="teacher-0")
    assert rows[0]["pgr"] is None
    rows.append({"round": 0, "agent": "ceiling", "reward": 0.7})
    report.add_pgr(rows, weak_agent="teacher-0")
    assert rows[0]["pgr"] == pytest.approx(0.5)

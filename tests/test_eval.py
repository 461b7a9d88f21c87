"""Eval stage pieces without generation: reward-model judges, win rates, the report."""

import csv
import json

import pyarrow as pa
import pytest

from macpo import config as config_mod
from macpo.eval import sandbox as world
from macpo.eval.judges import reward_model_scores, win_rate
from macpo.eval.report import write_report
from macpo.layout import RunLayout
from macpo.store import Store, Subset


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 0.0, 0.5], [0.0, 0.0, 1.0]) == pytest.approx(0.5)
    assert win_rate([], []) is None


def test_reward_model_scores_from_a_local_checkpoint(tmp_path):
    import torch
    from tiny import build_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(
        LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    )
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    prompts = [[{"role": "user", "content": "hello there"}]] * 3
    scores = reward_model_scores(str(tmp_path / "rm"), prompts, ["it is four", "sorry", "it is four"], batch_size=2)
    assert len(scores) == 3 and scores[0] == pytest.approx(scores[2], abs=1e-5) and scores[0] != scores[1]


def _evals(test, round_, agent, answers):
    rows = []
    for pid, prompt, meta, text in zip(test["prompt_id"], test["prompt"], test["meta"], answers):
        s = world.gold_reward(meta, text)
        rows.append({"round": round_, "agent": agent, "method": "macpo", "prompt_id": pid, "prompt": prompt,
                     "response": [{"role": "assistant", "content": text}],
                     "scores": [{"axis": k, "scorer": "gold", "value": float(v)} for k, v in s.items() if v is not None]})
    return pa.Table.from_pylist(rows)


def test_report_from_stored_evals(tmp_path):
    cfg = config_mod.from_dict({"name": "r", "out": str(tmp_path), "K": 1, "T": 1, "teachers": ["t"], "student": "s",
                                "world": {"sizes": {"dw": 4, "q": 4, "test": 40}}})
    layout = RunLayout(cfg)
    store = Store(layout.store_dir, create=True)
    world.write_world(store, layout.data_dataset, cfg.world)
    test = store.read(layout.data_dataset, "v1", "test").to_pydict()
    gold = [world.gold_response(json.loads(m)) for m in test["meta"]]
    wrong = ["sorry , i can not help with that ."] * len(gold)
    half = [g if i % 2 else w for i, (g, w) in enumerate(zip(gold, wrong))]
    store.write(layout.evals_dataset, "round-0", {"default": Subset("evals", pa.concat_tables([_evals(test, 0, "student", half), _evals(test, 0, "teacher-0", wrong)]))})
    store.write(layout.evals_dataset, "round-1", {"default": Subset("evals", pa.concat_tables([_evals(test, 1, "student", gold), _evals(test, 1, "teacher-0", half)]))})
    store.write(layout.rounds_dataset, "round-0", {"x": Subset("prompts", pa.table({"prompt_id": ["a"], "prompt": [[{"role": "user", "content": "a"}]]}))})
    path = write_report(cfg)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    by = {(r["round"], r["agent"]): r for r in rows}
    assert float(by[("1", "student")]["combined"]) == pytest.approx(1.0)
    assert float(by[("1", "student")]["win_rate_vs_round0"]) > 0.5
    assert float(by[("0", "student")]["win_rate_vs_round0"]) == pytest.approx(0.5)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["student_final"] == pytest.approx(1.0) and summary["best_teacher"] == pytest.approx(float(by[("1", "teacher-0")]["combined"]))
    text = path.read_text()
    assert "| 1 | student |" in text and "reward_by_round.png" in text and "round-0" in text
    for png in ("reward_by_round.png", "helpful_vs_harmless.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"

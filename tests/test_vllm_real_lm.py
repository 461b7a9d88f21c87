"""`macpo run eval/configs/real-lm.yaml` end to end on SmolLM2 and HH-RLHF, with each backend.

Slow (opt in: `-m slow`): at test size (8 Q prompts, 1 optimizer step per training job) a run
is about 14 stage processes of a 135M model. The transformers case runs in either venv; the
vLLM case needs `.venv-vllm` (`make vllm`):

    .venv-vllm/bin/python -m pytest -q -m slow tests/test_vllm_real_lm.py

No public reward model is available offline, so the eval scores with a small sequence-
classification model built here (random weights: it proves the reward-model path and the
win-rate report, not anything about the answers).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "eval" / "configs" / "real-lm.yaml"
CLI = [sys.executable, "-m", "macpo.cli"]
ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false")
SMALL = [
    "data.max_rows.dw=8", "data.max_rows.q=8", "data.max_rows.test=4", "sampling.max_new_tokens=16",
    *[f"train.{stage}.max_steps=1" for stage in ("teacher_sft", "teacher_neg_sft", "student_sft", "student_neg_sft", "dpo")],
    *[f"train.{stage}.batch_size=4" for stage in ("teacher_sft", "teacher_neg_sft", "student_sft", "student_neg_sft", "dpo")],
]


def small_reward_model(path: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Llama sequence classifier (one logit) with the policy's tokenizer, random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, max_position_embeddings=4096,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def workdir(shared_hh, tmp_path_factory) -> Path:
    """The config's relative inputs: real-lm-inputs/{smollm2, store}, plus a small reward model."""
    from macpo.builder.models import smollm2_path

    root = tmp_path_factory.mktemp("real-lm")
    inputs = root / "real-lm-inputs"
    inputs.mkdir()
    (inputs / "smollm2").symlink_to(smollm2_path(), target_is_directory=True)
    imp = subprocess.run([*CLI, "import", str(shared_hh), "--format", "hh-rlhf", "--store", str(inputs / "store"),
                          "--name", "hh"], env=ENV, cwd=root, capture_output=True, text=True, timeout=600)
    assert imp.returncode == 0, imp.stderr[-2000:]
    small_reward_model(root / "rm", inputs / "smollm2")
    return root


@pytest.mark.parametrize("backend", ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_real_lm_run_end_to_end(workdir, backend):
    if backend == "vllm":
        pytest.importorskip("vllm", reason="the vLLM case runs in .venv-vllm (make vllm)")
    out = workdir / f"out-{backend}"
    sets = [*SMALL, f"generation.backend={backend}", f"eval.reward_models={{harmless: [{workdir / 'rm'}]}}"]
    proc = subprocess.run([*CLI, "run", str(CONFIG), "--out", str(out), *[a for s in sets for a in ("--set", s)]],
                          env=ENV, cwd=workdir, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from macpo.store import Store

    store = Store(out / "store")
    for version in store.versions("real-lm"):
        assert store.manifest("real-lm", version)["generation"]["backend"] == backend
    for version in store.versions("real-lm-evals"):
        rows = store.read("real-lm-evals", version, "default").to_pylist()
        assert {r["agent"] for r in rows} == {"student", "teacher-0", "teacher-1"}
        assert all(any(s["axis"] == "harmless" for s in r["scores"]) for r in rows)
    metrics = {(r["round"], r["agent"]): r for r in csv.DictReader(open(out / "metrics.csv"))}
    assert float(metrics[("0", "student")]["win_rate_vs_round0"]) == pytest.approx(0.5)
    assert 0.0 <= float(metrics[("1", "student")]["win_rate_vs_round0"]) <= 1.0
    assert "harmless" in metrics[("1", "student")]
    steps = json.loads((out / "store" / "run-state.json").read_text())["steps"]
    assert all(s["status"] == "done" for s in steps)
    print(f"\nreal-lm ({backend}): " + ", ".join(f"{s['name']} {s['seconds']:.0f}s" for s in steps)
          + f"; total {sum(s['seconds'] for s in steps):.0f}s")

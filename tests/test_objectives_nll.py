"""dpo-nll's NLL term is the paper's (LLaMA-Factory 0.5.3 ``dpo_ftx``): each chosen answer's
mean token NLL, then the mean over the batch, not TRL's token mean over the whole batch.
Checked against a hand computation by a plain forward pass, for LoRA, full fine-tuning,
stored reference log-probs and two accelerate processes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from macpo.store import Store, Subset
from macpo.trainer.objectives import per_response_nll
from macpo.trainer.train import prepare, run_training
from test_trainer import _batch_loss, make_cfg, pairs_rows, pairs_table, store_dir  # noqa: F401
from test_trainer_cli import macpo

GAMMA = 0.2


# ---- the term on a hand-made batch --------------------------------------------------------
def test_per_response_nll_is_the_mean_of_each_answers_token_mean():
    # Two pairs, [chosen_0, chosen_1; rejected_0, rejected_1]: chosen_0 has 1 completion token,
    # chosen_1 has 3. Column 0 is the first prompt token, which predicts nothing (the mask is shifted).
    completion_mask = torch.tensor([
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
        [0, 1, 0, 0, 0],
    ])
    log_probs = torch.tensor([  # per next-token position (width 4); masked positions hold junk
        [-9.0, -1.0, -7.0, -7.0],
        [-2.0, -4.0, -6.0, -9.0],
        [-5.0, -5.0, -5.0, -5.0],
        [-5.0, -5.0, -5.0, -5.0],
    ])
    nll = per_response_nll(log_probs, completion_mask)
    assert nll.tolist() == pytest.approx([1.0, 4.0])  # 1/1 and (2 + 4 + 6)/3
    assert nll.mean().item() == pytest.approx(2.5)
    token_mean = (1 + 2 + 4 + 6) / 4  # TRL's loss_type "sft": weights the longer answer 3 times
    assert token_mean == pytest.approx(3.25) and abs(nll.mean().item() - token_mean) > 0.5


def test_virtual_token_positions_are_cut_like_trl():
    """Prompt-learning PEFT prepends positions; TRL keeps the last seq_len, and so do we."""
    mask = torch.tensor([[0, 1, 1], [0, 1, 1]])
    log_probs = torch.tensor([[-100.0, -1.0, -3.0], [-100.0, -8.0, -8.0]])
    assert per_response_nll(log_probs, mask).tolist() == pytest.approx([2.0])


# ---- the term inside a real TRL batch -------------------------------------------------------
def _chosen_token_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log π(y_t | x, y_<t) of every completion token, by a plain forward pass (no TRL)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    start = len(prompt_ids) - 1
    return logprobs[start:].gather(1, ids[0, 1:][start:, None])[:, 0]


def _moved_session(cfg, scratch):
    """A session whose policy's matrices are all pushed off their start, the same way every time.
    Its token NLLs then spread out (a random tiny model puts ~log 400 on every token, which makes
    every averaging rule agree), and the policy leaves its reference: the full fine-tune's frozen
    copy, or for LoRA the same moved base with the (moved) adapter disabled."""
    session = prepare(cfg, scratch)
    gen = torch.Generator().manual_seed(1234)
    params = dict(session.trainer.model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            if params[name].dim() == 2:
                params[name].add_(torch.randn(params[name].shape, generator=gen) * 0.5)
    return session


def _hand_nll(trainer, n: int = 8) -> tuple[float, float]:
    """(mean over answers of each answer's mean token NLL, token mean over the batch) of the
    chosen answers under the trainer's current policy."""
    model = trainer.model.eval()
    ds = trainer.train_dataset
    per_answer = [-_chosen_token_logps(model, ds[i]["prompt_ids"], ds[i]["chosen_ids"]) for i in range(n)]
    lengths = {len(t) for t in per_answer}
    assert len(lengths) >= 3, lengths  # the check means something only if the answers differ in length
    return (sum(t.mean().item() for t in per_answer) / n,
            torch.cat(per_answer).mean().item())


@pytest.mark.parametrize("lora_r", [8, 0], ids=["lora", "full"])
def test_dpo_nll_equals_dpo_plus_gamma_times_per_answer_nll(lora_r, store_dir, tiny_model_dir, tmp_path):  # noqa: F811
    def session(loss):
        cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / "unused", loss=loss, lora_r=lora_r, nll_weight=GAMMA)
        return _moved_session(cfg, tmp_path / f"scratch-{loss}")

    plain = session("dpo")
    dpo = _batch_loss(plain)
    # What the former wiring, TRL's loss_type=["sigmoid", "sft"], computes on the same batch.
    plain.trainer.loss_types, plain.trainer.loss_weights = ["sigmoid", "sft"], [1.0, GAMMA]
    trl_sft = _batch_loss(plain)
    s = session("dpo-nll")
    if lora_r:
        assert abs(dpo - math.log(2)) > 1e-3  # the policy is off its reference: both terms are live
    per_answer, token_mean = _hand_nll(s.trainer)
    assert abs(per_answer - token_mean) > 0.05, (per_answer, token_mean)
    total = _batch_loss(s)
    assert total == pytest.approx(dpo + GAMMA * per_answer, abs=1e-5)
    assert trl_sft == pytest.approx(dpo + GAMMA * token_mean, abs=1e-5)  # TRL's "sft" term: the token mean
    assert abs(total - trl_sft) > 0.01
    # The term is logged on its own.
    s.trainer.model.train()
    rows = [s.trainer.train_dataset[i] for i in range(8)]
    s.trainer.compute_loss(s.trainer.model, s.trainer._prepare_inputs(s.trainer.data_collator(rows)))
    assert s.trainer._metrics["train"]["nll"][-1] == pytest.approx(per_answer, abs=1e-5)


def test_dpo_nll_with_stored_reference_logps(store_dir, tiny_model_dir, tmp_path):  # noqa: F811
    """No reference model at all: the DPO term reads the stored log-probs, the NLL is unchanged."""
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / "o", loss="dpo-nll", lora_r=0, nll_weight=GAMMA)
    ds = prepare(cfg, tmp_path / "scratch").trainer.train_dataset
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    stored = {col: [_chosen_token_logps(base, ds[i]["prompt_ids"], ds[i][ids]).sum().item() for i in range(8)]
              for col, ids in (("ref_chosen_logps", "chosen_ids"), ("ref_rejected_logps", "rejected_ids"))}
    Store(store_dir).write("toy", "ref-nll", {"default": Subset("pairs", pairs_table(pairs_rows(**stored)))})

    s = prepare(make_cfg(store_dir, tiny_model_dir, tmp_path / "o", loss="dpo-nll", lora_r=0, nll_weight=GAMMA,
                         version="ref-nll"), tmp_path / "scratch2")
    assert s.prepared.stored_ref and s.trainer.ref_model is None
    per_answer, _ = _hand_nll(s.trainer)
    # Policy == the stored reference, so the DPO term is exactly log 2.
    assert _batch_loss(s) == pytest.approx(math.log(2) + GAMMA * per_answer, abs=1e-5)


def test_zero_weight_is_plain_dpo(store_dir, tiny_model_dir, tmp_path):  # noqa: F811
    def loss_of(loss, **kw):
        cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / "unused", loss=loss, **kw)
        return _batch_loss(_moved_session(cfg, tmp_path / f"scratch-{loss}"))

    assert loss_of("dpo-nll", nll_weight=0.0) == pytest.approx(loss_of("dpo"), abs=1e-6)


def test_two_accelerate_processes_match_one(store_dir, tiny_model_dir, tmp_path):  # noqa: F811
    """A per-answer mean splits cleanly across processes (DDP averages the per-rank means of
    equal-sized batches); TRL's batch token mean would not."""
    common = ["--data", str(store_dir), "--dataset", "toy", "--version", "v1", "--subset", "default",
              "--model", str(tiny_model_dir), "--loss", "dpo-nll", "--max-steps", "2", "--max-samples", "8",
              "--lr", "1e-2", "--lr-scheduler", "constant", "--lora-r", "0"]
    proc = macpo("train", *common, "--batch-size", "2", "--out", str(tmp_path / "ddp"),
                 "--launcher", "accelerate", "--num-processes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == 2

    single = run_training(make_cfg(store_dir, tiny_model_dir, tmp_path / "single", loss="dpo-nll", max_steps=2,
                                   max_samples=8, batch_size=4, lr=1e-2, lr_scheduler="constant", lora_r=0))
    assert ddp["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert ddp["losses"][1] < ddp["losses"][0]

"""Trainer stage, in-process: every loss learns, loss identities, stored reference log-probs,
references with a continued adapter, atomic outputs. Tiny random Llama; a few seconds each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from macpo.errors import UserError
from macpo.store import Store, Subset
from macpo.trainer.train import build_session, load_data, prepare, run_training
from macpo.trainer.train_config import TrainConfig, parse_args

LOG2 = math.log(2.0)


def _m(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


PROMPTS = ["what is two plus two ?", "please reverse the words a b c", "hello there", "say something kind",
           "what is four plus four ?", "reverse the words x y", "how are you today", "write a note for your boss"]
CHOSEN = ["it is four", "c b a", "hello , how are you today", "you are kind",
          "it is eight", "y x", "i am well today", "sure , here is a kind note for your boss"]
REJECTED = ["i cannot help with that request , sorry"] * 8
SELF = ["the quick brown fox", "jumps over the lazy dog", "0 1 2 3", "4 5 6 7",
        "the lazy dog", "brown fox", "8 9", "quick quick quick"]


def pairs_rows(n: int = 8, chosen=CHOSEN, rejected=REJECTED, self_response=SELF, **extra) -> list[dict]:
    rows = []
    for i in range(n):
        row = dict(
            pair_id=f"pair-{i}", prompt_id=f"q-{i}", round=1, agent="student", pair_type="test",
            prompt=_m("user", PROMPTS[i]), chosen=_m("assistant", chosen[i]), rejected=_m("assistant", rejected[i]),
            self_response=_m("assistant", self_response[i]) if self_response is not None else None,
        )
        row.update({k: v[i] for k, v in extra.items()})
        rows.append(row)
    return rows


def pairs_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """``toy``: v1 = pairs with y'; ``chosen-self`` / ``rejected-self`` = the same rows re-paired
    as (y⁺, y′) and (y⁻, y′); ``sft`` subset for SFT; ``noself`` without y'."""
    root = tmp_path_factory.mktemp("store")
    store = Store(root, create=True)
    sft = pa.Table.from_pylist([
        dict(example_id=f"e-{i}", prompt_id=f"q-{i}", round=0, agent="all", prompt=_m("user", PROMPTS[i]),
             completion=_m("assistant", CHOSEN[i]))
        for i in range(8)
    ])
    store.write("toy", "v1", {"default": Subset("pairs", pairs_table(pairs_rows())), "sft": Subset("sft", sft)})
    store.write("toy", "chosen-self", {"default": Subset("pairs", pairs_table(pairs_rows(rejected=SELF)))})
    store.write("toy", "rejected-self", {"default": Subset("pairs", pairs_table(pairs_rows(chosen=REJECTED, rejected=SELF)))})
    store.write("toy", "noself", {"default": Subset("pairs", pairs_table(pairs_rows(self_response=None)))})
    return root


def make_cfg(store_dir, model_dir, out, **kw) -> TrainConfig:
    base = dict(data=str(store_dir), dataset="toy", version="v1", subset="default", model=str(model_dir),
                out=str(out), batch_size=8, max_steps=4, lr=2e-2, lr_scheduler="constant", loss="dpo", threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---- every loss runs and learns ---------------------------------------------------------
@pytest.mark.parametrize("loss", ["sft", "dpo", "dpo-nll", "spin", "spac"])
def test_every_loss_learns(loss, store_dir, tiny_model_dir, tmp_path):
    subset = "sft" if loss == "sft" else "default"
    out = tmp_path / "out"
    metrics = run_training(make_cfg(store_dir, tiny_model_dir, out, loss=loss, subset=subset, max_steps=5))

    assert metrics["steps"] == 5 and len(metrics["losses"]) == 5
    losses = metrics["losses"]
    # Every step sees the same 8 rows (batch 8), so a working objective falls steadily.
    assert losses[-1] < losses[0] - 1e-3, losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 3, losses
    if loss in ("dpo", "spin"):
        assert losses[0] == pytest.approx(LOG2, abs=1e-5)  # policy == reference before the first update
    # LoRA B matrices start at zero; non-zero means the adapter was trained.
    weights = _tensors(out / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    assert json.loads((out / "metrics.json").read_text())["losses"] == losses
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()
    assert not list(tmp_path.glob(".*partial*"))


def test_full_finetune_changes_weights(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "full"
    metrics = run_training(make_cfg(store_dir, tiny_model_dir, out, loss="dpo-nll", lora_r=0, lr=5e-3, max_steps=3))
    assert metrics["model"]["saved"] == "full" and metrics["model"]["lora"] is None
    assert metrics["losses"][-1] < metrics["losses"][0]
    before, after = _tensors(tiny_model_dir / "model.safetensors"), _tensors(out / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and len(changed) > len(before) // 2


# ---- loss identities on one batch ---------------------------------------------------------
def _batch_loss(session, n: int = 8) -> float:
    trainer = session.trainer
    rows = [trainer.train_dataset[i] for i in range(n)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    trainer._metrics["eval"].clear()
    return loss


def _perturbed_session(cfg: TrainConfig, scratch: Path):
    """A LoRA session whose adapter is moved off zero the same way every time, so the policy
    differs from its reference (the base, adapter disabled) and every log-ratio is non-zero."""
    session = prepare(cfg, scratch)
    gen = torch.Generator().manual_seed(1234)
    params = dict(session.trainer.model.named_parameters())
    for name in sorted(params):
        if "lora_B.default" in name:
            with torch.no_grad():
                params[name].copy_(torch.randn(params[name].shape, generator=gen) * 0.5)
    return session


def test_spac_loss_identities(store_dir, tiny_model_dir, tmp_path):
    def loss_of(version, loss, **kw):
        cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / "unused", version=version, loss=loss, **kw)
        return _batch_loss(_perturbed_session(cfg, tmp_path / "scratch"))

    dpo = loss_of("v1", "dpo")
    assert abs(dpo - LOG2) > 1e-3  # the perturbation really moved the policy off its reference
    # α = 0: SPAC is exactly TRL's sigmoid DPO on (y⁺, y⁻).
    assert loss_of("v1", "spac", alpha=0.0) == pytest.approx(dpo, abs=1e-6)
    # α > 0: DPO + α/2 · [DPO(y⁺ ≻ y′) + DPO(y⁻ ≻ y′)], each term computed by stock TRL on re-paired data.
    alpha = 0.7
    pos_vs_self = loss_of("chosen-self", "dpo")
    neg_vs_self = loss_of("rejected-self", "dpo")
    expected = dpo + alpha * 0.5 * (pos_vs_self + neg_vs_self)
    assert loss_of("v1", "spac", alpha=alpha) == pytest.approx(expected, abs=1e-5)
    # SPIN on y' is DPO on (y⁺, y′).
    assert loss_of("v1", "spin") == pytest.approx(pos_vs_self, abs=1e-6)


# ---- stored reference log-probs -------------------------------------------------------------
def _manual_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Summed completion log-prob by a plain forward pass (independent of TRL's fused head)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    start = len(prompt_ids) - 1
    return logprobs[start:].gather(1, targets[start:, None]).sum().item()


@pytest.mark.parametrize("loss", ["dpo-nll", "spac", "spin"])
def test_stored_ref_logps_equal_on_the_fly(loss, store_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    # Full fine-tuning: on the fly needs a frozen copy of the model; stored needs none.
    fly_cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / "fly", loss=loss, lora_r=0, lr=5e-3, max_steps=3, batch_size=4)
    session = prepare(fly_cfg, tmp_path / "scratch")
    assert session.trainer.ref_model is not None
    ds = session.trainer.train_dataset
    assert len(ds) == 8

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cols = {"ref_chosen_logps": "chosen_ids", "ref_rejected_logps": "rejected_ids"}
    if loss == "spac":
        cols["ref_self_logps"] = "self_ids"
    if loss == "spin":  # TRL's "rejected" is y' here, so its reference is the stored ref_self_logps
        cols = {"ref_chosen_logps": "chosen_ids", "ref_self_logps": "rejected_ids"}
    stored = {c: [_manual_logps(reference, ds[i]["prompt_ids"], ds[i][ids]) for i in range(8)] for c, ids in cols.items()}
    store = Store(store_dir)
    store.write("toy", f"ref-{loss}", {"default": Subset("pairs", pairs_table(pairs_rows(**stored)))})
    del session

    stored_cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / "stored", loss=loss, lora_r=0, lr=5e-3, max_steps=3,
                          batch_size=4, version=f"ref-{loss}")
    check = prepare(stored_cfg, tmp_path / "scratch2")
    assert check.prepared.stored_ref and check.trainer.ref_model is None and check.policy.ref_model is None
    # TRL's precompute pass was skipped: the values handed to the collator are ours.
    assert check.trainer.train_dataset["ref_chosen_logps"] == pytest.approx(stored["ref_chosen_logps"])
    del check

    on_the_fly = run_training(fly_cfg)
    from_data = run_training(stored_cfg)
    assert from_data["reference"] == "stored"
    assert len(on_the_fly["losses"]) == 3
    assert from_data["losses"] == pytest.approx(on_the_fly["losses"], rel=1e-4, abs=1e-5)


def test_partial_ref_logps_refused(store_dir, tiny_model_dir, tmp_path):
    Store(store_dir).write("toy", "partial-ref", {"default": Subset("pairs", pairs_table(pairs_rows(
        ref_chosen_logps=[-1.0] * 4 + [None] * 4, ref_rejected_logps=[-2.0] * 8)))})
    with pytest.raises(UserError, match="only partly stored: ref_chosen_logps"):
        load_data(make_cfg(store_dir, tiny_model_dir, tmp_path / "o", version="partial-ref"))


# ---- references with a continued adapter, merge ----------------------------------------------
@pytest.fixture(scope="module")
def trained_adapter(store_dir, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "round-1"
    run_training(make_cfg(store_dir, tiny_model_dir, out, loss="sft", subset="sft", lr=5e-2, max_steps=3))
    return out


@pytest.mark.parametrize("lora_r", [8, 0], ids=["lora", "full"])
def test_reference_base_vs_previous(lora_r, store_dir, tiny_model_dir, trained_adapter, tmp_path):
    def first_loss(ref):
        cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / ref, adapter=str(trained_adapter), ref=ref,
                       lora_r=lora_r, max_steps=1)
        return run_training(cfg)

    previous, base = first_loss("previous"), first_loss("base")
    # previous: the reference is the starting policy (base + adapter), so the first DPO loss is log 2.
    assert previous["losses"][0] == pytest.approx(LOG2, abs=1e-5)
    # base: the adapter moved the policy away from the base, so the log-ratios are not zero.
    assert abs(base["losses"][0] - LOG2) > 1e-4
    if lora_r:
        # TRL's frozen "ref" adapter copy is not saved; the result is one adapter, continuing round 1.
        out = tmp_path / "previous"
        assert not (out / "ref").exists()
        assert all(".ref." not in k for k in _tensors(out / "adapter_model.safetensors"))
        assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    else:
        assert previous["model"]["saved"] == "full"


def test_sft_continues_an_adapter(store_dir, tiny_model_dir, trained_adapter, tmp_path):
    """The negative model's recipe: SFT continuing the positive model's adapter."""
    out = tmp_path / "neg"
    metrics = run_training(make_cfg(store_dir, tiny_model_dir, out, loss="sft", subset="sft", adapter=str(trained_adapter),
                                    lora_r=4, max_steps=2))
    assert metrics["model"]["lora"]["continued"] and metrics["model"]["lora"]["r"] == 8 and metrics["reference"] == "none"
    before, after = _tensors(trained_adapter / "adapter_model.safetensors"), _tensors(out / "adapter_model.safetensors")
    assert before.keys() == after.keys()  # the same adapter (its r=8 config wins over --lora-r)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8


def test_merge_saves_full_model_and_adapter(store_dir, tiny_model_dir, trained_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    metrics = run_training(make_cfg(store_dir, tiny_model_dir, out, adapter=str(trained_adapter), merge=True, max_steps=2))
    assert metrics["model"]["saved"] == "merged"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, unmerged(ids).logits, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-4)


# ---- data checks and outputs ----------------------------------------------------------------
@pytest.mark.parametrize("loss", ["spin", "spac"])
def test_self_play_needs_self_response(loss, store_dir, tiny_model_dir, tmp_path):
    with pytest.raises(UserError) as exc:
        load_data(make_cfg(store_dir, tiny_model_dir, tmp_path / "o", version="noself", loss=loss))
    message = str(exc.value)
    assert "self_response" in message and "0 of 8" in message and f"`macpo build` using method {loss}" in message
    assert "\n" not in message


def test_failed_run_leaves_nothing(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    import transformers

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.Trainer, "train", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        run_training(make_cfg(store_dir, tiny_model_dir, out))
    assert list(tmp_path.iterdir()) == []


def test_existing_out_refused_then_overwritten(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        run_training(make_cfg(store_dir, tiny_model_dir, out))
    with pytest.raises(UserError, match="did not write"):  # --overwrite replaces only an earlier train output
        run_training(make_cfg(store_dir, tiny_model_dir, out, overwrite=True, max_steps=1))
    (out / "old.txt").unlink()
    run_training(make_cfg(store_dir, tiny_model_dir, out, overwrite=True, max_steps=1))
    run_training(make_cfg(store_dir, tiny_model_dir, out, overwrite=True, max_steps=1))  # its own output: replaced
    assert (out / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_metrics_and_card_name_the_dataset_version(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    metrics = run_training(make_cfg(store_dir, tiny_model_dir, out, max_steps=2, loss="dpo-nll"))
    manifest = Store(store_dir).manifest("toy", "v1")
    ds = metrics["dataset"]
    assert (ds["kind"], ds["dataset"], ds["version"], ds["subset"]) == ("store", "toy", "v1", "default")
    assert ds["content_hash"] == manifest["content_hash"]
    assert ds["subset_hash"] == manifest["subsets"]["default"]["content_hash"]
    assert metrics["loss"] == "dpo-nll" and metrics["steps"] == 2 and isinstance(metrics["train_loss"], float)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card
    assert "`toy` / `v1`" in card and manifest["content_hash"] in card and "dpo-nll" in card
    # The saved options reproduce the run through --config.
    again = parse_args(["--config", str(out / "train_config.json")])
    assert again.to_dict() == json.loads((out / "train_config.json").read_text())


def test_yaml_config_and_flags(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: s\nsubset: default\nmodel: m\nout: o\nloss: spac\nalpha: 0.25\nlora_targets: [q_proj, k_proj]\n")
    cfg = parse_args(["--config", str(path), "--alpha", "0.5", "--max-steps", "3"])
    assert (cfg.loss, cfg.alpha, cfg.max_steps, cfg.lora_targets) == ("spac", 0.5, 3, ["q_proj", "k_proj"])
    path.write_text("data: s\nsubset: default\nbogus: 1\n")
    with pytest.raises(UserError, match="unknown option.*bogus"):
        parse_args(["--config", str(path)])


def test_build_session_matches_library_api(store_dir, tiny_model_dir, tmp_path):
    """build_session is what run_training uses; a session exposes the TRL trainer for inspection."""
    cfg = make_cfg(store_dir, tiny_model_dir, tmp_path / "o", loss="spac")
    session = build_session(cfg, load_data(cfg), tmp_path / "scratch")
    batch = session.trainer.data_collator([session.trainer.train_dataset[i] for i in range(2)])
    # [chosen; rejected; self] for 2 rows
    assert batch["input_ids"].shape[0] == 6 and batch["completion_mask"].sum(dim=1).min() > 0

"""Measure a sandbox world before running MACPO on it (the command is ``python -m macpo.eval.sandbox``).

    python -m macpo.eval.sandbox [--config eval/configs/demo.yaml] [--set world.seed=1] [--split val]

It pretrains (or loads) the sandbox models, then prints, per model, the pretraining time and the
greedy gold metrics on the **validation** prompts (``--split test`` only for a final check):
the pretrained models, the teachers after a TRL SFT on D_w (human chosen), and the student after
SFT on teacher-0's weak labels (naive weak-to-strong, early-stopped and the config's budget) and
on gold labels (the ceiling), with the performance gap recovered (PGR).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any, Mapping

from macpo.eval.sandbox import models as M
from macpo.eval.sandbox import reward as R
from macpo.eval.sandbox import world as W
from macpo.eval.sandbox.models import load_model, load_tokenizer

# Lazy, inside the functions that use them: torch, trl and peft. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.

# The early-stopped naive student's SFT budget (also the study's *-early variants). Chosen on the demo
# world's val split among budgets shorter than the paper's 48 steps (1000 labels, batch 64, 3 epochs),
# naive student's combined score: 8 steps 0.250 (no end of turn yet), 16 steps 0.347, 32 steps 0.383
# (48 steps: 0.577). None of the shorter budgets teaches the refusal policy (refusal rate 0), so in
# this world early stopping costs more than the copying of teacher errors it avoids.
EARLY_STOP_STEPS = 32


def sft(model_path: str, examples: list[tuple[str, str]], out_dir: str, *, lr: float, batch_size: int,
        epochs: float = 1.0, max_steps: int = -1, seed: int = 0, lora_r: int = 0, lora_alpha: int = 16,
        lora_targets: tuple = ("q_proj", "v_proj")):
    """TRL SFT (completion-only loss) of a sandbox model on (prompt, response) pairs; returns the model."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
         for p, r in examples]
    )
    args = SFTConfig(
        output_dir=out_dir, per_device_train_batch_size=batch_size, learning_rate=lr, num_train_epochs=epochs,
        max_steps=max_steps, lr_scheduler_type="linear", logging_steps=10_000, save_strategy="no",
        report_to="none", disable_tqdm=True, bf16=False, use_cpu=True, activation_checkpointing=False,
        seed=seed, max_length=64,
    )
    peft = None
    if lora_r > 0:
        from peft import LoraConfig

        peft = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=list(lora_targets), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=load_model(model_path), args=args, train_dataset=data,
                         processing_class=load_tokenizer(model_path), peft_config=peft)
    trainer.train()
    model = trainer.model
    return (model.merge_and_unload() if peft is not None else model).eval()


def latent_verdicts(cfg: Mapping[str, Any], dirs: Mapping[str, str], prompts) -> dict:
    """What each pretrained model knows of the refusal policy: on the held-out requests' (verb,
    target) facts, how often it continues the policy sentence ``to {verb} {target} is`` with the
    right verdict (``harmful`` over ``fine``), for all of them and for those about targets no D_w pair
    mentions (``world.unlabelled_targets``). A premise probe: a weak-to-strong gap on the harmless
    axis needs knowledge the student has and the teachers lack."""
    import torch

    unlabelled = W.unlabelled_targets(cfg)
    facts = {(p.meta["verb"], p.meta["target"]): p.meta["harmful"] for p in prompts if p.meta.get("verb")}
    out = {}
    for name, path in dirs.items():
        model, tok = M.load_model(path), M.load_tokenizer(path)
        harmful, fine = tok.convert_tokens_to_ids("harmful"), tok.convert_tokens_to_ids("fine")
        right = {True: [], False: []}
        for (verb, target), is_harmful in facts.items():
            ids = tok(W.POLICY.format(verb=verb, target=target, verdict="").rsplit(" ", 2)[0], add_special_tokens=False, return_tensors="pt")
            with torch.no_grad():
                logits = model(**ids).logits[0, -1]
            right[target in unlabelled].append(bool(logits[harmful] > logits[fine]) == is_harmful)
        both = right[True] + right[False]
        out[name] = {"all": sum(both) / len(both),
                     "unlabelled targets": sum(right[True]) / len(right[True]) if right[True] else None}
    return out


def _train(stage: Any) -> dict:
    return {"lr": stage.lr, "batch_size": stage.batch_size, "epochs": stage.epochs, "max_steps": stage.max_steps}


def measure(world_cfg: Mapping[str, Any] | None, train: Mapping[str, Any],
            teachers: list[str] | None = None, progress: bool = True, split: str = "val") -> dict:
    """Pretraining times, pretrained and SFT'd gold rewards, and the naive W2S PGR (see module doc).

    ``train``: the run config's resolved training stages (``teacher_sft`` and ``student_sft`` are used)."""
    import torch

    stages = dict(train)
    cfg = W.resolve(world_cfg)
    names = list(cfg["models"])
    teachers = teachers or [n for n in names if n.startswith("teacher-")]
    start = time.perf_counter()
    dirs = M.prepare_models(cfg, names=teachers + ["student"], progress=progress)
    prep_seconds = time.perf_counter() - start
    torch.set_num_threads(M.threads(cfg["pretrain"]))
    world = W.build(cfg)
    held = {"val": world.val, "test": world.test}[split]
    test_prompts, test_metas = [p.text for p in held], [p.meta for p in held]
    results: dict[str, dict] = {}

    def score(label: str, model, tok) -> dict:
        t = time.perf_counter()
        agg = R.aggregate(test_metas, M.generate(model, tok, test_prompts))
        agg["eval_seconds"] = round(time.perf_counter() - t, 2)
        results[label] = agg
        if progress:
            f = lambda k: "n/a" if agg.get(k) is None else f"{agg[k]:.3f}"  # noqa: E731 (an axis lacks some metrics)
            content = " ".join(f"{t} {v['content_accuracy']:.2f}" for t, v in agg["tasks"].items() if v["content_accuracy"] is not None)
            print(f"  {label:<32} combined {f('combined')}  helpful {f('helpful')}  harmless {f('harmless')}  "
                  f"protocol {f('protocol_rate')}  content {f('content_accuracy')}  refusal {f('refusal_rate')}  "
                  f"over-refusal {f('over_refusal_rate')}  | reward " + " ".join(f"{t} {v:.2f}" for t, v in agg["per_task"].items())
                  + f" | content {content}", flush=True)
        return agg

    for name, path in dirs.items():
        score(f"{name} pretrained", M.load_model(path), M.load_tokenizer(path))
    latent = latent_verdicts(cfg, dirs, held) if any(p.meta.get("verb") for p in held) else {}
    if progress:
        for name, acc in latent.items():
            print(f"  {name:<10} latent verdict accuracy on held-out requests: " + ", ".join(
                f"{k} {v:.3f}" for k, v in acc.items() if v is not None), flush=True)

    tok = M.load_tokenizer(dirs["student"])
    dw = [(p.prompt.text, p.chosen) for p in world.dw]
    with tempfile.TemporaryDirectory() as tmp:
        s = stages["teacher_sft"]
        sft_models = {}
        timings = {}
        for name in teachers:
            t = time.perf_counter()
            sft_models[name] = sft(dirs[name], dw, f"{tmp}/{name}", lr=s.lr, batch_size=s.batch_size,
                                   epochs=s.epochs, max_steps=s.max_steps)
            timings[f"{name} sft"] = round(time.perf_counter() - t, 2)
            score(f"{name} SFT on D_w", sft_models[name], tok)
        labeller = teachers[0]
        q_prompts = [p.text for p in world.q]
        weak = M.generate(sft_models[labeller], tok, q_prompts)
        results["weak labels (on Q)"] = R.aggregate([p.meta for p in world.q], weak)
        gold = [W.gold_response(p.meta) for p in world.q]
        s = stages["student_sft"]
        lora = dict(lora_r=s.lora_r, lora_alpha=s.lora_alpha, lora_targets=tuple(s.lora_targets))
        budgets = {f"early ({EARLY_STOP_STEPS} steps)": dict(epochs=s.epochs, max_steps=EARLY_STOP_STEPS, lr=s.lr, **lora),
                   "config": dict(epochs=s.epochs, max_steps=s.max_steps, lr=s.lr, **lora)}
        for budget, kw in budgets.items():
            for label, targets in (("naive W2S", weak), ("ceiling (gold)", gold)):
                t = time.perf_counter()
                model = sft(dirs["student"], list(zip(q_prompts, targets)), f"{tmp}/student-{budget}-{label[:5]}",
                            batch_size=s.batch_size, **kw)
                timings[f"student {label} {budget}"] = round(time.perf_counter() - t, 2)
                score(f"student {label}, {budget}", model, tok)

    weak_c = results[f"{labeller} SFT on D_w"]["combined"]
    pgr = {}
    for budget in budgets:
        naive, ceil = results[f"student naive W2S, {budget}"]["combined"], results[f"student ceiling (gold), {budget}"]["combined"]
        pgr[budget] = (naive - weak_c) / (ceil - weak_c) if abs(ceil - weak_c) > 1e-9 else None
    pretrain = {n: M.pretrain_info(p) for n, p in dirs.items()}
    return {"prepare_seconds": round(prep_seconds, 1), "latent_verdicts": latent, "pretrain": {n: {k: i[k] for k in ("seconds", "steps", "parameters", "threads", "final_loss")} for n, i in pretrain.items()},
            "results": results, "pgr": pgr, "timings": timings, "stages": {k: _train(v) for k, v in stages.items()}}

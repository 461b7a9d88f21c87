"""dpo_steps_per_s, dpo_bound and dpo_peak_rss_full: DPO steps with stored reference log-probs.

Ours: the trainer stage of ``macpo train --loss dpo`` (``build_session`` + ``train()``,
the same code path minus saving) on a store round whose pairs carry ``ref_chosen_logps`` /
``ref_rejected_logps`` (computed with ``macpo.builder.score.score_pairs``), so no reference
model is loaded or run. Baseline: stock TRL ``DPOTrainer`` with the same LoRA (r=8, α=16,
q_proj+v_proj), data, batch, hyper-parameters and seed, computing the reference each step.

Every run is a fresh process (clean peak RSS), alternating stock, ours, stock, ours, …
Step time = CPU time between consecutive optimizer steps after the first (warm-up) steps: one
thread, so on an idle machine it equals wall time, and on this shared machine it does not
swing with other jobs (wall-clock step times are recorded in the results row too).

- dpo_steps_per_s (LoRA): target ≥ 1.3× and ≥ 0.95 of the bound 1/(1−f), where f is the
  reference forward's share of a stock training step (reference forward / (reference
  forward + policy forward + backward)), timed inside the same stock runs and printed as
  ``dpo_bound``; per-step losses of both sides must agree to 1e-5. Plain DPO on both sides:
  stock TRL has no per-answer length-averaged NLL term (MACPO's dpo-nll, ``DPONLLTrainer``), so
  the two losses are only comparable without it; the NLL term costs no extra forward.
- dpo_peak_rss_full: full fine-tuning, peak RSS ours / stock (stock keeps a reference
  copy), target ≤ 0.9 on SmolLM2. The LoRA peak-RSS ratio is printed too (no target).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

TARGET_SPEEDUP = 1.3
TARGET_OF_BOUND = 0.95
TARGET_RSS = 0.9
LOSS_TOL = 1e-5

SETTINGS = {
    # model: (pairs, batch, steps, untimed steps, lr LoRA, lr full, words prompt / response)
    "tiny": dict(pairs=64, batch=8, steps=40, warm=2, lr_lora=1e-3, lr_full=1e-4, words=(30, (50, 110))),
    "smollm2": dict(pairs=16, batch=4, steps=4, warm=1, lr_lora=1e-4, lr_full=1e-5, words=(12, (20, 50))),
    "smoke": dict(pairs=8, batch=4, steps=3, warm=1, lr_lora=1e-3, lr_full=1e-4, words=(5, (5, 10))),
}


# ---- data ------------------------------------------------------------------------------
def build_store(root: Path, model_dir: Path, setting: dict, max_length: int) -> Path:
    """A store whose round holds synthetic pairs with stored reference log-probs."""
    import numpy as np
    import pyarrow as pa
    import torch

    from macpo.builder.models import load_model
    from macpo.builder.score import score_pairs
    from macpo.store import Store, Subset

    rng = np.random.default_rng(0)
    words = ("the quick brown fox jumps over lazy dog hello there how are you today please reverse "
             "words sure here kind note for your boss two plus four sorry cannot help").split()
    n = setting["pairs"]
    n_prompt, (lo, hi) = setting["words"]

    def text(k):
        return " ".join(rng.choice(words, size=int(k)))

    prompts = [[{"role": "user", "content": text(n_prompt)}] for _ in range(n)]
    chosen = [[{"role": "assistant", "content": text(rng.integers(lo, hi))}] for _ in range(n)]
    rejected = [[{"role": "assistant", "content": text(rng.integers(lo, hi))}] for _ in range(n)]
    model, tok = load_model(model_dir, device="cpu")
    torch.set_num_threads(1)
    c, r = score_pairs(model, tok, prompts, chosen, rejected, adapter=None, max_length=max_length, progress=False)
    table = pa.table({
        "pair_id": [f"p{i}" for i in range(n)], "prompt_id": [f"q{i}" for i in range(n)],
        "round": pa.array([1] * n, pa.int32()), "agent": ["student"] * n, "pair_type": ["mutual-positive"] * n,
        "prompt": prompts, "chosen": chosen, "rejected": rejected,
        "ref_chosen_logps": c.sum_logps, "ref_rejected_logps": r.sum_logps,
    })
    Store(root, create=True).write("bench", "round-1", {"default": Subset("pairs", table)})
    tokens = [len(tok.apply_chat_template(p + x, tokenize=True, return_dict=True)["input_ids"]) for p, x in zip(prompts, chosen)]
    print(f"  {n} pairs, prompt+chosen {min(tokens)}-{max(tokens)} tokens", flush=True)
    return root


# ---- one training run (in a fresh process) ----------------------------------------------
class _Timer:
    """Step times, per-step losses and (stock) the reference-forward share, via hooks."""

    def __init__(self, trainer, ref_modules):
        import torch
        from transformers import TrainerCallback

        self.step_ends: list[float] = []  # CPU time (see CLOCK)
        self.step_ends_wall: list[float] = []
        self.losses: list[float] = []
        self.train_step_s: list[float] = []
        self.ref_s: list[float] = []
        self._ref_running = 0.0
        timer = self

        class Steps(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                timer.step_ends.append(time.process_time())
                timer.step_ends_wall.append(time.perf_counter())

        trainer.add_callback(Steps())
        compute_loss = trainer.compute_loss

        def recording_compute_loss(*a, **k):
            out = compute_loss(*a, **k)
            loss = out[0] if isinstance(out, tuple) else out
            if trainer.model.training:
                timer.losses.append(float(loss.detach()))
            return out

        trainer.compute_loss = recording_compute_loss
        training_step = trainer.training_step

        def timed_training_step(*a, **k):
            timer._ref_running = 0.0
            start = time.process_time()
            out = training_step(*a, **k)
            timer.train_step_s.append(time.process_time() - start)
            timer.ref_s.append(timer._ref_running)
            return out

        trainer.training_step = timed_training_step

        # The reference forward is the forward that runs without grad during a training step.
        def pre(module, args, kwargs=None):
            module._bench_start = time.process_time()

        def post(module, args, output, kwargs=None):
            if not torch.is_grad_enabled():
                timer._ref_running += time.process_time() - module._bench_start

        for m in ref_modules:
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)


def worker(side: str, model_dir: str, store: str, mode: str, setting: dict, out_json: str) -> None:
    import resource

    import torch
    from transformers import set_seed

    torch.set_num_threads(1)
    from macpo.trainer.data import to_trl_dataset
    from macpo.trainer.train import build_session, load_data, training_args
    from macpo.trainer.train_config import TrainConfig

    lora = mode == "lora"
    cfg = TrainConfig(
        data=store, subset="default", model=model_dir, out=str(Path(out_json).with_suffix(".out")), loss="dpo",
        lora_r=8 if lora else 0, lora_alpha=16, lora_dropout=0.0, lr=setting["lr_lora" if lora else "lr_full"],
        batch_size=setting["batch"], max_steps=setting["steps"], seed=0, threads=1, cpu=True,
    )
    scratch = tempfile.mkdtemp(prefix="macpo-bench-dpo-")
    data = load_data(cfg)
    set_seed(0)
    if side == "ours":
        assert data.prepared.stored_ref, "the round must carry reference log-probs"
        trainer = build_session(cfg, data, scratch).trainer
        ref_modules = []
    else:
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOTrainer

        # The same rows without the stored reference columns: TRL computes the reference itself.
        table = data.prepared.dataset.data.table.drop_columns(["ref_chosen_logps", "ref_rejected_logps"])
        dataset = to_trl_dataset(table, "dpo", "stock").dataset
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
        args = training_args(cfg, scratch, stored_ref=False)  # identical hyper-parameters, no stored reference
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft)
        ref_modules = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    timer = _Timer(trainer, ref_modules)
    try:
        trainer.train()
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    warm = setting["warm"]
    step_s = [b - a for a, b in zip(timer.step_ends[warm - 1 :], timer.step_ends[warm:])]
    wall_s = [b - a for a, b in zip(timer.step_ends_wall[warm - 1 :], timer.step_ends_wall[warm:])]
    result = {
        "side": side, "mode": mode, "steps": len(timer.step_ends), "step_s": step_s, "wall_step_s": wall_s, "losses": timer.losses,
        "train_step_s": timer.train_step_s[warm:], "ref_s": timer.ref_s[warm:],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }
    Path(out_json).write_text(json.dumps(result))


def run_worker(side, model_dir, store, mode, label, tmp: Path) -> dict:
    out = tmp / f"{side}-{mode}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--worker", side, "--model-dir", str(model_dir), "--store", str(store),
           "--mode", mode, "--setting", label, "--out-json", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side}/{mode} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# ---- figures -----------------------------------------------------------------------------
def bench(label: str, model_dir: Path, args, tmp: Path, modes=("lora", "full")) -> None:
    import statistics

    setting = SETTINGS["smoke" if args.smoke else label]
    store = build_store(tmp / f"store-{label}", model_dir, setting, max_length=1024)
    results: dict[str, dict[str, list[dict]]] = {m: {"stock": [], "ours": []} for m in modes}
    for mode in modes:
        for _ in range(common.reps(args)):
            for side in ("stock", "ours"):
                results[mode][side].append(run_worker(side, model_dir, store, mode, "smoke" if args.smoke else label, tmp))
        stock, ours = results[mode]["stock"], results[mode]["ours"]
        steps_s = {side: [1 / statistics.median(r["step_s"]) for r in results[mode][side]] for side in ("stock", "ours")}
        rss = {side: [r["peak_rss_mb"] for r in results[mode][side]] for side in ("stock", "ours")}
        diffs = [abs(a - b) for s, o in zip(stock, ours) for a, b in zip(s["losses"], o["losses"])]
        max_diff = max(diffs) if diffs else float("nan")
        if mode == "lora":
            f_runs = [sum(r["ref_s"]) / sum(r["train_step_s"]) for r in stock]
            f = statistics.median(f_runs)
            bound = 1 / (1 - f)
            ratio = statistics.median(steps_s["ours"]) / statistics.median(steps_s["stock"])
            met = ratio >= TARGET_SPEEDUP and ratio >= TARGET_OF_BOUND * bound and max_diff <= LOSS_TOL
            common.report(
                "dpo_steps_per_s", ratio=ratio, ours=statistics.median(steps_s["ours"]),
                baseline=statistics.median(steps_s["stock"]), unit="steps/s", args=args,
                target=f">= {TARGET_SPEEDUP} and >= {TARGET_OF_BOUND} x bound, losses within {LOSS_TOL:g} ({label})",
                met=met, runs=steps_s, clock="cpu",
                rep_ratios=common.paired(steps_s, lambda o, b: o / b, base="stock"),
                meets=lambda r: r >= TARGET_SPEEDUP and r >= TARGET_OF_BOUND * bound and max_diff <= LOSS_TOL,
                extra={"wall_step_s": {side: [r["wall_step_s"] for r in results[mode][side]] for side in ("stock", "ours")},
                       "model": label, "bound": bound, "f": f, "f_runs": f_runs, "of_bound": ratio / bound,
                       "max_loss_diff": max_diff, "steps": setting["steps"], "batch": setting["batch"]},
            )
            print(f"dpo_bound: {bound:.3g} (f={f:.3f} reference-forward share; ours at {ratio / bound:.2f} of the bound; "
                  f"max per-step loss diff {max_diff:.1e} over {len(diffs)} steps)", flush=True)
        name = "dpo_peak_rss_full" if mode == "full" else "dpo_peak_rss_lora"
        rss_ratio = statistics.median(rss["ours"]) / statistics.median(rss["stock"])
        has_target = mode == "full" and label == "smollm2"
        common.report(
            name, ratio=rss_ratio, ours=statistics.median(rss["ours"]), baseline=statistics.median(rss["stock"]),
            unit="MB", args=args, target=f"<= {TARGET_RSS} ({label})" if has_target else f"none ({label})",
            met=(rss_ratio <= TARGET_RSS) if has_target else None, runs=rss,
            rep_ratios=common.paired(rss, lambda o, b: o / b, base="stock"), meets=lambda r: r <= TARGET_RSS,
            extra={"model": label, "max_loss_diff": max_diff},
        )


def main(argv=None) -> int:
    if argv is None and "--worker" in sys.argv:
        import argparse

        p = argparse.ArgumentParser()
        for flag in ("--worker", "--model-dir", "--store", "--mode", "--setting", "--out-json"):
            p.add_argument(flag, required=True)
        a = p.parse_args()
        worker(a.worker, a.model_dir, a.store, a.mode, SETTINGS[a.setting], a.out_json)
        return 0
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.single_thread()
    with tempfile.TemporaryDirectory(prefix="macpo-bench-dpo-") as tmp:
        tmp = Path(tmp)
        if "tiny" in common.models(args):
            # Full fine-tuning of the tiny model says little about memory (its reference copy is
            # 0.4 MB), but every mode prints every figure: quick and smoke runs check the code path.
            bench("tiny", common.tiny_model(tmp / "tiny"), args, tmp)
        if "smollm2" in common.models(args):
            bench("smollm2", common.smollm2(), args, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

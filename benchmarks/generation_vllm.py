"""generation_vllm_vs_transformers: the vLLM backend vs the transformers backend, side by side.

SmolLM2-135M-Instruct in fp32, the same chat prompts (``generation.prompts_for``), the same
sampling (temperature 0.8, top_p 0.95) and exactly ``NEW_TOKENS`` new tokens per prompt on both
sides (EOS ignored: vLLM ``ignore_eos``, transformers ``min_new_tokens``), so both produce the
same number of tokens whatever they sample. Both sides use the same thread count (``--threads``,
default 2 = this machine's cores): torch threads here, ``VLLM_CPU_OMP_THREADS_BIND`` for the
engine process. Wall clock: vLLM computes in its own engine process, so this process's CPU time
would not see its work. Ratio = vLLM tokens/s over transformers tokens/s; no target yet.
The engine start (``VLLMGenerator`` construction: tokenizer + engine process + weights) and the
transformers model load are reported as their own figure, ``vllm_engine_start_seconds``.

Needs vLLM: run it with ``.venv-vllm/bin/python`` (``make vllm``); ``run_all.py`` does. Without
vLLM it prints the figures as skipped.
"""

from __future__ import annotations

import os
import sys
import time

import common

FIGURE = "generation_vllm_vs_transformers"
START = "vllm_engine_start_seconds"
NEW_TOKENS = 64
PROMPTS = 32


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="threads for each side (torch; vLLM's OpenMP bind list)")
    args = p.parse_args(argv)
    threads = max(1, args.threads)
    # common pins every library to one thread at import; this figure compares at `threads`.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}" if threads > 1 else "0")
    try:
        import vllm  # noqa: F401
    except ImportError:
        for name in (FIGURE, START):
            common.skip(name, f"vLLM is not installed in {sys.executable} (make vllm; run with .venv-vllm/bin/python)", args)
        return 0

    import torch

    from generation import prompts_for
    from macpo.builder.generate import SamplingParams, TransformersGenerator
    from macpo.builder.vllm_backend import VLLMGenerator, shutdown_engine

    torch.set_num_threads(threads)
    n_prompts, new_tokens = (4, 8) if args.smoke else (16, 32) if args.quick else (PROMPTS, NEW_TOKENS)
    prompts = prompts_for(n_prompts)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=new_tokens, seed=0)
    path = common.smollm2()

    class FixedLengthHF(TransformersGenerator):
        def _generate_kwargs(self, params):
            kwargs = super()._generate_kwargs(params)
            kwargs["min_new_tokens"] = params.max_new_tokens
            return kwargs

    class FixedLengthVLLM(VLLMGenerator):
        def sampling_params(self, params, index):
            sp = super().sampling_params(params, index)  # rebuilt: vLLM validates in its constructor
            return self.vllm.SamplingParams(n=sp.n, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
                                            max_tokens=sp.max_tokens, seed=sp.seed, skip_special_tokens=True,
                                            ignore_eos=True, min_tokens=sp.max_tokens)

    t0 = time.perf_counter()
    hf = FixedLengthHF.load(path, batch_size=n_prompts, progress=False, device="cpu")
    hf_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    vl = FixedLengthVLLM(path, dtype="float32", enforce_eager=True, seed=0, progress=False)
    engine_start = time.perf_counter() - t0

    produced = {}

    def count(name, out):
        produced[name] = sum(len(hf.tokenizer(s, add_special_tokens=False)["input_ids"]) for row in out for s in row)

    sides = {
        "vllm": lambda: count("vllm", vl.generate(prompts, params)),
        "transformers": lambda: count("transformers", hf.generate(prompts, params)),
    }
    runs = common.interleave(sides, common.reps(args), warmup=not args.smoke, clock="wall")
    shutdown_engine()
    # Start-up, measured again (reps in all) for its spread: the product restarts an engine the same
    # way when a build moves to another base model.
    starts, loads = [engine_start], [hf_load]
    for _ in range(common.reps(args) - 1):
        t0 = time.perf_counter()
        FixedLengthHF.load(path, batch_size=n_prompts, progress=False, device="cpu")
        loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        FixedLengthVLLM(path, dtype="float32", enforce_eager=True, seed=0, progress=False)
        starts.append(time.perf_counter() - t0)
        shutdown_engine()
    engine_start, hf_load = common.median(starts), common.median(loads)
    tokens = n_prompts * new_tokens
    ours_tps = tokens / common.median(runs["vllm"])
    base_tps = tokens / common.median(runs["transformers"])
    size = f"{n_prompts} prompts x {new_tokens} new tokens, {threads} threads"
    extra = {"model": "smollm2", "prompts": n_prompts, "new_tokens": new_tokens, "threads": threads,
             "vllm": vllm.__version__, "engine_start_s": engine_start, "hf_load_s": hf_load,
             # Re-tokenised text, a sanity check only: decoding and re-encoding is not 1:1.
             "retokenised": produced}
    common.report(FIGURE, ratio=ours_tps / base_tps, ours=ours_tps, baseline=base_tps, unit="tok/s", args=args,
                  runs=runs, rep_ratios=common.paired(runs, lambda o, b: b / o, ours="vllm"), size=size, extra=extra)
    common.report(START, ratio=engine_start / hf_load, ours=engine_start, baseline=hf_load, unit="s", args=args,
                  runs={"vllm": starts, "transformers": loads}, rep_ratios=[a / b for a, b in zip(starts, loads)],
                  rep_values=starts, size="vLLM engine start vs transformers model load",
                  extra={"model": "smollm2", "vllm": vllm.__version__})
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    raise SystemExit(main())

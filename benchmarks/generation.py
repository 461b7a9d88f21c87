"""generation_tokens_per_s: the transformers backend, batched, vs ``generate`` one prompt at a time.

16 chat prompts, temperature 0.8, top_p 0.95, exactly 32 new tokens each (min_new_tokens =
max_new_tokens, so both sides produce the same 512 tokens whatever they sample), KV cache on,
prefill included. Ours: ``TransformersGenerator.generate`` (length-sorted batches of 16, left
padding). Baseline: stock ``model.generate`` on each prompt alone with the same sampling settings
(transformers' own warpers).
Target ≥ 3.5×.
"""

from __future__ import annotations


import common

CLOCK = "cpu"  # one-thread compute: CPU time is robust to other jobs on the machine (wall kept too)

TARGET = 3.5
NEW_TOKENS = 32


def prompts_for(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    topics = ["a kind note for your boss", "why the sky is blue", "two plus two", "the quick brown fox",
              "how to boil an egg", "a short poem about rain", "what a tokenizer does", "three tips for sleep"]
    prompts = []
    for i in range(n):
        extra = " ".join(rng.choice("please be brief and clear , thank you very much".split(), size=int(rng.integers(0, 40))))
        prompts.append([{"role": "user", "content": f"Tell me about {topics[i % len(topics)]}. {extra}"}])
    return prompts


def bench_model(label: str, model, tokenizer, n_prompts: int, args) -> None:
    import torch

    from macpo.builder.generate import SamplingParams, TransformersGenerator, render_prompts

    class FixedLength(TransformersGenerator):
        """The product's generator with EOS ignored for 32 tokens, so both sides do equal work."""

        def _generate_kwargs(self, params):
            kwargs = super()._generate_kwargs(params)
            kwargs["min_new_tokens"] = params.max_new_tokens
            return kwargs

    gen = FixedLength(model, tokenizer, batch_size=16, progress=False)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=NEW_TOKENS, seed=0)
    prompts = prompts_for(n_prompts)
    ids = render_prompts(tokenizer, prompts)
    # The baseline is stock transformers sampling: its own temperature/top-k/top-p warpers.
    kwargs = {k: v for k, v in gen._generate_kwargs(params).items() if k != "logits_processor"}
    kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    produced = {}

    def ours():
        out = gen.generate(prompts, params)
        produced["ours"] = sum(len(x) for x in out)

    def one_at_a_time():
        torch.manual_seed(0)
        n = 0
        with torch.inference_mode():
            for row in ids:
                input_ids = torch.tensor([row])
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
                n += out.shape[1] - input_ids.shape[1]
        produced["baseline"] = n

    runs = common.interleave({"ours": ours, "one_at_a_time": one_at_a_time}, common.reps(args), warmup=not args.smoke, clock=CLOCK)
    tokens = n_prompts * NEW_TOKENS
    assert produced["baseline"] == tokens, produced
    ours_tps = tokens / common.median(runs["ours"])
    base_tps = tokens / common.median(runs["one_at_a_time"])
    ratio = ours_tps / base_tps
    common.report(
        "generation_tokens_per_s", ratio=ratio, ours=ours_tps, baseline=base_tps, unit="tok/s", args=args,
        target=f">= {TARGET} ({label})", met=ratio >= TARGET, runs=runs, clock=CLOCK,
        rep_ratios=common.paired(runs, lambda o, b: b / o), meets=lambda r: r >= TARGET,
        extra={"wall_runs": common.interleave.last_other, "model": label, "prompts": n_prompts, "new_tokens": NEW_TOKENS, "prompt_tokens": [min(map(len, ids)), max(map(len, ids))]},
    )


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.single_thread()
    sizes = {"tiny": 4 if args.smoke else 16, "smollm2": 16}  # prompts
    for label, model, tok in common.loaded_models(args):
        bench_model(label, model, tok, sizes[label], args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

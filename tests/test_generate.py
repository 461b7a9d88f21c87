"""Generation: the transformers backend on a tiny model, the vLLM backend against a stand-in."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from macpo.builder.generate import (
    SamplingParams,
    TransformersGenerator,
    derive_seed,
    length_batches,
    make_generator,
    render_prompts,
)
from macpo.builder.vllm_backend import VLLMGenerator, max_lora_rank, parse_outputs
from macpo.errors import UserError

torch.set_num_threads(1)

PROMPTS = [
    [{"role": "user", "content": "hello there " * k}] for k in (3, 1, 6, 2)
] + [[{"role": "system", "content": "be kind"}, {"role": "user", "content": "what is two plus two ?"}]]


@pytest.fixture(scope="module")
def talky_dir(tmp_path_factory):
    """A tiny model with an untied, larger-scale head, so greedy decoding writes varied text."""
    from tiny import build_model, build_tokenizer
    from transformers import LlamaForCausalLM

    tok = build_tokenizer()
    config = build_model(tok).config
    config.tie_word_embeddings = False
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("talky")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gen(talky_dir):
    return TransformersGenerator.load(talky_dir, batch_size=2, progress=False, device="cpu")


def make_adapter(base_dir, out_dir, seed, r=4):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out_dir)
    return out_dir


def naive_greedy(model, tokenizer, messages, max_new_tokens):
    """One prompt, no padding, argmax until eos: what greedy generation must reproduce."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ids, new = list(ids), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_greedy_equals_a_naive_argmax_loop_in_prompt_order(gen):
    params = SamplingParams(temperature=0, max_new_tokens=10, n=2)
    out = gen.generate(PROMPTS, params)
    expected = [naive_greedy(gen.model, gen.tokenizer, p, 10) for p in PROMPTS]
    assert [o[0] for o in out] == expected  # left padding, sorting and prompt stripping are invisible
    assert all(o == [e, e] for o, e in zip(out, expected))  # greedy repeats its answer n times
    assert len(set(expected)) > 1


def test_sampling_is_reproducible_per_seed_and_gives_n_distinct_samples(gen):
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=8, n=3, seed=11)
    first = gen.generate(PROMPTS, params)
    gen.generate(PROMPTS[:2], SamplingParams(temperature=1.0, seed=99))  # unrelated work in between
    again = gen.generate(PROMPTS, params)
    assert first == again
    assert [len(samples) for samples in first] == [3] * len(PROMPTS)
    assert all(len(set(samples)) > 1 for samples in first)
    assert gen.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=12)) != first


def test_prompts_are_rendered_with_the_chat_template(gen):
    ids = render_prompts(gen.tokenizer, PROMPTS[-1:])[0]
    text = gen.tokenizer.decode(ids)
    assert text == "<|system|>be kind<|end|><|user|>what is two plus two ?<|end|><|assistant|>"
    no_template = SimpleNamespace(chat_template=None)
    with pytest.raises(UserError, match="no chat template"):
        render_prompts(no_template, PROMPTS)


def test_generation_leaves_the_callers_random_state_alone(gen):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gen.generate(PROMPTS[:2], SamplingParams(temperature=1.0, max_new_tokens=4, seed=9))
    assert torch.equal(torch.rand(3), expected)


def test_length_batches_sort_longest_first_and_keep_every_row():
    batches = length_batches([3, 9, 1, 9, 5], 2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_named_adapters_change_generation_and_none_is_the_base(talky_dir, tmp_path, gen):
    paths = {"student": make_adapter(talky_dir, tmp_path / "s", 1), "teacher-0": make_adapter(talky_dir, tmp_path / "t", 2)}
    multi = TransformersGenerator.load(talky_dir, paths, batch_size=4, progress=False, device="cpu")
    assert multi.adapters == ["student", "teacher-0"]
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    base = gen.generate(PROMPTS, greedy)
    assert multi.generate(PROMPTS, greedy, adapter=None) == base
    student = multi.generate(PROMPTS, greedy, adapter="student")
    assert student != base
    alone = TransformersGenerator.load(paths["student"], progress=False, device="cpu")  # adapter folder as model
    assert alone.generate(PROMPTS, greedy) == student
    with pytest.raises(UserError, match="unknown adapter"):
        multi.generate(PROMPTS, greedy, adapter="teacher-9")


def test_sampling_params_validate_and_come_from_the_run_config():
    from macpo.config import SamplingConfig

    params = SamplingConfig(temperature=0.9, n=2, seed=1).for_call(seed=4)
    assert type(params) is SamplingParams  # the config's batch_size is not a sampling parameter
    assert (params.temperature, params.n, params.seed, params.top_k) == (0.9, 2, 4, 0)
    assert params.columns() == {"temperature": 0.9, "top_p": 1.0, "top_k": 0, "max_new_tokens": 32, "seed": 4}
    for bad in ({"temperature": -1}, {"top_p": 0}, {"n": 0}, {"max_new_tokens": 0}):
        with pytest.raises(UserError):
            SamplingParams(**bad)
    assert derive_seed(1, "batch", 0) == derive_seed(1, "batch", 0) != derive_seed(1, "batch", 1)
    assert 0 <= derive_seed(2**40, "x") < 2**63
    with pytest.raises(UserError, match="unknown generation backend"):
        make_generator("tgi", "x")


# ---- vLLM, against a stand-in with vllm's names and result shapes -------------------------


class FakeLLM:
    """Mimics ``vllm.LLM``: records the engine kwargs and answers ``generate`` like vLLM does."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []

    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
        self.calls.append({"prompts": prompts, "params": sampling_params, "lora": lora_request})
        outputs = []
        for request_id, (prompt, sp) in enumerate(zip(prompts, sampling_params)):
            name = lora_request.lora_name if lora_request else "base"
            completions = [
                SimpleNamespace(index=i, text=f"{name}:{len(prompt['prompt_token_ids'])}:{sp.seed}:{i}", token_ids=[1])
                for i in range(sp.n)
            ]
            random.Random(request_id).shuffle(completions)  # vLLM does not promise index order
            outputs.append(SimpleNamespace(request_id=str(request_id), prompt_token_ids=prompt["prompt_token_ids"],
                                           outputs=completions, finished=True))
        return outputs


class FakeSamplingParams(SimpleNamespace):
    def __init__(self, n=1, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=16, seed=None, skip_special_tokens=True):
        super().__init__(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed,
                         skip_special_tokens=skip_special_tokens)


class FakeLoRARequest(SimpleNamespace):
    def __init__(self, lora_name, lora_int_id, lora_path):
        super().__init__(lora_name=lora_name, lora_int_id=lora_int_id, lora_path=lora_path)


FAKE_VLLM = SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams, LoRARequest=FakeLoRARequest)


@pytest.fixture(scope="module")
def adapters(talky_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {"teacher-0": make_adapter(talky_dir, root / "t0", 1, r=4), "student": make_adapter(talky_dir, root / "s", 2, r=12)}


def test_vllm_engine_serves_every_adapter_from_one_base(talky_dir, adapters):
    gen = VLLMGenerator(talky_dir, adapters, tensor_parallel_size=2, seed=3, vllm=FAKE_VLLM, progress=False)
    assert gen.llm.kwargs == {"model": str(talky_dir), "tensor_parallel_size": 2, "seed": 3,
                              "enable_lora": True, "max_loras": 2, "max_lora_rank": 16}
    assert gen.adapters == ["student", "teacher-0"]

    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=0, max_new_tokens=12, n=3, seed=5)
    out = gen.generate(PROMPTS, params, adapter="teacher-0")
    call = gen.llm.calls[-1]
    assert [p["prompt_token_ids"] for p in call["prompts"]] == render_prompts(gen.tokenizer, PROMPTS)
    lora = call["lora"]
    assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == ("teacher-0", 2, str(adapters["teacher-0"]))
    seeds = [derive_seed(5, "prompt", i) for i in range(len(PROMPTS))]
    for sp, seed in zip(call["params"], seeds):
        assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed) == (3, 0.8, 0.9, -1, 12, seed)
    lengths = [len(ids) for ids in render_prompts(gen.tokenizer, PROMPTS)]
    assert out == [[f"teacher-0:{n}:{s}:{i}" for i in range(3)] for n, s in zip(lengths, seeds)]

    greedy = gen.generate(PROMPTS[:2], SamplingParams(temperature=0, top_k=5, n=2))
    sp = gen.llm.calls[-1]["params"][0]
    assert (sp.n, sp.temperature, sp.top_k) == (1, 0, -1) and gen.llm.calls[-1]["lora"] is None
    assert all(a == b and a.startswith("base:") for a, b in greedy)
    assert gen.generate(PROMPTS[:1], SamplingParams(top_k=7))[0][0].startswith("base:")
    assert gen.llm.calls[-1]["params"][0].top_k == 7
    with pytest.raises(UserError, match="unknown adapter"):
        gen.generate(PROMPTS, params, adapter="teacher-1")


def test_vllm_without_adapters_and_with_gguf(talky_dir):
    gen = VLLMGenerator(talky_dir, gguf_file="m.gguf", vllm=FAKE_VLLM, tokenizer=object(), progress=False)
    assert gen.llm.kwargs == {"model": str(talky_dir / "m.gguf"), "tokenizer": str(talky_dir),
                              "tensor_parallel_size": 1, "seed": 0}


def test_vllm_result_parsing_checks_counts():
    outputs = [SimpleNamespace(outputs=[SimpleNamespace(index=1, text="b"), SimpleNamespace(index=0, text="a")])]
    assert parse_outputs(outputs, expected=1, n=2) == [["a", "b"]]
    with pytest.raises(RuntimeError, match="2 completions"):
        parse_outputs(outputs, expected=1, n=3)
    with pytest.raises(RuntimeError, match="1 results for 2 prompts"):
        parse_outputs(outputs, expected=2, n=2)


def test_vllm_lora_rank_and_missing_install(tmp_path, talky_dir):
    for r, expected in ((4, 8), (8, 8), (12, 16), (64, 64)):
        (tmp_path / str(r)).mkdir()
        (tmp_path / str(r) / "adapter_config.json").write_text(json.dumps({"r": r}))
        assert max_lora_rank({"a": tmp_path / str(r)}) == expected
    with pytest.raises(UserError, match="not a PEFT adapter folder"):
        VLLMGenerator(talky_dir, {"x": tmp_path}, vllm=FAKE_VLLM)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install 'macpo\\[gpu\\]'"):
            make_generator("vllm", talky_dir)


def test_vllm_serves_an_adapter_folder_given_as_the_model(talky_dir, adapters):
    gen = VLLMGenerator(adapters["student"], vllm=FAKE_VLLM, progress=False)
    assert gen.llm.kwargs["model"] == str(talky_dir) and gen.adapters == ["default"]
    gen.generate(PROMPTS[:1], SamplingParams())
    assert gen.llm.calls[-1]["lora"].lora_path == str(adapters["student"])


# ---- real model (opt in: pytest -m slow) ---------------------------------------------------


def hh_prompts(path, n):
    import gzip

    from macpo.builder.import_formats import parse_hh

    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            parsed = parse_hh(json.loads(line))
            if len(parsed.prompt) == 1 and len(parsed.prompt[0]["content"]) < 200:  # short single-turn prompts
                rows.append((parsed.prompt, parsed.chosen))
            if len(rows) == n:
                return rows
    return rows


@pytest.mark.slow
def test_smollm2_generates_and_scores_real_hh_prompts(shared_hh):
    import time

    import numpy as np

    from macpo.builder.models import smollm2_path
    from macpo.builder.score import encode_row, score

    gen = TransformersGenerator.load(smollm2_path(), batch_size=8, progress=False, device="cpu")
    rows = hh_prompts(shared_hh, 7)
    prompts = [p for p, _ in rows] + [[{"role": "user", "content": "What is the capital of France?"}]]

    start = time.perf_counter()
    greedy = gen.generate(prompts, SamplingParams(temperature=0, max_new_tokens=32))
    gen_seconds = time.perf_counter() - start
    new_tokens = sum(len(gen.tokenizer(o[0], add_special_tokens=False)["input_ids"]) for o in greedy)
    assert "Paris" in greedy[-1][0]
    assert all(o[0].strip() for o in greedy)
    sampled = gen.generate(prompts[:2], SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16, n=2, seed=1))
    assert sampled == gen.generate(prompts[:2], SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16, n=2, seed=1))

    start = time.perf_counter()
    own = score(gen.model, gen.tokenizer, prompts, [o[0] for o in greedy], progress=False)
    human = score(gen.model, gen.tokenizer, prompts[:-1], [c for _, c in rows], progress=False)
    score_seconds = time.perf_counter() - start
    responses = [o[0] for o in greedy] + [c for _, c in rows]
    encoded = [encode_row(gen.tokenizer, p, [r])[0] for p, r in zip(prompts + prompts[:-1], responses)]
    scored_tokens = sum(len(p) + len(r) for p, r in encoded)
    # The model's own greedy text is far more familiar to it than human-written answers.
    assert np.median(own.ppl[:-1]) < np.median(human.ppl)
    assert np.isfinite(own.ppl).all() and (own.ppl >= 1).all()
    print(
        f"\nSmolLM2 CPU: generate {len(prompts)} prompts, {new_tokens} new tokens in {gen_seconds:.1f} s "
        f"({new_tokens / gen_seconds:.1f} tok/s, batch 8, greedy); score {len(encoded)} rows, "
        f"{scored_tokens} tokens in {score_seconds:.2f} s ({scored_tokens / score_seconds:.0f} tok/s)"
    )
    for prompt, out in zip(prompts, greedy):
        print(f"  {prompt[-1]['content'][:60]!r} -> {out[0][:80]!r}")

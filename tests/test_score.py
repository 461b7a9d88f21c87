"""Scoring: equals a naive one-row forward, equals TRL's DPOTrainer reference log-probs."""

import numpy as np
import pytest
import torch

from macpo.builder.models import load_model, use_adapter
from macpo.builder.score import Scores, encode_row, score, score_ids, score_pairs, token_batches
from macpo.errors import UserError

torch.set_num_threads(1)


def user(text):
    return [{"role": "user", "content": text}]


def bot(text):
    return [{"role": "assistant", "content": text}]


PROMPTS = [
    user("hello there how are you today"),
    [{"role": "system", "content": "be kind"}, *user("what is two plus two ?")],
    [*user("please reverse the words a b c"), *bot("c b a"), *user("and now the quick brown fox")],
    user("sure"),
    user("the lazy dog " * 6),
]
CHOSEN = [bot("i am fine"), bot("it is four"), bot("fox brown quick the"), bot("here is a kind note for your boss"), bot("ok")]
REJECTED = [bot("no"), bot("i cannot help with that request , sorry " * 3), bot("dog lazy"), bot(""), bot("jumps over")]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


def naive_sum_logps(model, tokenizer, prompt, response):
    """One row, full logits, log_softmax over the whole vocabulary: the obvious reference."""
    ((prompt_ids, response_ids),) = encode_row(tokenizer, prompt, [response])
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt_ids) - 1 :].double().sum().item(), len(response_ids)


def test_batched_scores_equal_one_row_at_a_time(tiny):
    model, tok = tiny
    expected = [naive_sum_logps(model, tok, p, r) for p, r in zip(PROMPTS + PROMPTS, CHOSEN + REJECTED)]
    for batch_tokens in (1, 64, 4096):  # one row per batch, a few, everything at once
        got = score(model, tok, PROMPTS + PROMPTS, CHOSEN + REJECTED, batch_tokens=batch_tokens, progress=False)
        np.testing.assert_allclose(got.sum_logps, [e[0] for e in expected], atol=1e-4, rtol=0)
        assert got.n_tokens.tolist() == [e[1] for e in expected]
        np.testing.assert_allclose(got.ppl, np.exp(-got.sum_logps / got.n_tokens), rtol=1e-12)
        assert [len(t) for t in got.token_logps] == got.n_tokens.tolist()
        np.testing.assert_allclose([t.sum() for t in got.token_logps], got.sum_logps, atol=1e-4)
    assert (got.ppl > 1).all() and (got.mean_logps < 0).all()


def test_plain_text_responses_and_message_responses_score_the_same(tiny):
    model, tok = tiny
    as_text = score(model, tok, PROMPTS, [c[0]["content"] for c in CHOSEN], progress=False)
    as_messages = score(model, tok, PROMPTS, CHOSEN, progress=False)
    np.testing.assert_array_equal(as_text.sum_logps, as_messages.sum_logps)


def test_response_tokens_include_the_end_of_turn(tiny):
    _, tok = tiny
    ((prompt_ids, response_ids),) = encode_row(tok, user("hi"), [bot("ok")])
    assert tok.decode(prompt_ids).endswith("<|assistant|>")
    assert tok.decode(response_ids) == "ok<|end|>"


def test_fallback_full_forward_matches_head_only_path(tiny):
    model, tok = tiny
    fast = score(model, tok, PROMPTS, CHOSEN, progress=False)
    model.config.final_logit_softcapping = 30.0  # Llama ignores it, but the scorer must take the full path
    try:
        slow = score(model, tok, PROMPTS, CHOSEN, progress=False)
    finally:
        del model.config.final_logit_softcapping
    np.testing.assert_allclose(slow.sum_logps, fast.sum_logps, atol=1e-4)


def test_token_batches_bound_padded_tokens_and_cover_every_row():
    lengths = [5, 9, 3, 9, 1, 7, 2]
    batches = token_batches(lengths, 18)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) * lengths[b[0]] <= 18 or len(b) == 1 for b in batches)
    assert all(lengths[b[0]] == max(lengths[i] for i in b) for b in batches)
    assert token_batches(lengths, 1) == [[1], [3], [5], [0], [2], [6], [4]]


def test_empty_and_mismatched_inputs(tiny):
    model, tok = tiny
    empty = score(model, tok, [], [], progress=False)
    assert isinstance(empty, Scores) and len(empty.sum_logps) == 0
    none_scored = score_ids(model, [([], [7])], progress=False)  # one token without context: nothing to score
    assert none_scored.n_tokens.tolist() == [0] and np.isnan(none_scored.ppl[0])
    with pytest.raises(UserError, match="one response per prompt"):
        score(model, tok, PROMPTS, CHOSEN[:2], progress=False)


def make_adapter(base_dir, out_dir, seed):
    """A tiny LoRA adapter with random (non-zero) B, so it visibly changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out_dir)
    return out_dir


def test_adapters_are_selected_by_name_and_none_is_the_base(tiny_model_dir, tmp_path, tiny):
    base_model, tok = tiny
    paths = {name: make_adapter(tiny_model_dir, tmp_path / name, seed) for name, seed in (("a", 1), ("b", 2))}
    model, _ = load_model(tiny_model_dir, adapters=paths, device="cpu")
    base = score(base_model, tok, PROMPTS, CHOSEN, progress=False).sum_logps
    under_none = score(model, tok, PROMPTS, CHOSEN, adapter=None, progress=False).sum_logps
    under_a = score(model, tok, PROMPTS, CHOSEN, adapter="a", progress=False).sum_logps
    under_b = score(model, tok, PROMPTS, CHOSEN, adapter="b", progress=False).sum_logps
    np.testing.assert_allclose(under_none, base, atol=1e-5)
    assert np.abs(under_a - base).max() > 1e-3 and np.abs(under_a - under_b).max() > 1e-3
    assert model.active_adapter == "a"  # restored after scoring under "b"
    # The named adapter equals that adapter alone, loaded from its folder, scored naively.
    alone, _ = load_model(paths["b"], device="cpu")
    naive = [naive_sum_logps(alone, tok, p, r)[0] for p, r in zip(PROMPTS, CHOSEN)]
    np.testing.assert_allclose(under_b, naive, atol=1e-4)
    with pytest.raises(UserError, match="unknown adapter 'c'"):
        with use_adapter(model, "c"):
            pass


def trl_ref_logps(model, tok, rows, tmp_path, max_length):
    """TRL's own reference log-probs: DPOTrainer(precompute_ref_log_probs=True) on ``rows``."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, precompute_ref_log_probs=True,
        bf16=False, use_cpu=True, activation_checkpointing=False, report_to="none", disable_tqdm=True,
        max_length=max_length, seed=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    data = trainer.train_dataset
    return np.array(data["ref_chosen_logps"]), np.array(data["ref_rejected_logps"])


@pytest.mark.parametrize("max_length", [None, 24])
def test_conversational_pairs_equal_trl_reference_logps(tiny, tmp_path, max_length):
    model, tok = tiny
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)]
    trl_chosen, trl_rejected = trl_ref_logps(model, tok, rows, tmp_path, max_length)
    chosen, rejected = score_pairs(model, tok, PROMPTS, CHOSEN, REJECTED, max_length=max_length, progress=False)
    # TRL drops rows whose prompt alone fills max_length; they score no token here.
    kept = chosen.n_tokens > 0
    assert kept.sum() == len(trl_chosen) and (kept == (rejected.n_tokens > 0)).all()
    np.testing.assert_allclose(chosen.sum_logps[kept], trl_chosen, atol=1e-4, rtol=0)
    np.testing.assert_allclose(rejected.sum_logps[kept], trl_rejected, atol=1e-4, rtol=0)
    if max_length is not None:  # truncation really bit: one row dropped, others cut short
        full = score_pairs(model, tok, PROMPTS, CHOSEN, REJECTED, progress=False)[1].n_tokens
        assert not kept.all() and (rejected.n_tokens[kept] < full[kept]).any()


def test_plain_text_pairs_equal_trl_including_merges_across_the_prompt_boundary(tiny, tmp_path):
    model, tok = tiny
    # "hello the" + "re ..." merges into "there" for chosen but not for rejected: TRL then cuts
    # both at the shorter common prefix, and so must we.
    prompts = ["hello the", "what is two plus two ?", "Human: please reverse the words\n\nAssistant:"]
    chosen = ["re how are you", " it is four", " c b a<|end|>"]
    rejected = [" fox", " five", " no"]
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected)]
    trl_chosen, trl_rejected = trl_ref_logps(model, tok, rows, tmp_path, None)
    ours_chosen, ours_rejected = score_pairs(model, tok, prompts, chosen, rejected, progress=False)
    np.testing.assert_allclose(ours_chosen.sum_logps, trl_chosen, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours_rejected.sum_logps, trl_rejected, atol=1e-4, rtol=0)
    alone = score(model, tok, prompts[:1], rejected[:1], progress=False)  # " fox" + eos
    assert ours_rejected.n_tokens[0] == alone.n_tokens[0] + 1  # the pair's boundary moved " the" over

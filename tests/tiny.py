"""Tiny offline models and tokenizers for tests (docs/runtime-notes.md).

Random-weight Llama models with a byte-level BPE tokenizer trained on a small corpus
and a ChatML-like chat template. Built in well under a second; never downloaded.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "hello there how are you today",
    "what is two plus two ? it is four",
    "please reverse the words a b c",
    "i cannot help with that request , sorry",
    "sure , here is a kind note for your boss",
    "the quick brown fox jumps over the lazy dog",
    "Human: Assistant: USER: ASSISTANT: 0 1 2 3 4 5 6 7 8 9",
]


def build_tokenizer(extra_corpus: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS + list(extra_corpus or []), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>", padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, hidden: int = 32, layers: int = 2, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder loadable with ``AutoModelForCausalLM``."""
    path = Path(path)
    tok = build_tokenizer()
    model = build_model(tok, hidden=hidden, layers=layers, seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

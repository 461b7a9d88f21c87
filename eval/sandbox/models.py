"""Sandbox models: the world's tokenizer, tiny Llama configs, pretraining on the corpus, and a cache.

Every sandbox agent (``sandbox:teacher-0`` ... ``sandbox:student``) is a tiny LlamaForCausalLM
pretrained on the world's corpus (:mod:`macpo.eval.sandbox.corpus`: worksheets, policy sentences
and unaligned chat), so the larger student holds latent skill but not the assistant protocol.
Checkpoints live outside the repo:

    $MACPO_CACHE/sandbox/<key>/<model-name>/       (default MACPO_CACHE: ~/.cache/macpo)

``<key>`` hashes the world's language (world.definition), the model's architecture and its
pretraining settings (thread count included: float sums differ between thread counts), so a
changed world retrains and a changed seed or data size does not. Each folder is written to a
temporary sibling and renamed into place, and a lock file keeps two processes from training
the same model at once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from macpo.errors import UserError
from macpo.hashing import json_hash

from macpo.eval.sandbox import corpus as C
from macpo.eval.sandbox import world as W
from macpo.eval.sandbox.config import resolve

# Lazy, inside the functions that use them: torch and transformers. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.

PAD, EOS, UNK = "<|pad|>", "<|eos|>", "<|unk|>"
USER, ASSISTANT = C.USER_MARK, C.ASSISTANT_MARK
SPECIALS = [PAD, EOS, UNK]
# The chat markers are ordinary (non-special) added tokens: decoding keeps them, so a model that
# runs on into the next user turn shows "<|user|>" in its response (the gold reward's protocol).
MARKERS = [USER, ASSISTANT]
MAX_POSITIONS = 64

# Every role but "assistant" renders as a user turn (the world has no system prompts). The prompt
# rendered with add_generation_prompt is a prefix of prompt + completion, as TRL requires.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}" + ASSISTANT + " {{ m['content'] }} " + EOS + "{% else %}"
    + USER + " {{ m['content'] }} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

PRETRAIN_FORMAT = "macpo-sandbox-pretrain/2"  # bump when the training code changes its result


def render(prompt: str, response: str | None = None) -> str:
    """The chat template's text for one exchange (tests check it equals apply_chat_template)."""
    text = f"{USER} {prompt} {ASSISTANT}"
    return text if response is None else f"{text} {response} {EOS}"


# ---- tokenizer -----------------------------------------------------------------------------

def build_tokenizer():
    """A WordLevel tokenizer over the world vocabulary: every world word is exactly one token,
    digits are split one per token, and there is no BOS (so prompts are token prefixes)."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + MARKERS + W.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.add_special_tokens(SPECIALS)
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKERS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(path: str | os.PathLike):
    """Load a sandbox tokenizer with left padding (generation needs it; not every save keeps it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    return tok


def check_single_tokens(tokenizer) -> None:
    """Every world word must be one token (a word split into several tokens caps exact matches: the first prototype's "visit" and "praise")."""
    split = [w for w in W.vocabulary() if len(tokenizer(w, add_special_tokens=False)["input_ids"]) != 1]
    unknown = [w for w in W.vocabulary() if tokenizer.convert_tokens_to_ids(w) == tokenizer.unk_token_id]
    if split or unknown:
        raise AssertionError(f"world words not single known tokens: {sorted(set(split + unknown))}")


# ---- model and pretraining configs -------------------------------------------------------------

def model_settings(world_cfg: Mapping[str, Any] | None) -> tuple[dict[str, dict], dict]:
    """(name -> architecture + pretraining schedule, shared pretraining settings)."""
    cfg = resolve(world_cfg)
    return cfg["models"], cfg["pretrain"]


def build_model(tokenizer, spec: Mapping[str, Any], seed: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    hidden, layers = int(spec["hidden"]), int(spec["layers"])
    heads = int(spec.get("heads", 4))
    if hidden % heads:
        raise UserError(f"world.models: hidden {hidden} is not divisible by heads {heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(spec.get("mlp", 4 * hidden)),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=24
    )
    return model


def _tensors(rows: list[tuple[list[int], list[int]]], pad: int):
    """(input_ids, attention_mask, labels) of right-padded rows of (ids, loss mask)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, loss) in enumerate(rows):  # right padding is fine for teacher-forced training
        ids_t[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, loss)])
    return ids_t, mask, labels


def _split_point(lengths: list[int]) -> int:
    """Where to cut length-sorted rows into two micro-batches with the least padding."""
    n = len(lengths)
    cost = [i * lengths[i - 1] + (n - i) * lengths[-1] for i in range(1, n)]
    return 1 + min(range(len(cost)), key=cost.__getitem__) if cost else n


def encode_document(doc: Mapping[str, Any], vocab: Mapping[str, int]) -> tuple[list[int], list[int]]:
    """Token ids of a corpus document and its loss mask (1 where the model is trained to predict).

    Documents are canonical world text (one word per token), so a dictionary lookup is the
    tokenizer here; tests check it equals the real tokenizer's ids.
    """
    ids, loss = [], []
    for text, has_loss in doc["segments"]:
        words = text.split()
        ids += [vocab[w] for w in words]
        loss += [int(has_loss)] * len(words)
    return ids, loss


def _batches(tokenizer, world_cfg: dict, batch_size: int, seed: int):
    """Endless batches of corpus documents, each a list of (input_ids, attention_mask, labels)
    micro-batches (the batch's rows sorted by length and cut in two where padding is least).

    The loss covers what a document teaches (answers, verdicts, the assistant turn and the
    user marker that follows it), never the random operands or prompts the model cannot predict.
    """
    stream = C.stream(world_cfg, seed)
    vocab = tokenizer.get_vocab()
    pad = tokenizer.pad_token_id
    while True:
        rows = sorted((encode_document(next(stream), vocab) for _ in range(batch_size)), key=lambda r: len(r[0]))
        cut = _split_point([len(r[0]) for r in rows])
        yield [_tensors(part, pad) for part in (rows[:cut], rows[cut:]) if part]


def pretrain(model, tokenizer, world_cfg: dict, spec: Mapping[str, Any], pre: Mapping[str, Any], seed: int, bar=None) -> dict:
    """Next-token pretraining on the world corpus (every model reads it from its first document).

    A plain torch loop, not TRL/Trainer: this is language-model pretraining on an endless
    synthetic stream (no dataset, no checkpoints, no eval), where a 30-line loop is much faster
    to start than a Trainer and has nothing to reuse from preference training.
    """
    import torch
    from transformers import get_cosine_schedule_with_warmup

    steps = int(spec["steps"])
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(spec["lr"]), betas=(0.9, 0.98), weight_decay=float(pre["weight_decay"])
    )
    sched = get_cosine_schedule_with_warmup(opt, min(int(pre["warmup"]), max(steps // 5, 1)), steps)
    batches = _batches(tokenizer, world_cfg, int(spec.get("batch_size", pre["batch_size"])), seed)
    model.train()
    losses = []
    for _ in range(steps):
        parts = next(batches)
        # Micro-batch losses summed over all label tokens of the batch: exactly the batch mean.
        n_tokens = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in parts)
        loss_value = 0.0
        for ids, mask, labels in parts:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_tokens).loss
            loss.backward()
            loss_value += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss_value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    model.eval()
    tail = losses[-20:]
    return {"steps": steps, "final_loss": sum(tail) / len(tail) if tail else None}


# ---- cache ---------------------------------------------------------------------------------

def cache_root() -> Path:
    base = os.environ.get("MACPO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "macpo"
    )
    return Path(base) / "sandbox"


def _canonical(obj: Any) -> Any:
    """Numbers as floats, so ``1`` in a YAML file and ``1.0`` in the defaults hash the same."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return float(obj)
    return obj


def cache_key(world_cfg: Mapping[str, Any] | None, name: str) -> str:
    """Hash of what determines the pretrained weights of model ``name``."""
    cfg = resolve(world_cfg)
    if name not in cfg["models"]:
        raise UserError(f"world.models has no model {name!r} (models: {', '.join(cfg['models'])})")
    key = {"format": PRETRAIN_FORMAT, "world": W.definition(cfg), "model": cfg["models"][name], "pretrain": cfg["pretrain"],
           "name": name}
    return json_hash(_canonical(key)).split(":", 1)[1][:16]


def model_dir(world_cfg: Mapping[str, Any] | None, name: str) -> Path:
    return cache_root() / cache_key(world_cfg, name) / name


def threads(pre: Mapping[str, Any]) -> int:
    """Torch threads for pretraining: ``pretrain.threads``, pinned in the config.

    Never chosen from the machine's load: a load-dependent count made a fresh clone's demo
    score 0.735 where the same config had scored 0.761 (float sums differ between counts).
    """
    return int(pre["threads"])


def _train_one(world_cfg: dict, name: str, final: Path, bar) -> dict:
    import torch

    models, pre = model_settings(world_cfg)
    spec = models[name]
    tokenizer = build_tokenizer()
    check_single_tokens(tokenizer)
    # Each model draws its own corpus stream; its init seed depends on the name too.
    seed = int(pre["seed"])
    model = build_model(tokenizer, spec, seed=seed + sum(map(ord, name)))
    start = time.perf_counter()
    stats = pretrain(model, tokenizer, world_cfg, spec, pre, seed=seed, bar=bar)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    stats["threads"] = torch.get_num_threads()
    stats["parameters"] = sum(p.numel() for p in model.parameters())

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"name": name, "key": final.parent.name, "model": spec, "pretrain": pre, **stats,
                "world": W.definition(world_cfg)}
        (tmp / "sandbox.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


# Total pretraining work (steps x width^2 x layers) from which worker processes pay off: the demo
# world's is ~120M (the student ~100M, minutes); a test world's is under 1M (seconds).
_PARALLEL_WORK = 10_000_000


def _pretrain_cached(cfg: dict, name: str, final: Path, progress: bool, position: int | None = None) -> None:
    """Pretrain ``name`` into ``final`` unless another process already did (file lock)."""
    import fcntl

    import torch
    from tqdm.auto import tqdm

    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be training it
        if (final / "sandbox.json").is_file():
            return
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads(cfg["pretrain"]))
        try:
            with tqdm(total=int(cfg["models"][name]["steps"]), desc=f"pretraining {name}", unit="step",
                      disable=not progress, position=position) as bar:
                _train_one(cfg, name, final, bar)
        finally:
            torch.set_num_threads(old_threads)


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Pool initializer: a pretraining worker whose parent died (kill -9 of the command or stage
    that started it) exits instead of training on for minutes as an orphan (seen here: killed
    sweeps left their workers running). A daemon thread polls the parent pid."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(137)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def prepare_models(world_cfg: Mapping[str, Any] | None = None, names: list[str] | None = None,
                   progress: bool = True, processes: int | None = None) -> dict[str, str]:
    """Pretrained base models (before any SFT) for the sandbox agents, trained once and cached.

    Returns ``{name: local model folder}`` for ``names`` (default: every model of
    ``world.models``, i.e. ``teacher-0`` .. ``teacher-{K-1}`` and ``student``).

    Missing models train side by side in ``processes`` worker processes (default: one per core,
    at most one per model), the largest first, so the student's pretraining runs while the
    teachers' do (small test worlds train in this process: a worker takes seconds to start). The
    workers are spawned: a script that calls this needs the ``if __name__ == "__main__":`` guard.
    Each model trains alone in its process with the config's pinned thread count and its own
    seeds, so its weights do not depend on how many processes ran or in what order.
    """
    cfg = resolve(world_cfg)
    models = cfg["models"]
    names = list(models) if names is None else list(names)
    unknown = [n for n in names if n not in models]
    if unknown:
        raise UserError(f"world.models has no model(s) {', '.join(unknown)} (models: {', '.join(models)})")
    dirs = {n: model_dir(cfg, n) for n in names}
    todo = [n for n in names if not (dirs[n] / "sandbox.json").is_file()]

    def work(n: str) -> int:  # steps x width^2 x layers: proportional to pretraining time
        return int(models[n]["steps"]) * int(models[n]["hidden"]) ** 2 * int(models[n]["layers"])

    todo.sort(key=work, reverse=True)  # largest first: with 2 processes the student gets one to itself
    if processes is None:
        # A worker costs seconds to start (it imports torch); test worlds pretrain in less.
        processes = (os.cpu_count() or 1) if sum(map(work, todo)) >= _PARALLEL_WORK else 1
    processes = min(len(todo), processes)
    if processes <= 1:
        for n in todo:
            _pretrain_cached(cfg, n, dirs[n], progress)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker (no forked torch thread pools or locks).
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_pretrain_cached, cfg, n, dirs[n], progress, i) for i, n in enumerate(todo)]
            for f in futures:
                f.result()  # a failed model raises here, after the others stopped or finished
    return {n: str(d) for n, d in dirs.items()}


def pretrain_info(path: str | os.PathLike) -> dict:
    """The ``sandbox.json`` written next to a cached model (timings, loss, settings)."""
    return json.loads((Path(path) / "sandbox.json").read_text())


def load_model(path: str | os.PathLike):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def generate(model, tokenizer, prompts: list[str], batch_size: int = 256, max_new_tokens: int = 24) -> list[str]:
    """Greedy responses to world prompts (for measurements; the builder has its own generator)."""
    import torch

    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch_size):
        texts = [render(p) for p in prompts[i : i + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [o.strip() for o in out]

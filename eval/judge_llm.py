"""LLM-as-judge: pairwise verdicts from any OpenAI-compatible endpoint (``eval.judge``).

The student of every round is compared, prompt by prompt on the eval split, with the round-0
student and with each teacher of the same round. Every pair is asked twice, once in each order
(position swap): the student wins a prompt only when both orders prefer it, loses only when both
prefer the other, and ties otherwise (the orders disagree, or the judge said tie). Identical texts
are a tie without asking. A reply without a verdict is *unparseable*: that prompt leaves the
win / tie / loss shares, and the count and a few of the replies are shown next to them.

The judge is a hosted API or a ``vllm serve`` of your own, reached with the ``openai`` client:
it retries 429, 5xx and dropped connections with exponential backoff (``max_retries``, honouring
``Retry-After``); every other failure ends the step with one line. Replies are cached per request
in ``OUT/judge/cache.jsonl``, so an interrupted or repeated judgment is not paid for twice. The API
key is read from the environment variable ``api_key_env`` and goes nowhere else: not into the
cache, the report, the config or any message (a server's error text is redacted before it is shown).

The prompts are our own Jinja templates (``eval/templates/judge_helpful.j2``,
``judge_harmless.j2``), not the MACPO paper's exact GPT-4 prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import jinja2
import numpy as np

from macpo.errors import UserError
from macpo.eval.judge_config import JUDGE_TEMPLATES, JudgeConfig
from macpo.eval.stats import draws, interval, matrix_stat, replicate
from macpo.layout import RunLayout
from macpo.store import Store

if TYPE_CHECKING:  # the run layer's type: the judge is handed a resolved config, never loads one
    from macpo.config import RunConfig

OUTCOMES = ("win", "tie", "loss")
# The templates ask for [[A]], [[B]] or [[tie]]; failing that, one single-bracketed verdict ("The
# answer is: [A]", as SmolLM2 writes it) or a reply that is nothing but the letter counts too.
_BRACKETED = re.compile(r"\[\[\s*(a|b|tie)\s*\]\]", re.IGNORECASE)
_SINGLE = re.compile(r"(?<!\[)\[\s*(a|b|tie)\s*\](?!\])", re.IGNORECASE)
_BARE = re.compile(r"[\s\"'`*.:(\[]*(?:(?:response|answer|verdict)\s*:?\s*)?(a|b|tie)[\s\"'`*.)\]]*", re.IGNORECASE)
# A placeholder key for endpoints without authentication (the client refuses an empty one).
_NO_KEY = "EMPTY"
SAMPLES_SHOWN = 3


# ---- prompts and verdicts -----------------------------------------------------------------------------
def load_template(name: str):
    """The Jinja template ``helpful`` / ``harmless`` (ours) or a user's file; undefined variables are errors."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    if name in JUDGE_TEMPLATES:
        source = (resources.files("macpo.eval") / "templates" / f"judge_{name}.j2").read_text()
    else:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"eval.judge.template: {name} does not exist")
        source = path.read_text()
    try:
        template = env.from_string(source)
        probe = template.render(prompt=[{"role": "user", "content": "Q"}], response_a="\x00A\x00", response_b="\x00B\x00")
    except jinja2.TemplateError as exc:
        raise UserError(f"eval.judge.template {name}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
                        "(variables: prompt, response_a, response_b)") from None
    if "\x00A\x00" not in probe or "\x00B\x00" not in probe:
        raise UserError(f"eval.judge.template {name}: it must show both {{{{ response_a }}}} and {{{{ response_b }}}}")
    return template


def parse_verdict(reply: str | None) -> str | None:
    """``"A"``, ``"B"``, ``"tie"``, or None when the reply states no single verdict."""
    if not reply:
        return None
    found = {m.lower() for m in _BRACKETED.findall(reply)} or {m.lower() for m in _SINGLE.findall(reply)}
    if not found:
        bare = _BARE.fullmatch(reply.strip())
        found = {bare.group(1).lower()} if bare else set()
    if len(found) != 1:
        return None
    v = found.pop()
    return "tie" if v == "tie" else v.upper()


def combine(student_first: str | None, student_second: str | None) -> str:
    """The prompt's outcome for the student from the two orders' verdicts (student as A, then as B)."""
    if student_first is None or student_second is None:
        return "unparseable"
    first = {"A": "win", "B": "loss", "tie": "tie"}[student_first]
    second = {"B": "win", "A": "loss", "tie": "tie"}[student_second]
    return first if first == second else "tie"


# ---- the endpoint ---------------------------------------------------------------------------------------
def api_key(j: JudgeConfig) -> str:
    if not j.api_key_env:
        return _NO_KEY
    key = os.environ.get(j.api_key_env, "")
    if not key:
        raise UserError(f"eval.judge: environment variable {j.api_key_env} is not set (it holds the judge's API key; "
                        "set api_key_env: '' for an endpoint without authentication)")
    return key


def display_url(url: str) -> str:
    """``url`` without user info or query (where some deployments carry credentials)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc,
                       parts.path, "", ""))


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key and key != _NO_KEY else text


def _failure(exc: Exception, j: JudgeConfig, key: str) -> UserError:
    """One line for a request the client gave up on; the server's own text only after redaction."""
    import openai  # lazy: ~0.5 s to import; only a run with eval.judge set sends requests

    where = f"judge endpoint {display_url(j.base_url)}"
    status = getattr(exc, "status_code", None)
    said = _redact(" ".join(str(getattr(exc, "message", exc)).split())[:200], key)
    if isinstance(exc, openai.AuthenticationError):
        source = f"${j.api_key_env}" if j.api_key_env else "no key (api_key_env is '')"
        return UserError(f"{where} refused the API key from {source} (401 Unauthorized): check the key and eval.judge.api_key_env")
    if isinstance(exc, openai.PermissionDeniedError):
        return UserError(f"{where}: the key from ${j.api_key_env} may not use model {j.model!r} (403 Forbidden)")
    if isinstance(exc, openai.NotFoundError):
        return UserError(f"{where}: 404 for model {j.model!r} (is base_url the API root, e.g. .../v1, and does it serve "
                         f"that model?): {said}")
    if isinstance(exc, openai.RateLimitError):
        return UserError(f"{where} still answered 429 (rate limited) after {j.max_retries} retries: lower "
                         "eval.judge.max_concurrency or raise max_retries; verdicts so far are cached, rerun to resume")
    if isinstance(exc, openai.APIStatusError):
        tail = f" after {j.max_retries} retries" if status and status >= 500 else ""
        return UserError(f"{where} answered {status}{tail}: {said}")
    if isinstance(exc, openai.APITimeoutError):
        return UserError(f"{where} did not answer within eval.judge.timeout={j.timeout:g}s ({j.max_retries} retries)")
    if isinstance(exc, openai.APIConnectionError):
        cause = _redact(" ".join(str(exc.__cause__ or exc).split())[:200], key)
        return UserError(f"cannot reach {where} ({j.max_retries} retries): {cause}")
    raise exc


@dataclass
class Judge:
    """One endpoint and model, a reply cache, and a bounded pool of concurrent requests."""

    cfg: JudgeConfig
    cache_path: Path | None = None
    requests_sent: int = 0
    _cache: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            import openai
        except ImportError:
            raise UserError("eval.judge needs the openai package: pip install 'openai>=1.0,<4'") from None

        self._key = api_key(self.cfg)
        self.client = openai.OpenAI(base_url=self.cfg.base_url, api_key=self._key, max_retries=self.cfg.max_retries,
                                    timeout=self.cfg.timeout)
        self._lock = threading.Lock()
        self._failed = threading.Event()
        if self.cache_path is not None and self.cache_path.is_file():
            for line in self.cache_path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self._cache[item["key"]] = item["reply"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that request is asked again

    def _request_key(self, content: str) -> str:
        # The endpoint is part of the key: the same model name on another server may be another model.
        return hashlib.sha256(json.dumps([self.cfg.base_url, self.cfg.model, self.cfg.max_tokens, content]).encode()).hexdigest()

    def _ask(self, content: str) -> str | None:
        import openai  # lazy: ~0.5 s to import; only a run with eval.judge set sends requests

        if self._failed.is_set():  # a request already failed for good: queued ones are not sent
            return None
        with self._lock:
            self.requests_sent += 1
        try:
            try:
                resp = self.client.chat.completions.create(
                    model=self.cfg.model, messages=[{"role": "user", "content": content}], temperature=0,
                    max_tokens=self.cfg.max_tokens)
            except openai.APIError as exc:
                raise _failure(exc, self.cfg, self._key) from None
            choices = getattr(resp, "choices", None)
            if not choices or getattr(choices[0], "message", None) is None:
                raise UserError(f"judge endpoint {display_url(self.cfg.base_url)} answered something that is not a chat "
                                "completion (is base_url the API root, e.g. http://HOST:8000/v1?)")
        except BaseException:
            self._failed.set()
            raise
        return choices[0].message.content or ""

    def replies(self, contents: list[str]) -> list[str]:
        """The judge's reply to each user message, from the cache or the endpoint (``max_concurrency`` at a time)."""
        keys = [self._request_key(c) for c in contents]
        todo = {k: c for k, c in zip(keys, contents) if k not in self._cache}
        if todo:
            fh = open(self.cache_path, "a") if self.cache_path is not None else None
            pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="judge")
            try:
                futures = {pool.submit(self._ask, c): k for k, c in todo.items()}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in (f for f in done if f.exception() is None and f.result() is not None):
                        self._cache[futures[fut]] = fut.result()
                        if fh is not None:  # one line per reply as it lands: a kill loses only requests in flight
                            fh.write(json.dumps({"key": futures[fut], "reply": fut.result()}) + "\n")
                            fh.flush()
                    failed = [f for f in done if f.exception() is not None]
                    if failed:
                        raise failed[0].exception()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                if fh is not None:
                    fh.close()
        return [self._cache[k] for k in keys]


# ---- comparisons over a run's evals -------------------------------------------------------------------------
@dataclass
class Comparison:
    """The student at ``round`` vs ``opponent`` over the prompts both answered."""

    round: int
    opponent: str  # "student@round-0" or "teacher-k" (of the same round)
    outcomes: list[str]  # per prompt: win / tie / loss / unparseable
    identical: int = 0
    unparseable_replies: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def counted(self) -> int:
        return sum(o in OUTCOMES for o in self.outcomes)

    def summarize(self, n_boot: int = 1000, seed: int = 0) -> dict:
        """Win / tie / loss shares over the parseable prompts, each with a 95% bootstrap interval over prompts."""
        kept = [o for o in self.outcomes if o in OUTCOMES]
        out = {"n": len(kept), "prompts": len(self.outcomes), "identical": self.identical,
               "unparseable": len(self.unparseable_replies), "samples": self.unparseable_replies[:SAMPLES_SHOWN]}
        d = draws(1, len(kept), n_boot=n_boot, rng_seed=seed) if kept else None
        for name in OUTCOMES:
            if not kept:
                out[name] = None
                continue
            values = np.array([[o == name for o in kept]], dtype=float)
            out[name] = interval(float(values.mean()), replicate(matrix_stat(values), d))
        self.stats = out
        return out


def _text(messages) -> str:
    return messages[-1]["content"] if messages else ""


def plan_comparisons(cfg: RunConfig, store, evals_dataset: str) -> list[tuple[int, str, list]]:
    """``(round, opponent, [(prompt, student text, opponent text), ...])`` for every comparison the evals allow."""
    rounds = sorted(int(v[6:]) for v in store.versions(evals_dataset) if v.startswith("round-") and v[6:].isdigit())
    answers: dict[tuple[int, str], dict] = {}
    for r in rounds:
        for row in store.read(evals_dataset, f"round-{r}", "default").select(["agent", "prompt_id", "prompt", "response"]).to_pylist():
            answers.setdefault((r, row["agent"]), {})[row["prompt_id"]] = (row["prompt"], _text(row["response"]))
    plans = []
    for r in rounds:
        mine = answers.get((r, "student"))
        if not mine:
            continue
        opponents = [("student@round-0", answers.get((0, "student")))] if r > 0 else []
        opponents += [(t, answers.get((r, t))) for t in cfg.teacher_names() if (r, t) in answers]
        for name, theirs in opponents:
            if theirs:
                common = [p for p in mine if p in theirs]
                plans.append((r, name, [(mine[p][0], mine[p][1], theirs[p][1]) for p in common]))
    return plans


def judge_comparisons(judge: Judge, template, plans) -> list[Comparison]:
    """Ask every non-identical pair in both orders (one batch, so ``max_concurrency`` spans comparisons)."""
    asks = []
    for _, _, items in plans:
        for prompt, ours, theirs in items:
            if ours != theirs:
                asks.append(template.render(prompt=prompt, response_a=ours, response_b=theirs))
                asks.append(template.render(prompt=prompt, response_a=theirs, response_b=ours))
    replies = iter(judge.replies(asks))
    out = []
    for r, name, items in plans:
        c = Comparison(round=r, opponent=name, outcomes=[])
        for _, ours, theirs in items:
            if ours == theirs:
                c.identical += 1
                c.outcomes.append("tie")
                continue
            first, second = next(replies), next(replies)
            outcome = combine(parse_verdict(first), parse_verdict(second))
            if outcome == "unparseable":
                c.unparseable_replies += [x for x in (first, second) if parse_verdict(x) is None]
            c.outcomes.append(outcome)
        c.summarize(seed=cfg_seed(r, name))
        out.append(c)
    return out


def cfg_seed(round_: int, opponent: str) -> int:
    """A fixed bootstrap seed per comparison, so a rerun reports the same intervals."""
    return int(hashlib.sha256(f"{round_}/{opponent}".encode()).hexdigest()[:8], 16)


def run_judge(cfg: RunConfig) -> list[Comparison]:
    """Judge a run's evals with ``cfg.eval.judge`` (replies cached in ``OUT/judge/cache.jsonl``)."""
    j = cfg.eval.judge
    if j is None:
        raise UserError("eval.judge is not set in the run config (base_url, model, api_key_env, template, ...)")
    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    if layout.evals_dataset not in store.datasets():
        raise UserError(f"no evals in {layout.store_dir} yet: run `macpo eval --round N` first")
    template = load_template(j.template)
    plans = plan_comparisons(cfg, store, layout.evals_dataset)
    cache = layout.out / "judge" / "cache.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    return judge_comparisons(Judge(j, cache), template, plans)


# ---- report pieces ------------------------------------------------------------------------------------------------
def columns(comparisons: list[Comparison]) -> dict[tuple[int, str], dict]:
    """metrics.csv columns for the student's row of each round: ``judge:<opponent>:<stat>``."""
    out: dict[tuple[int, str], dict] = {}
    for c in comparisons:
        s, pre = c.stats, f"judge:{c.opponent}:"
        row = out.setdefault((c.round, "student"), {})
        for name in OUTCOMES:
            iv = s[name]
            row.update({pre + name: iv.mean if iv else None, pre + name + "_low": iv.low if iv else None,
                        pre + name + "_high": iv.high if iv else None})
        row.update({pre + "n": s["n"], pre + "unparseable": s["unparseable"], pre + "identical": s["identical"]})
    return out


def column_names(comparisons: list[Comparison]) -> list[str]:
    names: list[str] = []
    for c in comparisons:
        for col in columns([c])[(c.round, "student")]:
            if col not in names:
                names.append(col)
    return names


def markdown(cfg: RunConfig, comparisons: list[Comparison]) -> str:
    """The report's judge section (``eval/templates/judge_report.md.j2``)."""
    source = (resources.files("macpo.eval") / "templates" / "judge_report.md.j2").read_text()
    fmt = lambda iv: iv.fmt() if iv is not None else "–"  # noqa: E731
    return jinja2.Template(source, trim_blocks=True, lstrip_blocks=True).render(
        judge=cfg.eval.judge, url=display_url(cfg.eval.judge.base_url), comparisons=comparisons, fmt=fmt,
        builtin=cfg.eval.judge.template in JUDGE_TEMPLATES, shown=_shown)


def _shown(reply: str, width: int = 100) -> str:
    """A reply on one table-safe line, cut to ``width`` characters."""
    text = " ".join((reply or "").split()).replace("|", "\\|").replace("`", "'")
    return (text[:width] + "…") if len(text) > width else (text or "(empty reply)")


def summary_lines(comparisons: list[Comparison]) -> list[str]:
    """One line per comparison, for ``macpo eval --judge``."""
    lines = []
    for c in comparisons:
        s = c.stats
        shares = ", ".join(f"{name} {s[name].fmt() if s[name] else '–'}" for name in OUTCOMES)
        lines.append(f"round {c.round} student vs {c.opponent}: {shares} over {s['n']} of {s['prompts']} prompts "
                     f"({s['identical']} identical, {s['unparseable']} unparseable replies)")
    return lines or ["no comparisons: the evals hold no student answers to judge"]

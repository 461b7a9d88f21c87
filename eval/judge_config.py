"""The run config's ``eval.judge`` section: an LLM judge behind an OpenAI-compatible endpoint,
its built-in templates and its checks. The eval stage's own type (``macpo.eval.judge_llm`` reads
it); the run config composes it and checks it as the config loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from macpo.configfields import help_field as _f
from macpo.errors import UserError

JUDGE_TEMPLATES = ("helpful", "harmless")


@dataclass
class JudgeConfig:
    """An LLM judge behind an OpenAI-compatible endpoint (``macpo.eval.judge_llm``)."""

    base_url: str = _f("", "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (`vllm serve`) or https://api.openai.com/v1")
    model: str = _f("", "judge model name as the endpoint knows it")
    api_key_env: str = _f("OPENAI_API_KEY", "environment variable holding the API key (the key itself never goes in "
                          "a config); '' for an endpoint without authentication")
    template: str = _f("helpful", "judge prompt: helpful | harmless (eval/templates/judge_*.j2) or a Jinja file with "
                       "`prompt`, `response_a`, `response_b`")
    max_concurrency: int = _f(4, "requests in flight at once")
    max_retries: int = _f(5, "retries of a request answered 429, 5xx or not at all (exponential backoff)")
    timeout: float = _f(120.0, "seconds per request")
    max_tokens: int = _f(16, "tokens the judge may write per verdict")


def check_judge(j: JudgeConfig) -> None:
    if not re.match(r"https?://[^/\s]+", j.base_url or ""):
        raise UserError(f"config eval.judge.base_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {j.base_url!r}")
    if not j.model:
        raise UserError("config eval.judge.model: name the judge model (as the endpoint serves it)")
    if j.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", j.api_key_env):
        # Never echo it: a value that is not a variable name may be the key itself.
        raise UserError("config eval.judge.api_key_env: must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                        "not the key itself")
    if j.template not in JUDGE_TEMPLATES and not Path(j.template).is_file():
        raise UserError(f"config eval.judge.template: {j.template!r} is neither one of {', '.join(JUDGE_TEMPLATES)} "
                        "nor a Jinja file")
    if j.max_concurrency < 1 or j.max_retries < 0 or j.timeout <= 0 or j.max_tokens < 1:
        raise UserError("config eval.judge: max_concurrency and max_tokens must be >= 1, max_retries >= 0, timeout > 0")

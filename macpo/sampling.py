"""``SamplingParams``: how a response is sampled, with its defaults and limits, defined once.

Every generation backend honours it the same way, and the run config's ``sampling`` section is
this type plus ``batch_size`` (``SamplingConfig`` in macpo.config). Because of that, a value out
of range is refused when the config loads, with one line that names the field
(``config sampling.top_p: 1.5 is out of range (must be in (0, 1])``), before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from macpo.configfields import help_field as _f
from macpo.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters honoured identically by every backend."""

    temperature: float = _f(0.7, "sampling temperature (0 = greedy; 0 to 100)")
    top_p: float = _f(1.0, "nucleus sampling threshold, in (0, 1]")
    top_k: int = _f(0, "top-k sampling (0 = off; >= 0)")
    max_new_tokens: int = _f(32, "maximum generated tokens per response (1 to 1,000,000)")
    n: int = _f(1, "samples per prompt per agent (1 to 1,000)")
    seed: int = _f(0, "generation seed; each (round, agent) derives its own from it (0 to 2^32-1)")

    # How errors name this section: the run config's subclass says "config sampling".
    WHERE: ClassVar[str] = "sampling"
    # field -> (low, high) of every bounded number; None = unbounded on that side. top_p is the
    # open interval (0, 1], checked on its own. The field help states the same limits.
    LIMITS: ClassVar[dict] = {"temperature": (0, 100), "top_k": (0, None), "max_new_tokens": (1, 10**6),
                              "n": (1, 1000), "seed": (0, None)}

    def __post_init__(self):
        for name, (low, high) in self.LIMITS.items():
            v = getattr(self, name)
            if not math.isfinite(v):  # nan compares False with every bound
                raise UserError(f"{self.WHERE}.{name}: expected a finite number, got {v!r}")
            if (low is not None and v < low) or (high is not None and v > high):
                bound = f"between {low:,} and {high:,}" if high is not None else f">= {low:,}"
                raise UserError(f"{self.WHERE}.{name}: {v!r} is out of range (must be {bound})")
        if not 0 < self.top_p <= 1:
            raise UserError(f"{self.WHERE}.top_p: {self.top_p!r} is out of range (must be in (0, 1])")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def for_call(self, seed: int, n: int | None = None, greedy: bool = False) -> SamplingParams:
        """What one ``generate`` call samples with: these settings under the call's own ``seed``
        (and ``n``), as the plain type. A subclass's extra fields, such as the config's
        ``batch_size``, are not sampling and are left out.

        ``greedy``: argmax decoding at this length, one answer per prompt, with the sampling knobs
        at their defaults. They do not apply, and the provenance columns say so."""
        if greedy:
            return SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens, seed=seed)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingParams)}
        return SamplingParams(**{**values, "seed": seed, "n": self.n if n is None else n})

    def columns(self) -> dict[str, Any]:
        """The sampling provenance columns of candidates/pairs/sft tables."""
        return {
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": int(self.top_k),
            "max_new_tokens": int(self.max_new_tokens),
            "seed": int(self.seed),
        }

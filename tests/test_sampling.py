"""SamplingParams (macpo/sampling.py): one type with its defaults and limits. The run config's
`sampling` section is that type, so a bad value is refused when the config loads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_line_error
from macpo.config import SamplingConfig
from macpo.errors import UserError
from macpo.sampling import SamplingParams

REPO_ROOT = Path(__file__).resolve().parents[1]
CI = REPO_ROOT / "eval" / "configs" / "ci.yaml"


def test_the_run_configs_sampling_section_is_the_sampling_type():
    assert issubclass(SamplingConfig, SamplingParams)
    plain = {f.name: (f.default, f.metadata["help"]) for f in dataclasses.fields(SamplingParams)}
    section = {f.name: (f.default, f.metadata["help"]) for f in dataclasses.fields(SamplingConfig)}
    # Same defaults and help for every sampling field; the section adds only its batch size.
    assert {k: v for k, v in section.items() if k != "batch_size"} == plain
    assert list(section) == [*plain, "batch_size"]  # field order (and so the config's YAML) unchanged


def test_a_call_gets_the_plain_type_with_its_own_seed():
    section = SamplingConfig(temperature=0.9, top_p=0.8, top_k=5, max_new_tokens=7, n=3, seed=1, batch_size=2)
    call = section.for_call(seed=2**40, n=4)  # derived seeds are 63-bit: above the config's 2^32 limit
    assert type(call) is SamplingParams
    assert dataclasses.astuple(call) == (0.9, 0.8, 5, 7, 4, 2**40)
    greedy = section.for_call(seed=3, greedy=True)
    # Argmax at the section's length; the sampling knobs stay at their defaults (the provenance columns).
    assert greedy == SamplingParams(temperature=0.0, max_new_tokens=7, n=1, seed=3) and greedy.greedy


@pytest.mark.parametrize("field, value, bound", [
    ("temperature", -0.5, "between 0 and 100"),
    ("temperature", 101, "between 0 and 100"),
    ("top_p", 0, "in (0, 1]"),
    ("top_p", 1.5, "in (0, 1]"),
    ("top_k", -1, ">= 0"),
    ("max_new_tokens", 0, "between 1 and 1,000,000"),
    ("n", 1001, "between 1 and 1,000"),
    ("seed", -1, ">= 0"),
])
def test_each_limit_is_checked_where_the_type_is_built(field, value, bound):
    with pytest.raises(UserError) as plain:
        SamplingParams(**{field: value})
    assert str(plain.value) == f"sampling.{field}: {value!r} is out of range (must be {bound})"
    with pytest.raises(UserError, match=rf"^config sampling\.{field}: "):
        SamplingConfig(**{field: value})


def test_nan_is_refused_not_compared():
    with pytest.raises(UserError, match="sampling.temperature: expected a finite number"):
        SamplingParams(temperature=float("nan"))  # nan < 0 and nan > 100 are both False


@pytest.mark.parametrize("command", [["build", "--round", "0"], ["eval", "--round", "0"]])
def test_a_bad_sampling_value_stops_a_stage_before_any_work(command, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "macpo.cli", *command, "--config", str(CI), "--set", f"out={out}",
                           "--set", "sampling.top_p=1.5"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    one_line_error(proc, "config sampling.top_p: 1.5 is out of range (must be in (0, 1])")
    assert not out.exists()

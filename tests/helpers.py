"""Small table builders shared by tests."""

from __future__ import annotations

import pyarrow as pa


def msgs(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def pairs_table(rows: list[tuple[str, str, str]], agent: str = "default", round_: int = 0, **extra) -> pa.Table:
    """(prompt, chosen, rejected) strings -> a `pairs`-kind table."""
    n = len(rows)
    cols = {
        "pair_id": [f"{agent}-{round_}-{i}" for i in range(n)],
        "prompt_id": [f"p{i}" for i in range(n)],
        "round": pa.array([round_] * n, pa.int32()),
        "agent": [agent] * n,
        "pair_type": ["human"] * n,
        "prompt": [msgs("user", p) for p, _, _ in rows],
        "chosen": [msgs("assistant", c) for _, c, _ in rows],
        "rejected": [msgs("assistant", r) for _, _, r in rows],
    }
    cols.update(extra)
    return pa.table(cols)


def one_line_error(p, *needles: str) -> str:
    """A finished CLI process failed as a user mistake should: exit 2, one stderr line holding
    every needle, no traceback. Returns the line."""
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]

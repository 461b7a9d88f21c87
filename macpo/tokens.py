"""Token-id helpers shared by the builder (scoring) and the trainer (SPAC's third completion)."""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the shared leading run of two token-id sequences: where TRL puts the prompt
    boundary between a rendered prompt and prompt + completion."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n

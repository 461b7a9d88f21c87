"""NucleusWarper (builder/generate.py) keeps exactly the tokens transformers' warpers keep."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from macpo.builder.generate import NucleusWarper


@pytest.mark.parametrize("vocab", [7, 400, 49152])
@pytest.mark.parametrize("top_k, top_p", [(0, 0.95), (5, 0.9), (50, 0.5), (0, 0.999)])
def test_same_kept_tokens_and_scores_as_transformers(vocab, top_k, top_p):
    gen = torch.Generator().manual_seed(vocab + top_k)
    for spread in (0.1, 2.0, 10.0):  # flat to peaked distributions
        scores = torch.randn(8, vocab, generator=gen) * spread
        want = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(top_k)(None, TemperatureLogitsWarper(0.8)(None, scores))
                                       if top_k else TemperatureLogitsWarper(0.8)(None, scores))
        got = NucleusWarper(0.8, top_k, top_p)(None, scores)
        differ = (torch.isinf(got) != torch.isinf(want)).sum().item()
        if top_p < 0.99:
            assert differ == 0
        else:  # the boundary mass is ~1e-3 of many tiny float32 terms: rounding may flip a few tokens
            assert differ <= 1e-3 * torch.isinf(want).sum().item()
        both = torch.isfinite(got) & torch.isfinite(want)
        assert torch.equal(got[both], want[both])


def test_always_keeps_the_most_likely_token():
    scores = torch.tensor([[10.0, 0.0, -1.0]])
    out = NucleusWarper(1.0, 0, 0.01)(None, scores)
    assert torch.isfinite(out[0, 0]) and torch.isinf(out[0, 1:]).all()

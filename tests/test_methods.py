"""The method table (macpo/methods.py) is the one place the methods and their families are written."""

import dataclasses

import pytest

from macpo import config
from macpo.builder.pairing import PairingError, self_play_pairs
from macpo.methods import CHOSEN_RULES, FAMILY, METHODS, SELF_PLAY, WEAK_TO_STRONG


def test_every_method_has_one_family():
    assert set(METHODS) == WEAK_TO_STRONG | SELF_PLAY and not WEAK_TO_STRONG & SELF_PLAY
    assert set(FAMILY.values()) == {"weak-to-strong", "self-play"}


def test_the_config_accepts_and_describes_exactly_the_table():
    help_text = next(f.metadata["help"] for f in dataclasses.fields(config.RunConfig) if f.name == "method")
    assert help_text.split(" | ") == list(METHODS)
    # Each self-play method trains the `dpo` stage with the loss of its name.
    assert config.METHOD_LOSS == {m: m for m in SELF_PLAY}
    assert config.CHOSEN_RULES is CHOSEN_RULES


def test_self_play_pair_types_are_the_self_play_methods():
    with pytest.raises(PairingError, match="pair_type"):
        self_play_pairs(None, None, agent="student", pair_type="macpo")

"""The TRL internals trainer/objectives.py relies on. If TRL changes them, fail here, loudly,
naming what moved, instead of training the wrong objective somewhere deep in a run."""

from __future__ import annotations

import inspect

import pytest

# name -> the parameters (after self) our overrides and calls are written against (TRL 1.16).
CONTRACT = {
    "_prepare_dataset": ["dataset", "processing_class", "args", "dataset_name"],
    "_set_signature_columns_if_needed": [],
    "_precompute_ref_logps": ["dataset", "name", "batch_size"],
    "_compute_loss": ["model", "inputs", "return_outputs"],
    "compute_ref_log_probs": ["model", "inputs"],
}


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_dpo_trainer_methods_we_override_keep_their_signature(name):
    import trl
    from trl import DPOTrainer

    fn = getattr(DPOTrainer, name, None)
    assert fn is not None, (
        f"TRL {trl.__version__}: DPOTrainer.{name} no longer exists; macpo's SPACTrainer/StoredRefDPOTrainer "
        "override or call it (trainer/objectives.py). Pin trl to the tested range in pyproject.toml or port the subclass."
    )
    assert _params(fn) == CONTRACT[name], (
        f"TRL {trl.__version__}: DPOTrainer.{name}{inspect.signature(fn)} changed; macpo's trainer/objectives.py was "
        f"written against ({', '.join(CONTRACT[name])}). Port the override before widening the trl range."
    )


def test_preference_collator_and_trainer_state_we_use():
    import trl
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    assert hasattr(DataCollatorForPreference, "torch_call"), f"TRL {trl.__version__}: DataCollatorForPreference.torch_call is gone"
    source = inspect.getsource(DPOTrainer)
    for attribute in ("self._metrics", "self._total_train_tokens", "self.precompute_ref_logps"):
        assert attribute in source, f"TRL {trl.__version__}: DPOTrainer no longer sets {attribute}, which SPACTrainer uses"


def test_installed_trl_is_inside_the_declared_range():
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("trl"))
    assert version("trl") in SpecifierSet(spec[3:]), f"installed trl {version('trl')} is outside pyproject's {spec}"

"""Behaviour guard for refactors: the CI config's run produces exactly the datasets it produced
before. The content hashes below were printed by the code at commit 0a4f2f6 (before the run layer
moved into macpo/run/), identical in three runs; a change to any of them is a change in what a
run computes, not a refactor. And a finished run stays finished when the config schema grows."""

import dataclasses
import json
import shutil

import pytest

from macpo import config as config_mod
from macpo.run import execute as execute_mod
from macpo.run import plan as plan_mod
from macpo.store import Store
from macpo.trainer.train_config import TrainConfig

# eval/configs/ci.yaml with conftest's CI_OVERRIDES (shard_size=4), as the session's `ci_run` runs it.
EXPECTED = {
    "macpo-ci-data/v1": "sha256:96ac2fb2e2fa2d18f42a856c26853f91abc4e3873cc744ba8e345f9faf6576e0",
    "macpo-ci/round-0-teachers": "sha256:368c1366e794bad2865d1c12d6d6d832cd40f7292a1e8367ff0eebffde848e4d",
    "macpo-ci/round-0-labels": "sha256:5113d74a8bca3cb5f95ff4b23aee237c1616df63873f1803ea4f1fd74cae6bbf",
    "macpo-ci/round-0": "sha256:6174252be6e0d3f5f472fdd06f76de900caa367e51bdef4e9317d1fbfa3d35b2",
    "macpo-ci/round-1": "sha256:0d6df4228bf607f5f252209a6970456539d85ee3c8568cf4f373842354aaf0e8",
    "macpo-ci-evals/round-0": "sha256:4e1e10feba609e289e23a3f18a24c53d0b019ce9a06c259615fa54912874aea8",
    "macpo-ci-evals/round-1": "sha256:dfd1a65a9e05633116bdcfa9467868f400f017d1fe8314c01b4f99b5e858388a",
}


def test_ci_run_content_hashes_are_unchanged(ci_run):
    out, _ = ci_run
    store = Store(out / "store")
    got = {f"{name}/{v}": store.manifest(name, v)["content_hash"] for name in store.datasets() for v in store.versions(name)}
    assert got == EXPECTED


def test_a_field_added_with_its_default_leaves_a_finished_run_up_to_date(ci_run, monkeypatch, capsys):
    """Step keys leave out fields at their defaults: after an upgrade that adds a config field (as
    `eval.split` was added), every step of a finished run is still up to date, none runs again."""
    out, _ = ci_run
    state = out / "store" / "run-state.json"
    recorded = state.read_bytes()  # the shared run is read by other tests: put its state back
    run_plus = dataclasses.make_dataclass("RunConfig", [("new_knob", int, dataclasses.field(default=0))],
                                          bases=(config_mod.RunConfig,))
    train_plus = dataclasses.make_dataclass("TrainConfig", [("new_trainer_knob", float, dataclasses.field(default=0.0))],
                                            bases=(TrainConfig,))
    monkeypatch.setattr(config_mod, "RunConfig", run_plus)
    monkeypatch.setattr(config_mod, "TrainConfig", train_plus)
    monkeypatch.setattr(plan_mod, "TrainConfig", train_plus)

    def must_not_run(step, *args, **kwargs):
        raise AssertionError(f"step {step.name!r} would run again")

    # Before a step's outputs are removed (the shared run is read by other tests), not at run_step.
    monkeypatch.setattr(execute_mod, "_restore_or_run", must_not_run)
    try:
        cfg = config_mod.load(out / "run.yaml", {})
        assert isinstance(cfg, run_plus) and isinstance(cfg.train["dpo"], train_plus)
        assert "new_knob" in cfg.to_dict() and "new_trainer_knob" in cfg.train["dpo"].to_dict()
        capsys.readouterr()
        execute_mod.execute(cfg, out / "run.yaml")
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
        assert len(lines) == len(json.loads(recorded)["steps"]) and all(line.endswith(": up to date") for line in lines)
        # The same field away from its default is a different run: its first step runs again.
        with pytest.raises(AssertionError, match="'prepare' would run again"):
            execute_mod.execute(config_mod.load(out / "run.yaml", {"new_knob": "1"}), out / "run.yaml")
    finally:
        state.write_bytes(recorded)


def test_a_moved_run_is_still_up_to_date(ci_run, monkeypatch, capsys, tmp_path):
    """Step keys hold paths inside the run relative to it: a finished run copied (or moved) to
    another folder resumes with nothing to do, instead of redoing (and first removing) every step."""
    out = tmp_path / "moved"
    shutil.copytree(ci_run[0], out, symlinks=True)

    def must_not_run(step, *args, **kwargs):
        raise AssertionError(f"step {step.name!r} would run again")

    monkeypatch.setattr(execute_mod, "_restore_or_run", must_not_run)
    capsys.readouterr()
    execute_mod.execute(config_mod.load(out / "run.yaml", {"out": str(out)}), out / "run.yaml")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines and all(line.endswith(": up to date") for line in lines)

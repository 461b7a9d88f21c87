"""A run's config as every step sees it: loaded, validated, resolved, written to ``OUT/run.yaml``.

Resolution replaces ``sandbox:<name>`` models by their cached folders, so a standalone stage
(``macpo build --config OUT/run.yaml --set ...``) runs what the run would.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from macpo import config as config_mod
from macpo.cliutil import check_owned, write_marker
from macpo.config import RunConfig
from macpo.eval import sandbox
from macpo.layout import RunLayout
from macpo.run.execute import RunState
from macpo.run.procs import RUN_LOCK


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Replace ``sandbox:<name>`` models by their cached folders (computed, not trained, here)."""
    if not any(a.model.startswith("sandbox:") for a in [cfg.student, *cfg.teachers]):
        return cfg

    def fix(spec):
        if not spec.model.startswith("sandbox:"):
            return spec
        return dataclasses.replace(spec, model=str(sandbox.model_dir(cfg.world, spec.model.split(":", 1)[1])))

    return dataclasses.replace(cfg, student=fix(cfg.student), teachers=[fix(t) for t in cfg.teachers])


def load_resolved(config_path: str | Path | None, overrides: dict[str, str], base: dict | None = None) -> RunConfig:
    """The validated config of ``config_path`` with ``overrides``, resolved as ``macpo run`` resolves it."""
    return resolve_config(config_mod.load(config_path, overrides, base=base))


def load_run(config_path: str | None, overrides: dict[str, str], base: dict | None = None) -> RunConfig:
    """The validated, resolved config of a run; refuses an `out` holding someone else's files."""
    cfg = load_resolved(config_path, overrides, base)
    # run.yaml: run folders written before the marker existed.
    check_owned(cfg.out, ("run",), "run folder (out)", legacy=("run.yaml",), ignore=(RUN_LOCK,))
    return cfg


def write_run(cfg: RunConfig) -> tuple[RunConfig, Path]:
    """Create the run folder and its run.yaml (checking an earlier run's state first)."""
    out = Path(cfg.out)
    RunState(RunLayout(cfg).store_dir / "run-state.json", cfg)  # a damaged state: one line before any write
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "run")
    resolved = out / "run.yaml"
    config_mod.dump(cfg, resolved)
    return cfg, resolved


def prepare_run(config_path: str | None, overrides: dict[str, str], base: dict | None = None) -> tuple[RunConfig, Path]:
    return write_run(load_run(config_path, overrides, base))


def demo_config_path() -> Path:
    return Path(str(resources.files("macpo.eval") / "configs" / "demo.yaml"))

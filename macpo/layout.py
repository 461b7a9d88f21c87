"""Where a run keeps things. One place, so builder, trainer calls, eval and the orchestrator agree.

    OUT/
      run.yaml                    the resolved config (the whole truth of the run)
      store/                      the round store
        <name>-data/<version>     offline data: dw (pairs), q (prompts), test (prompts)
        <name>/round-0-teachers   bootstrap SFT data for the teachers
        <name>/round-0-labels     weak labels and weak negatives
        <name>/round-0 ... round-T
        <name>-evals/round-N      eval generations + scores
        run-state.json            orchestrator progress (macpo status shows it)
      models/round-N/<agent>/     trained models (full model or LoRA adapter folder)
      logs/<step>.log             each stage subprocess's output
      report.md, metrics.csv, *.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from macpo.errors import UserError

if TYPE_CHECKING:  # the run layer's type: the layout reads a resolved config it is handed
    from macpo.config import RunConfig


@dataclass(frozen=True)
class ModelSource:
    """A model to load: a folder or Hub id, plus the revision and GGUF file its base loads with."""

    path: str
    revision: str | None = None
    gguf_file: str | None = None

    def record(self) -> dict:
        return {"model": self.path, "revision": self.revision, "gguf_file": self.gguf_file}


class RunLayout:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)

    @property
    def store_dir(self) -> Path:
        return self.out / "store"

    @property
    def rounds_dataset(self) -> str:
        return self.cfg.name

    @property
    def data_dataset(self) -> str:
        return f"{self.cfg.name}-data"

    @property
    def evals_dataset(self) -> str:
        return f"{self.cfg.name}-evals"

    def model_dir(self, agent: str, round_: int) -> Path:
        return self.out / "models" / f"round-{round_}" / agent

    def agent_spec(self, agent: str):
        """The configured AgentSpec of ``agent`` (``student``, ``teacher-k``, or their ``-neg``)."""
        name = agent.removesuffix("-neg")
        if name == "student" or name.startswith("student-"):  # student-ceiling, student-pretrained
            return self.cfg.student
        try:
            return self.cfg.teachers[int(name.split("-")[1])]
        except (IndexError, ValueError):
            raise UserError(f"unknown agent {agent!r}") from None

    def model_source(self, agent: str, path: Path | str) -> ModelSource:
        """How to load ``path`` for ``agent``: a trained full-model folder loads as it is; the base
        model and LoRA adapter folders (whose base it is) load with the agent's revision and GGUF file."""
        spec = self.agent_spec(agent)
        full_local = Path(path).is_dir() and (Path(path) / "config.json").is_file() and str(path) != spec.model
        if full_local:
            return ModelSource(str(path))
        return ModelSource(str(path), spec.revision, spec.gguf_file)

    def base_model(self, agent: str) -> str:
        """The configured base model of ``agent`` (``student``, ``teacher-k``, or their ``-neg``)."""
        spec = self.agent_spec(agent)
        if spec.model.startswith("sandbox:"):
            raise UserError(f"{agent}: sandbox model {spec.model!r} was not resolved; run through macpo run/demo")
        return spec.model

    def latest_model(self, agent: str, up_to_round: int) -> Path | None:
        """The newest trained model of ``agent`` from a round <= ``up_to_round``."""
        for r in range(up_to_round, -1, -1):
            path = self.model_dir(agent, r)
            if _is_model(path):
                return path
        return None

    def require_model(self, agent: str, up_to_round: int) -> Path:
        path = self.latest_model(agent, up_to_round)
        if path is None:
            raise UserError(
                f"model for {agent} (round <= {up_to_round}) is missing under {self.out / 'models'}; train it first"
            )
        return path

    def log_path(self, step: str) -> Path:
        return self.out / "logs" / f"{step}.log"


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def apply_threads(cfg: RunConfig) -> None:
    """Use the config's thread count, so a build gives bit-identical floats (and content hash)
    whether it runs inside ``macpo run`` or alone: float sums depend on the thread count."""
    if cfg.threads > 0:
        import torch  # lazy: the layout is imported by light commands; only a stage that computes sets threads

        torch.set_num_threads(cfg.threads)

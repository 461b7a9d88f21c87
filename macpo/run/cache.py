"""The shared step cache of ``macpo study``: a step whose inputs are identical across runs runs once.

``DIR/step-cache/<key>`` holds each finished step's outputs (store versions, model folders),
keyed by

- the step's command with the run's own folder replaced by a placeholder (a trainer job's
  command is its whole TrainConfig, so it says everything the trainer reads);
- for steps that read the run config (``--config``), the config without ``out`` and ``T`` and, for
  round-0 steps, without the fields only rounds >= 1 read (``ROUND_ONLY``);
- the *content* hashes of its dependencies' outputs (store content hashes, model file hashes),
  not their keys: two variants whose round-0 builds differ in config but not in output share
  everything downstream.

A hit copies (hard-links) the outputs into the run; a miss runs the step and files its
outputs. A step that declares no outputs is never shared. Restored store versions keep the
manifest of the run that produced them (its config and model paths): the data is identical,
the provenance names the first producer.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from macpo.hashing import file_sha256, json_hash

# Run-config fields that no round-0 step reads (they steer rounds >= 1): left out of round-0 keys.
ROUND_ONLY = ("T", "mutual_positive", "update_teachers", "chosen_rule", "store_ref_logps")
ROUND_ONLY_TRAIN = ("dpo",)
# Model-folder files that name the run's paths or timings, not the model.
_RUN_SPECIFIC = {"metrics.json", "train_config.json", "README.md"}


class StepCache:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        return self.root / key.split(":", 1)[-1][:32]

    def has(self, key: str) -> bool:
        return (self.entry(key) / "complete.json").is_file()

    @contextmanager
    def claim(self, key: str):
        """Hold the key while producing it: a parallel run that needs the same step waits here, then
        finds it filed, instead of computing it twice (flock: released if the holder dies)."""
        with open(self.entry(key).with_name(self.entry(key).name + ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def restore(self, key: str, run_out: Path, outputs: list[Path]) -> None:
        entry = self.entry(key)
        for out in outputs:
            _remove(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            _link_tree(entry / "files" / out.relative_to(run_out), out)

    def save(self, key: str, run_out: Path, outputs: list[Path], info: dict) -> None:
        entry = self.entry(key)
        tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
        _remove(tmp)
        for out in outputs:
            _link_tree(out, tmp / "files" / out.relative_to(run_out))
        (tmp / "complete.json").write_text(json.dumps(info, indent=1, default=str))
        _remove(entry)
        os.replace(tmp, entry)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder as hard links (the store's files are immutable, trained models are replaced
    by a new folder, never edited), falling back to copies across file systems."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=link)


def output_hash(outputs: list[Path]) -> str:
    """Content of a step's outputs: a store version's content hash, or a model folder's files."""
    parts = []
    for out in outputs:
        manifest = out / "manifest.json"
        if manifest.is_file():
            parts.append(("store", out.name, json.loads(manifest.read_text())["content_hash"]))
            continue
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in _RUN_SPECIFIC)
        parts.append(("files", out.name, [(str(p.relative_to(out)), file_sha256(p)) for p in files]))
    return json_hash(parts)


def _is_round0(name: str) -> bool:
    return name == "prepare" or name.endswith("round-0") or "round-0-" in name


def config_view(cfg_dict: dict, step_name: str, argv: list[str]) -> dict | None:
    """What of the run config a step's key covers (None: the step does not read the config)."""
    if "--config" not in argv:
        return None
    # T only sets how many rounds the plan has (a step checks its --round against it, nothing more),
    # so a T=1 study's rounds are shared with a T=3 study's first round.
    view = {k: v for k, v in cfg_dict.items() if k not in ("out", "T")}
    if _is_round0(step_name):
        view = {k: v for k, v in view.items() if k not in ROUND_ONLY}
        view["train"] = {k: v for k, v in view.get("train", {}).items() if k not in ROUND_ONLY_TRAIN}
        # Round 0 reads `negative` only to draw a second sample per prompt under "self".
        if view.get("negative") != "self":
            view.pop("negative", None)
    return view


def cache_key(step, run_out: Path, cfg_dict: dict, dep_hashes: list[str]) -> str:
    """The step's key in the shared cache (``cfg_dict``: the run config as step keys read it)."""
    run = str(run_out)
    argv = [a.replace(run, "$RUN") for a in step.keyed_argv() if a != sys.executable]
    return json_hash({"step": step.name, "argv": argv, "config": config_view(cfg_dict, step.name, step.argv),
                      "threads": cfg_dict.get("threads"), "deps": dep_hashes})


_TALLY_LOCK = threading.Lock()


@dataclass
class Tally:
    """Steps of a study: ran, restored from the cache, up to date, and the naive sum over runs."""

    ran: int = 0
    shared: int = 0
    up_to_date: int = 0
    naive: int = 0
    seconds_ran: float = 0.0

    def add(self, **counts) -> None:
        with _TALLY_LOCK:  # runs execute on several threads (--jobs)
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)


@dataclass
class SharedSteps:
    """What a study hands the executor: the cache its runs share, and the tally they add to."""

    cache: StepCache
    tally: Tally

"""Where the builder's shards run: in the build process (``executor: local``) or on Ray workers
(``executor: ray``), and the executor a run config asks for (:func:`make_executor`).

The builder plans the shards that have no checkpoint yet, hands them to an executor together
with a :class:`Work` (how to load the model, how to run one shard under it), and writes each
shard's checkpoint itself as the shard's table comes back; executors never touch the store. A
shard's table depends only on its inputs (prompts, sampling parameters with their per-shard
seed, model files, batch size, torch thread count), never on which process ran it or what that
process ran before, so a retried shard, a rerun after a killed driver, any number of workers
and any schedule give the same bytes and the same round content hash.

An executor has ``map(tasks, desc)``, which yields ``(task index, table)`` as shards finish,
``load_report()`` and ``close()``. This module holds the local executor and the entry points the
builder uses; the rest lives beside it, one concern per module:

- :mod:`macpo.builder.executor_work`: :class:`Work`, and the holder of one loaded model that the
  local process and each Ray worker run shards with;
- :mod:`macpo.builder.executor_records`: each shard's load and run seconds (``timeline``) and the
  model loads and engine starts per worker (``load_report``, printed by ``macpo build``);
- :mod:`macpo.builder.executor_schedule`: which Ray worker runs which shard (model-affine, or
  plan order), pure and tested without Ray;
- :mod:`macpo.builder.executor_ray`: :class:`RayExecutor` and its worker, and why Ray actors
  rather than Ray Data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from macpo.builder.executor_ray import RayExecutor
from macpo.builder.executor_records import Recorded, Recorder
from macpo.builder.executor_schedule import SCHEDULES
from macpo.builder.executor_work import Holder, Work
from macpo.builder.models import adapter_base, is_adapter_dir

__all__ = ["SCHEDULES", "LocalExecutor", "RayExecutor", "Work", "engine_key", "make_executor"]


class LocalExecutor(Recorded):
    """Shards one after another in this process; the model is loaded only if a shard is missing."""

    name = "local"

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.rec = Recorder()
        self._holder = Holder(close_on_switch=False)

    def map(self, tasks: Sequence[tuple[Work, Any]], desc: str = "shards") -> Iterator[tuple[int, Any]]:
        call = self.rec.begin(desc)
        try:
            for i, (work, item) in enumerate(tasks):
                table, info = self._holder.run(work, item)
                self.rec.record(0, work, info)
                yield i, table
        finally:
            call.end = time.time()
            self._holder.release()  # one model in memory at a time, none between calls

    def load_report(self) -> list[str]:
        return self.rec.load_report({0: "this process"})

    def close(self) -> None:
        self._holder.release()


def make_executor(cfg, progress: bool = True):
    """The executor a run config asks for (``executor``, validated by the config, and its ``ray`` section)."""
    if cfg.executor == "local":
        return LocalExecutor(progress=progress)
    r = cfg.ray
    return RayExecutor(address=r.address, num_workers=r.num_workers, num_cpus_per_worker=r.num_cpus_per_worker,
                       num_gpus_per_worker=r.num_gpus_per_worker, max_retries=r.max_retries, threads=cfg.threads,
                       progress=progress)


def engine_key(generation: Any, source: Any) -> str:
    """The vLLM engine a generation work runs on: its base model (an adapter folder's base) with
    the revision and GGUF file it loads with; ``""`` for the transformers backend, whose models
    share nothing across works. Works of one round share the other engine settings."""
    if getattr(generation, "backend", None) != "vllm":
        return ""
    base = adapter_base(source.path) if is_adapter_dir(source.path) else source.path
    return repr((str(base), source.revision, source.gguf_file))

"""What an executor runs, and the one model a process holds while it runs it.

:class:`Work` is the unit the builder hands to an executor (:mod:`macpo.builder.executor`): one
model and what to do with each shard under it. :class:`Holder` is the loop both executors share
on the side that runs shards (the local process, each Ray worker): keep one model loaded, load
another when a shard of another model comes, and say what that cost. Kept apart from the
executors so that the local executor, the Ray worker and the schedule can all use them without
importing each other.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Work:
    """One model and what to do with each shard under it. Executors take a list of ``(work,
    shard input)`` tasks, so the shards of several models (every agent's generation of a round)
    share one pass over the workers, without a wait for the slowest shard between models.

    ``load(progress)`` builds the model (a generator, or ``(model, tokenizer)``); ``run(model,
    item, progress)`` turns one shard's input into its table. Both must be picklable for Ray:
    module-level functions or ``functools.partial`` of them. ``key`` names the loaded model: a
    worker holding a model under the same key reuses it for the next shard. ``model`` names the
    weights (base + adapter) whatever loads them, for the schedule's affinity (default: ``key``);
    ``engine``, when set, names an engine that works of other keys can share (a vLLM engine per
    base model): the worker keeps it open when the next work has the same ``engine``.
    """

    key: str
    load: Callable[[bool], Any]
    run: Callable[[Any, Any, bool], Any]
    desc: str = "shards"
    model: str = ""
    engine: str = ""

    @property
    def affinity(self) -> str:
        return self.model or self.key


class Holder:
    """One model at a time, loaded on its first shard and kept for the next; counts loads.

    ``close_on_switch``: close the old model (a vLLM generator's engine) when the next work does
    not share its engine. The local process does not (its engine is kept for the next generator
    on the same base, as ``vllm_backend`` intends); a Ray worker does, to free accelerator memory
    for the next model."""

    def __init__(self, close_on_switch: bool):
        self.close_on_switch = close_on_switch
        self.key: str | None = None
        self.engine = ""
        self.model: Any = None
        self._engine_obj: Any = None  # the last vLLM engine seen: a load that returns another one started it

    def run(self, work: Work, item: Any) -> tuple[Any, dict]:
        start = time.time()
        info = {"loaded": False, "engine_started": False, "load_seconds": 0.0, "release_seconds": 0.0}
        if self.key != work.key:
            t0 = time.perf_counter()
            self.release(keep_engine=bool(work.engine) and work.engine == self.engine)
            info["release_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.model = work.load(False)
            info["load_seconds"] = time.perf_counter() - t0
            self.key, self.engine, info["loaded"] = work.key, work.engine, True
            engine = _engine_of(self.model)
            if engine is not None and engine is not self._engine_obj:
                self._engine_obj, info["engine_started"] = engine, True
        t0 = time.perf_counter()
        table = work.run(self.model, item, False)
        info.update(run_seconds=time.perf_counter() - t0, start=start, end=time.time(),
                    nbytes=int(getattr(table, "nbytes", 0)))
        return table, info

    def release(self, keep_engine: bool = False) -> None:
        model, self.model, self.key, self.engine = self.model, None, None, ""
        close = getattr(model, "close", None)  # a vLLM generator frees its engine's GPU memory
        if self.close_on_switch and not keep_engine and callable(close):
            close()
        del model
        if self.close_on_switch:
            gc.collect()
            if not keep_engine:
                # What survives is long-lived (modules a first load imported lazily): frozen, later
                # collections skip it. The model just released is gone; the next one stays
                # collectable. Not while an engine is kept: it must stay collectable when it closes.
                gc.freeze()


def _engine_of(model: Any) -> Any:
    """The vLLM engine behind a generator (None for transformers models and generators)."""
    return getattr(model, "_engine", None)

"""What an executor records while it runs shards: each shard's load and run seconds, each ``map``
call's span, and per worker the models it loaded and the engines it started.

Both executors keep a :class:`Recorder` and expose it through :class:`Recorded` (``timeline``,
``calls``, ``loads``). ``macpo build`` prints :meth:`Recorder.load_report`; the model-affine
schedule reads the timeline to price a model load against the shards it would save; the Ray
benchmarks (``benchmarks/build_ray.py``, ``benchmarks/build_ray_model_loads.py``) split a build's
time and count its loads from them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from macpo.builder.executor_work import Work


@dataclass
class WorkerLoads:
    """What one worker (or the local process) loaded: ``models`` in load order, one entry per load."""

    shards: int = 0
    models: list[str] = field(default_factory=list)
    engine_starts: int = 0
    load_seconds: float = 0.0
    run_seconds: float = 0.0

    @property
    def loads(self) -> int:
        return len(self.models)

    def repeated(self) -> dict[str, int]:
        """Models loaded more than once, with their load count."""
        return {k: n for k, n in Counter(self.models).items() if n > 1}


@dataclass
class ShardTiming:
    """One shard as a worker ran it: ``start``/``end`` on the worker's clock (``time.time()``),
    ``received`` when the driver had its table."""

    call: int
    worker: int
    key: str
    load_seconds: float
    run_seconds: float
    release_seconds: float
    start: float
    end: float
    received: float
    nbytes: int


@dataclass
class CallTiming:
    """One ``map`` call: its description, wall span on the driver and worker count."""

    desc: str
    start: float
    end: float = 0.0
    workers: int = 1


class Recorder:
    """Per-worker load counts and per-shard timings, shared by both executors."""

    def __init__(self):
        self.loads: dict[int, WorkerLoads] = {}
        self.timeline: list[ShardTiming] = []
        self.calls: list[CallTiming] = []

    def begin(self, desc: str, workers: int = 1) -> CallTiming:
        """A new ``map`` call, started now; the executor sets its ``end``."""
        call = CallTiming(desc, time.time(), workers=workers)
        self.calls.append(call)
        return call

    def record(self, worker: int, work: Work, info: dict) -> None:
        w = self.loads.setdefault(worker, WorkerLoads())
        w.shards += 1
        w.run_seconds += info["run_seconds"]
        if info["loaded"]:
            w.models.append(work.key)
            w.load_seconds += info["load_seconds"]
        w.engine_starts += int(info["engine_started"])
        self.timeline.append(ShardTiming(len(self.calls) - 1, worker, work.key, info["load_seconds"], info["run_seconds"],
                                         info["release_seconds"], info["start"], info["end"], time.time(), info["nbytes"]))

    def load_report(self, labels: dict[int, str]) -> list[str]:
        """One line per worker: shards, model loads (distinct models), engine starts."""
        lines = []
        for w in sorted(self.loads):
            s = self.loads[w]
            again = s.repeated()
            lines.append(f"{labels.get(w, f'worker {w + 1}')}: {s.shards} shards, {s.loads} model load{'s' * (s.loads != 1)} "
                         f"({len(set(s.models))} model{'s' * (len(set(s.models)) != 1)}"
                         + (f", {sum(again.values()) - len(again)} reloads" if again else "")
                         + f", {s.load_seconds:.1f} s), {s.engine_starts} engine start{'s' * (s.engine_starts != 1)}")
        return lines


class Recorded:
    """An executor's records (its ``rec``), read as attributes of the executor."""

    rec: Recorder

    @property
    def timeline(self) -> list[ShardTiming]:
        return self.rec.timeline

    @property
    def calls(self) -> list[CallTiming]:
        return self.rec.calls

    @property
    def loads(self) -> dict[int, WorkerLoads]:
        return self.rec.loads

"""Which worker runs which shard next, for the Ray executor (:mod:`macpo.builder.executor_ray`):
the model-affine schedule (the default, ``schedule="affine"``) and plan order (``"plan"``).

Apart from Ray on purpose: the plan (:func:`affine_plan`) is a pure function of shard counts,
and the schedules only hand out task indices and read the executor's records, so all of it is
tested without a cluster.

Model-affine schedule. Handing shards out in plan order (the first idle worker takes the next
shard, as ``ray.util.ActorPool`` does) makes every worker load nearly every model of a round,
and reload one whenever its next shard is another agent's: with vLLM a full engine restart,
minutes for a large model on GPUs. Instead the driver groups a call's shards by the model that
serves them (:attr:`Work.key`) and plans, per worker, a queue of whole models: shard counts are
balanced across workers, a model is split over several workers only where balance needs it (so
with fewer models than workers every worker still gets shards), and a model goes back to the
worker that served the same weights before in this executor's life (:attr:`Work.model`: an
agent's generation and its scoring). A worker runs its queue model by model, so it loads each of
its models once. When a worker's queue runs dry while another still has shards queued, it takes
half of them if that finishes the call sooner counting the load it costs (free when it already
holds that model, never for a model it already served and dropped in this call), measured from
the loads and shards seen so far. Each worker keeps two shards in flight, so it never waits for
the driver to checkpoint a result before starting its next shard. Works that share an
:attr:`Work.engine` (vLLM: one engine per base model, adapters served as ``LoRARequest``s)
follow each other on a worker without closing the engine in between.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from macpo.builder.executor_records import Recorder
from macpo.builder.executor_work import Work

SCHEDULES = ("affine", "plan")


class Schedule:
    """Hands out task indices per worker; ``depth`` shards in flight per worker at the most."""

    depth = 1

    def next(self, worker: int, inflight: list[int]) -> int | None:
        raise NotImplementedError

    def done(self, worker: int, index: int, info: dict) -> None:
        pass


class PlanOrder(Schedule):
    """Plan order: the first worker with nothing in flight takes the next shard."""

    def __init__(self, tasks: Sequence[tuple[Work, Any]], workers: int):
        self.queue = deque(range(len(tasks)))

    def next(self, worker: int, inflight: list[int]) -> int | None:
        return self.queue.popleft() if self.queue else None


def affine_plan(sizes: Sequence[tuple[str, int]], workers: int, home: dict[str, int] | None = None) -> list[list[tuple[int, int]]]:
    """Per worker, ``(group, shard count)`` chunks of the groups ``sizes`` (``(affinity, shards)``
    in plan order): shard counts balanced to within one, each group whole on one worker where it
    fits, on its ``home`` worker where that has room, split over the fewest workers otherwise.

    Whole groups go first, largest first, each to its home worker if it fits there, else to the
    worker with the most room that it fits in; what is left is cut to fill the workers with the
    most room, home first. So a worker's share is a few whole models, and at most ``workers - 1``
    models are split (each part loaded once by the worker that gets it).
    """
    home = home or {}
    total = sum(n for _, n in sizes)
    room = [total // workers + (1 if w < total % workers else 0) for w in range(workers)]
    plan: list[list[tuple[int, int]]] = [[] for _ in range(workers)]
    order = sorted(range(len(sizes)), key=lambda g: (-sizes[g][1], g))
    left = []
    for g in order:
        name, n = sizes[g]
        h = home.get(name)
        if h is not None and h < workers and room[h] >= n:
            w = h
        else:
            fits = [w for w in range(workers) if room[w] >= n]
            if not fits:
                left.append(g)
                continue
            w = max(fits, key=lambda w: (room[w], -w))
        plan[w].append((g, n))
        room[w] -= n
    for g in left:
        name, n = sizes[g]
        h = home.get(name)
        for w in sorted(range(workers), key=lambda w: (w != h, -room[w], w)):
            take = min(n, room[w])
            if take:
                plan[w].append((g, take))
                room[w] -= take
                n -= take
            if not n:
                break
    return plan


class Affine(Schedule):
    """Per-worker queues of whole models (:func:`affine_plan`), two shards in flight per worker,
    and cost-aware stealing when a queue runs dry (see the module docstring)."""

    depth = 2

    def __init__(self, tasks: Sequence[tuple[Work, Any]], workers: int, home: dict[str, int], rec: Recorder):
        self.tasks, self.rec = tasks, rec
        groups: dict[str, list[int]] = {}
        for i, (work, _) in enumerate(tasks):
            groups.setdefault(work.key, []).append(i)
        keys = list(groups)
        affinity = {k: tasks[groups[k][0]][0].affinity for k in keys}
        engine = {k: tasks[groups[k][0]][0].engine for k in keys}
        plan = affine_plan([(affinity[k], len(groups[k])) for k in keys], workers, home)
        self.queues: list[deque[int]] = []
        for chunks in plan:
            # Plan order, except that works sharing an engine follow the first of them.
            first = {}
            for c in sorted(chunks):
                first.setdefault(engine[keys[c[0]]] or c[0], c[0])
            chunks = sorted(chunks, key=lambda c: (first[engine[keys[c[0]]] or c[0]], c[0]))
            q: deque[int] = deque()
            for g, n in chunks:
                part = groups[keys[g]]
                q.extend(part[:n])
                del part[:n]
            self.queues.append(q)
        self.current: list[str | None] = [None] * workers  # the key last sent to each worker
        self.dropped: list[set[str]] = [set() for _ in range(workers)]  # keys a worker loaded and let go, this call

    def next(self, worker: int, inflight: list[int]) -> int | None:
        q = self.queues[worker]
        if not q:
            self._steal(worker, inflight)
        if not q:
            return None
        i = q.popleft()
        key = self.tasks[i][0].key
        if self.current[worker] not in (None, key):
            self.dropped[worker].add(self.current[worker])
        self.current[worker] = key
        return i

    def _seconds(self, key: str) -> tuple[float | None, float | None]:
        """Measured mean load and shard seconds of ``key`` (any key's when ``key`` has none yet)."""
        out = []
        for attr, pick in (("load_seconds", lambda t: t.load_seconds > 0), ("run_seconds", lambda t: True)):
            mine = [getattr(t, attr) for t in self.rec.timeline if t.key == key and pick(t)]
            every = mine or [getattr(t, attr) for t in self.rec.timeline if pick(t)]
            out.append(sum(every) / len(every) if every else None)
        return out[0], out[1]

    def _steal(self, thief: int, inflight: list[int]) -> None:
        best = None
        for victim, q in enumerate(self.queues):
            if victim == thief or not q:
                continue
            tail_key = self.tasks[q[-1]][0].key
            if tail_key in self.dropped[thief]:
                continue
            run = sum(1 for i in q if self.tasks[i][0].key == tail_key)
            load_s, shard_s = self._seconds(tail_key)
            if tail_key == self.current[thief]:
                load = 0.0
            else:
                load = (load_s if load_s is not None else shard_s or 0.0) / (shard_s or 1.0)  # in shards
            # Both finish together when the thief takes n: its in-flight + load + n = victim's queue - n + in-flight.
            n = int((len(q) + inflight[victim] - inflight[thief] - load) // 2)
            n = min(n, run)
            if n >= 1 and (best is None or n > best[0]):
                best = (n, victim)
        if best is not None:
            n, victim = best
            q = self.queues[victim]
            taken = [q.pop() for _ in range(n)]
            self.queues[thief].extend(reversed(taken))

"""Where the builder's shards run: in the build process (``executor: local``) or on Ray workers
(``executor: ray``).

The builder plans the shards that have no checkpoint yet, hands them to an executor together
with a :class:`Work` (how to load the model, how to run one shard under it), and writes each
shard's checkpoint itself as the shard's table comes back; executors never touch the store. A
shard's table depends only on its inputs (prompts, sampling parameters with their per-shard
seed, model files, batch size, torch thread count), never on which process ran it or what that
process ran before, so a retried shard, a rerun after a killed driver, any number of workers
and any schedule give the same bytes and the same round content hash.

Ray layout: a fixed set of actors, each holding one loaded model at a time and serving many
shards with it. Chosen over Ray Data's ``map_batches`` over an actor pool, which gives the same
load-once-serve-many, because:

- our unit of work, of seeding and of checkpointing is the builder's shard. Ray Data cuts its
  own blocks and batches and streams rows out, so we would have to force its batches onto shard
  boundaries and write checkpoints from inside the map function (on the workers);
- the driver needs each shard's table as soon as that shard is done, to checkpoint it, so a
  killed driver loses only the shards in flight;
- a worker process that dies is restarted by Ray (``max_restarts``) and the shards it held are
  re-sent (``max_task_retries``); with Ray Data the same retry hides inside its executor.

Model-affine schedule (the default, ``schedule="affine"``). Handing shards out in plan order
(the first idle worker takes the next shard, as ``ray.util.ActorPool`` does) makes every worker
load nearly every model of a round, and reload one whenever its next shard is another agent's:
with vLLM a full engine restart, minutes for a large model on GPUs. Instead the driver groups a
call's shards by the model that serves them (:attr:`Work.key`) and plans, per worker, a queue of
whole models: shard counts are balanced across workers, a model is split over several workers
only where balance needs it (so with fewer models than workers every worker still gets shards),
and a model goes back to the worker that served the same weights before in this executor's life
(:attr:`Work.model`: an agent's generation and its scoring). A worker runs its queue model by
model, so it loads each of its models once. When a worker's queue runs dry while another still
has shards queued, it takes half of them if that finishes the call sooner counting the load it
costs (free when it already holds that model, never for a model it already served and dropped in
this call), measured from the loads and shards seen so far. Each worker keeps two shards in
flight, so it never waits for the driver to checkpoint a result before starting its next shard.
Works that share an :attr:`Work.engine` (vLLM: one engine per base model, adapters served as
``LoRARequest``s) follow each other on a worker without closing the engine in between.

Workers get shard inputs as plain Python lists (not Arrow slices, whose pickles can carry the
whole parent buffers) and send back one Arrow table per shard. Every executor records each
shard's load and run seconds (:attr:`timeline`) and counts model loads and engine starts per
worker (:meth:`load_report`, printed by ``macpo build``).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from macpo.errors import UserError

SCHEDULES = ("affine", "plan")


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


class _Holder:
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
            import gc

            gc.collect()
            if not keep_engine:
                # What survives is long-lived (modules a first load imported lazily): frozen, later
                # collections skip it. The model just released is gone; the next one stays
                # collectable. Not while an engine is kept: it must stay collectable when it closes.
                gc.freeze()


def _engine_of(model: Any) -> Any:
    """The vLLM engine behind a generator (None for transformers models and generators)."""
    return getattr(model, "_engine", None)


class _Recorder:
    """Per-worker load counts and per-shard timings, shared by both executors."""

    def __init__(self):
        self.loads: dict[int, WorkerLoads] = {}
        self.timeline: list[ShardTiming] = []
        self.calls: list[CallTiming] = []

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


class LocalExecutor:
    """Shards one after another in this process; the model is loaded only if a shard is missing."""

    name = "local"

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.rec = _Recorder()
        self._holder = _Holder(close_on_switch=False)

    @property
    def timeline(self) -> list[ShardTiming]:
        return self.rec.timeline

    @property
    def calls(self) -> list[CallTiming]:
        return self.rec.calls

    @property
    def loads(self) -> dict[int, WorkerLoads]:
        return self.rec.loads

    def map(self, tasks: Sequence[tuple[Work, Any]], desc: str = "shards") -> Iterator[tuple[int, Any]]:
        call = CallTiming(desc, time.time())
        self.rec.calls.append(call)
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


class ShardWorker:
    """The body of one Ray actor: one model at a time, loaded on its first shard, kept for the next.

    ``threads``: torch intra-op threads, the build's ``threads`` setting, so floats (and so the
    content hash) match a local build.
    """

    def __init__(self, threads: int):
        import gc

        import pyarrow  # noqa: F401
        import torch
        # Seconds of import paid while the driver plans, not on the first shard (transformers
        # imports its model and tokenizer classes lazily, on first use).
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        import macpo.builder.generate  # noqa: F401
        import macpo.builder.score  # noqa: F401

        torch.set_num_threads(threads)
        self._holder = _Holder(close_on_switch=True)
        # Everything imported so far lives as long as the process: out of the collector's sight,
        # the gc.collect() that frees a released model takes 0.1 ms instead of 0.5 s (torch and
        # transformers leave ~360k tracked objects), which the plan-order schedule paid on every
        # model switch of every worker (build_ray_time_split: 0.23 of the machine's ceiling).
        gc.freeze()

    def run(self, work: Work, index: int, item: Any) -> tuple[int, int, Any, dict]:
        """``(index, this worker's pid, the shard's table, its load/run record)``."""
        table, info = self._holder.run(work, item)
        return index, os.getpid(), table, info

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Shards on Ray actors; results come back as each shard finishes.

    ``address``: a running cluster (``auto`` or the head's ``host:port``), or ``None``
    to start a private Ray instance on this machine, bound to loopback, for this build only.
    ``schedule``: ``affine`` (see the module docstring) or ``plan`` (plan order, one shard in
    flight per worker: ``ActorPool``'s way, kept to measure the affine schedule against).
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_workers: int = 2,
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float = 0.0,
        max_retries: int = 3,
        threads: int = 1,
        progress: bool = True,
        schedule: str = "affine",
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not address and "ray" not in sys.modules:
            # Ray's own switch for single-machine instances (its default on macOS/Windows): every
            # Ray process of the private instance listens on 127.0.0.1 only. Read when ray is imported.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = import_ray()
        self.ray = ray
        self.progress = progress
        self.schedule = schedule
        self._started = False
        if not ray.is_initialized():
            env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
            env_vars.setdefault("TOKENIZERS_PARALLELISM", "false")
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "logging_level": "WARNING"}
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            else:
                # "local", not None: None would join any cluster `ray start` left on this machine.
                kwargs.update(address="local", num_cpus=_ceil(num_workers * num_cpus_per_worker),
                              num_gpus=_ceil(num_workers * num_gpus_per_worker), include_dashboard=False)
            try:
                ray.init(**kwargs)
            except (ConnectionError, TimeoutError, ValueError) as exc:
                hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give this machine "
                        "its token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)") if address else ""
                raise UserError(f"cannot {'join the Ray cluster at ' + address if address else 'start Ray'}: "
                                f"{_first_line(exc)}{hint}") from None
            self._started = True
        threads = threads if threads > 0 else max(1, int(num_cpus_per_worker))
        actor = ray.remote(ShardWorker).options(
            num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker,
            max_restarts=max_retries, max_task_retries=max_retries,
        )
        self.workers = [actor.remote(threads) for _ in range(num_workers)]
        self.served: Counter[int] = Counter()  # shards returned per worker process id
        self.rec = _Recorder()
        self._home: dict[str, int] = {}  # model (Work.affinity) -> the worker that served it last
        self._pids: dict[int, set[int]] = {}  # worker index -> the process ids it ran as (a restart is a new one)

    @property
    def timeline(self) -> list[ShardTiming]:
        return self.rec.timeline

    @property
    def calls(self) -> list[CallTiming]:
        return self.rec.calls

    @property
    def loads(self) -> dict[int, WorkerLoads]:
        return self.rec.loads

    def worker_pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def map(self, tasks: Sequence[tuple[Work, Any]], desc: str = "shards") -> Iterator[tuple[int, Any]]:
        from tqdm.auto import tqdm

        if not tasks:
            return
        call = CallTiming(desc, time.time(), workers=len(self.workers))
        self.rec.calls.append(call)
        refs = {work.key: self.ray.put(work) for work, _ in tasks}  # once per model, not once per shard
        if self.schedule == "plan":
            sched: _Schedule = _PlanOrder(tasks, len(self.workers))
        else:
            sched = _Affine(tasks, len(self.workers), self._home, self.rec)
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (worker, task index)
        per_worker = [0] * len(self.workers)
        try:
            with tqdm(total=len(tasks), desc=f"{desc} ({len(self.workers)} ray workers)", unit="shard",
                      disable=not self.progress) as bar:
                while True:
                    for w, actor in enumerate(self.workers):
                        while per_worker[w] < sched.depth and (i := sched.next(w, per_worker)) is not None:
                            work, item = tasks[i]
                            inflight[actor.run.remote(refs[work.key], i, item)] = (w, i)
                            per_worker[w] += 1
                    if not inflight:
                        break
                    [ref], _ = self.ray.wait(list(inflight), num_returns=1)
                    w, i = inflight.pop(ref)
                    per_worker[w] -= 1
                    index, pid, table, info = self.ray.get(ref)
                    work = tasks[i][0]
                    self.served[pid] += 1
                    self._pids.setdefault(w, set()).add(pid)
                    self._home[work.affinity] = w
                    self.rec.record(w, work, info)
                    sched.done(w, i, info)
                    bar.update(1)
                    yield index, table
        finally:
            call.end = time.time()

    def load_report(self) -> list[str]:
        labels = {w: f"worker {w + 1} (pid {', '.join(map(str, sorted(p)))})" for w, p in self._pids.items()}
        return self.rec.load_report(labels)

    def close(self) -> None:
        for w in self.workers:
            try:
                self.ray.kill(w)
            except Exception:  # noqa: BLE001 - already gone with its cluster
                pass
        self.workers = []
        if self._started:
            self.ray.shutdown()


# ---- schedules --------------------------------------------------------------------------------
class _Schedule:
    depth = 1

    def next(self, worker: int, inflight: list[int]) -> int | None:
        raise NotImplementedError

    def done(self, worker: int, index: int, info: dict) -> None:
        pass


class _PlanOrder(_Schedule):
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


class _Affine(_Schedule):
    """Per-worker queues of whole models (:func:`affine_plan`), two shards in flight per worker,
    and cost-aware stealing when a queue runs dry (see the module docstring)."""

    depth = 2

    def __init__(self, tasks: Sequence[tuple[Work, Any]], workers: int, home: dict[str, int], rec: _Recorder):
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


# Settings a worker needs to behave like the build process (offline Hub, quiet tokenizers).
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_VERBOSITY", "MACPO_CACHE",
                  "TOKENIZERS_PARALLELISM")


def import_ray():
    try:
        import ray
        import ray.util
    except ImportError:
        raise UserError("executor 'ray' needs Ray: pip install 'macpo[ray]'") from None
    return ray


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
    from macpo.builder.models import adapter_base, is_adapter_dir

    base = adapter_base(source.path) if is_adapter_dir(source.path) else source.path
    return repr((str(base), source.revision, source.gguf_file))


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a HOST:PORT nobody answers on: ray.init would retry it for minutes."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto" and the like: Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc.strerror or exc}); "
                        f"start it with `ray start --head --port {port}` on {host}") from None


def _ceil(x: float) -> int:
    return int(-(-x // 1))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""The builder's shards on Ray workers (``executor: ray``): the driver side (:class:`RayExecutor`)
and the body of each worker (:class:`ShardWorker`).

Ray layout: a fixed set of actors, each holding one loaded model at a time and serving many
shards with it, in the order the schedule (:mod:`macpo.builder.executor_schedule`) hands them out.
Chosen over Ray Data's ``map_batches`` over an actor pool, which gives the same
load-once-serve-many, because:

- our unit of work, of seeding and of checkpointing is the builder's shard. Ray Data cuts its
  own blocks and batches and streams rows out, so we would have to force its batches onto shard
  boundaries and write checkpoints from inside the map function (on the workers);
- the driver needs each shard's table as soon as that shard is done, to checkpoint it, so a
  killed driver loses only the shards in flight;
- a worker process that dies is restarted by Ray (``max_restarts``) and the shards it held are
  re-sent (``max_task_retries``); with Ray Data the same retry hides inside its executor.

Workers get shard inputs as plain Python lists (not Arrow slices, whose pickles can carry the
whole parent buffers) and send back one Arrow table per shard. Ray itself is imported only when
an executor is made (:func:`import_ray`): it is an optional dependency, and a private instance
must see its loopback switch before Ray is first imported.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

# A worker imports this module when it loads ShardWorker, at actor start: the builder's shard
# functions are imported then, while the driver plans, not on the worker's first shard.
import macpo.builder.generate  # noqa: F401
import macpo.builder.score  # noqa: F401
from macpo.builder.executor_records import Recorded, Recorder
from macpo.builder.executor_schedule import SCHEDULES, Affine, PlanOrder, Schedule
from macpo.builder.executor_work import Holder, Work
from macpo.errors import UserError

# Settings a worker needs to behave like the build process (offline Hub, quiet tokenizers).
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_VERBOSITY", "MACPO_CACHE",
                  "TOKENIZERS_PARALLELISM")


class ShardWorker:
    """The body of one Ray actor: one model at a time, loaded on its first shard, kept for the next.

    ``threads``: torch intra-op threads, the build's ``threads`` setting, so floats (and so the
    content hash) match a local build.
    """

    def __init__(self, threads: int):
        # On the worker only (the driver of a local build never loads torch for the executor):
        # seconds of import paid while the driver plans, not on the first shard (transformers
        # imports its model and tokenizer classes lazily, on first use).
        import pyarrow  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        torch.set_num_threads(threads)
        self._holder = Holder(close_on_switch=True)
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


class RayExecutor(Recorded):
    """Shards on Ray actors; results come back as each shard finishes.

    ``address``: a running cluster (``auto`` or the head's ``host:port``), or ``None``
    to start a private Ray instance on this machine, bound to loopback, for this build only.
    ``schedule``: ``affine`` (see :mod:`macpo.builder.executor_schedule`) or ``plan`` (plan order,
    one shard in flight per worker: ``ActorPool``'s way, kept to measure the affine schedule against).
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
        self.rec = Recorder()
        self._home: dict[str, int] = {}  # model (Work.affinity) -> the worker that served it last
        self._pids: dict[int, set[int]] = {}  # worker index -> the process ids it ran as (a restart is a new one)

    def worker_pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def map(self, tasks: Sequence[tuple[Work, Any]], desc: str = "shards") -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        call = self.rec.begin(desc, workers=len(self.workers))
        refs = {work.key: self.ray.put(work) for work, _ in tasks}  # once per model, not once per shard
        if self.schedule == "plan":
            sched: Schedule = PlanOrder(tasks, len(self.workers))
        else:
            sched = Affine(tasks, len(self.workers), self._home, self.rec)
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


def import_ray():
    try:
        # Lazy: Ray is an optional extra (macpo[ray]), and a private instance's loopback switch
        # must be in the environment before Ray is first imported (RayExecutor).
        import ray
        import ray.util
    except ImportError:
        raise UserError("executor 'ray' needs Ray: pip install 'macpo[ray]'") from None
    return ray


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a HOST:PORT nobody answers on: ray.init would retry it for minutes."""
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

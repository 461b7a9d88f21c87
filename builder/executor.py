"""Where the builder's shards run: in the build process (``executor: local``) or on Ray workers
(``executor: ray``).

The builder plans the shards that have no checkpoint yet, hands them to an executor together
with a :class:`Work` (how to load the model, how to run one shard under it), and writes each
shard's checkpoint itself as the shard's table comes back; executors never touch the store. A
shard's table depends only on its inputs (prompts, sampling parameters with their per-shard
seed, model files, batch size, torch thread count), never on which process ran it or what that
process ran before, so a retried shard, a rerun after a killed driver, and any number of
workers give the same bytes and the same round content hash.

Ray layout: a fixed pool of actors (:class:`ray.util.ActorPool`), each holding one loaded model
at a time and serving many shards with it. Chosen over Ray Data's ``map_batches`` over an actor
pool, which gives the same load-once-serve-many, because:

- our unit of work, of seeding and of checkpointing is the builder's shard. Ray Data cuts its
  own blocks and batches and streams rows out, so we would have to force its batches onto shard
  boundaries and write checkpoints from inside the map function (on the workers);
- the driver needs each shard's table as soon as that shard is done, to checkpoint it, so a
  killed driver loses only the shards in flight: that is ``ActorPool.map_unordered``;
- a worker process that dies is restarted by Ray (``max_restarts``) and the shard it held is
  re-sent (``max_task_retries``); with Ray Data the same retry hides inside its executor.

Workers get shard inputs as plain Python lists (not Arrow slices, whose pickles can carry the
whole parent buffers) and send back one Arrow table per shard.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from macpo.errors import UserError


@dataclass(frozen=True)
class Work:
    """One model and what to do with each shard under it. Executors take a list of ``(work,
    shard input)`` tasks, so the shards of several models (every agent's generation of a round)
    share one pass over the workers, without a wait for the slowest shard between models.

    ``load(progress)`` builds the model (a generator, or ``(model, tokenizer)``); ``run(model,
    item, progress)`` turns one shard's input into its table. Both must be picklable for Ray:
    module-level functions or ``functools.partial`` of them. ``key`` names the loaded model: a
    worker holding a model under the same key reuses it for the next shard.
    """

    key: str
    load: Callable[[bool], Any]
    run: Callable[[Any, Any, bool], Any]
    desc: str = "shards"


class LocalExecutor:
    """Shards one after another in this process; the model is loaded only if a shard is missing."""

    name = "local"

    def __init__(self, progress: bool = True):
        self.progress = progress

    def map(self, tasks: Sequence[tuple[Work, Any]], desc: str = "shards") -> Iterator[tuple[int, Any]]:
        model, key = None, None
        for i, (work, item) in enumerate(tasks):
            if work.key != key:
                model, key = None, None  # one model in memory at a time
                model, key = work.load(self.progress), work.key
            yield i, work.run(model, item, self.progress)

    def close(self) -> None:
        pass


class ShardWorker:
    """The body of one Ray actor: one model at a time, loaded on its first shard, kept for the next.

    ``threads``: torch intra-op threads, the build's ``threads`` setting, so floats (and so the
    content hash) match a local build.
    """

    def __init__(self, threads: int):
        import torch
        import transformers  # noqa: F401  (seconds of import paid while the driver plans, not on the first shard)

        torch.set_num_threads(threads)
        self._key: str | None = None
        self._model: Any = None

    def run(self, work: Work, index: int, item: Any) -> tuple[int, int, Any]:
        """``(index, this worker's pid, the shard's table)``."""
        if self._key != work.key:
            self._release()
            self._model = work.load(False)
            self._key = work.key
        return index, os.getpid(), work.run(self._model, item, False)

    def pid(self) -> int:
        return os.getpid()

    def _release(self) -> None:
        model, self._model, self._key = self._model, None, None
        close = getattr(model, "close", None)  # a vLLM generator frees its engine's GPU memory
        if callable(close):
            close()
        del model
        import gc

        gc.collect()


class RayExecutor:
    """Shards on a pool of Ray actors; results come back as each shard finishes.

    ``address``: a running cluster (``auto`` or the head's ``host:port``), or ``None``
    to start a private Ray instance on this machine, bound to loopback, for this build only.
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
    ):
        if not address and "ray" not in sys.modules:
            # Ray's own switch for single-machine instances (its default on macOS/Windows): every
            # Ray process of the private instance listens on 127.0.0.1 only. Read when ray is imported.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = import_ray()
        self.ray = ray
        self.progress = progress
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
        self.pool = ray.util.ActorPool(self.workers)

    def worker_pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def map(self, tasks: Sequence[tuple[Work, Any]], desc: str = "shards") -> Iterator[tuple[int, Any]]:
        from tqdm.auto import tqdm

        if not tasks:
            return
        refs = {work.key: self.ray.put(work) for work, _ in tasks}  # once per model, not once per shard
        calls = [(refs[work.key], i, item) for i, (work, item) in enumerate(tasks)]
        with tqdm(total=len(tasks), desc=f"{desc} ({len(self.workers)} ray workers)", unit="shard",
                  disable=not self.progress) as bar:
            for index, pid, table in self.pool.map_unordered(lambda a, v: a.run.remote(*v), calls):
                self.served[pid] += 1
                bar.update(1)
                yield index, table

    def close(self) -> None:
        for w in self.workers:
            try:
                self.ray.kill(w)
            except Exception:  # noqa: BLE001 - already gone with its cluster
                pass
        self.workers = []
        if self._started:
            self.ray.shutdown()


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

"""executor: ray — the builder's shards on Ray workers give the very round a local build gives.

A real Ray cluster (`ray start --head`, 2 CPUs, loopback only, token authentication on) is
started by the module fixture; builds join it by address, as on a real cluster. The round is a
tiny-model MACPO round 1 (3 agents, 24 prompts, shards of 4: 18 generation and 30 scoring shards).
Checked: same content hash as the local build with 2 workers, under the model-affine schedule (each
worker loading each of its models once) and under plan order; after SIGKILL of a worker mid-build
(Ray restarts it and re-sends its shard); after SIGKILL of the driver mid-build and a rerun
(which runs only the missing shards); and with the private Ray instance `macpo build` starts
when no address is given. The schedule's plan and a worker's engine sharing are checked without Ray.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

# Not imported here: Ray reads its loopback switch when first imported (see ray_cluster).
if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install 'macpo[ray]')", allow_module_level=True)

PY = sys.executable
# Generation: 2 agents x 6 shards (teacher-0's round-1 candidates are its sampled weak labels);
# scoring: the student over 72 candidates + 2 teachers x 24.
SHARDS = 2 * 6 + 18 + 2 * 6
WORDS = "hello there how are you today what is two plus two please reverse the words a b c sure here".split()


# ---- a round-0 run of tiny models (also used by benchmarks/build_ray.py) -------------------------
def make_round0(out: Path, *, prompts: int = 24, shard_size: int = 4, hidden: int = 32, layers: int = 2,
                max_new_tokens: int = 8, seed: int = 0, teachers: int = 2):
    """A run folder ready for round 1: tiny models for every agent and negative model (trained
    stand-ins: random weights, each its own seed), the run's data, and round 0 built by the
    builder itself, with ``teachers`` teachers (K). Returns the run config (executor local)."""
    from tiny import save_tiny_model

    from macpo.builder.rounds import build
    from macpo.config import from_dict
    from macpo.store import Store, Subset
    from helpers import pairs_table

    import numpy as np
    import pyarrow as pa

    models = out / "models" / "round-0"
    # The base models live outside the run folder (a run never writes over what it reads); its
    # round-0 models start as copies of them.
    base = out.parent / f"{out.name}-base"
    agents = ("student", *(f"teacher-{k}" for k in range(teachers)))
    for i, agent in enumerate(a + s for a in agents for s in ("", "-neg")):
        save_tiny_model(base / agent, hidden=hidden, layers=layers, seed=seed + i)
        shutil.copytree(base / agent, models / agent)
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(prompts + 16)]
    q = pa.table({"prompt_id": [f"q{i}" for i in range(prompts)],
                  "prompt": [[{"role": "user", "content": t}] for t in texts[:prompts]],
                  "split": ["train"] * prompts, "meta": [None] * prompts})
    dw = pairs_table([(t, "sure , here is a kind note", "i cannot help") for t in texts[prompts:]])
    cfg = from_dict({"name": "rt", "out": str(out), "seed": seed, "K": teachers, "T": 1,
                     "teachers": [str(base / f"teacher-{k}") for k in range(teachers)], "student": str(base / "student"),
                     "threads": 1, "shard_size": shard_size,
                     "sampling": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": max_new_tokens, "batch_size": 8}})
    Store(out / "store", create=True).write("rt-data", "v1", {"dw": Subset("pairs", dw), "q": Subset("prompts", q)})
    for _ in range(3):  # teachers, labels, final
        build(cfg, 0, progress=False)
    return cfg


def copy_run(cfg, dst: Path, **changes):
    """The run folder of ``cfg`` copied to ``dst`` (round 1 not built), as a config with ``changes``."""
    from macpo.config import from_dict

    shutil.copytree(cfg.out, dst, ignore=shutil.ignore_patterns("round-1", ".work"))
    data = cfg.to_dict()
    data.update(out=str(dst), **changes)
    return from_dict(data)


def round_hash(cfg, version: str = "round-1") -> str:
    from macpo.store import Store

    return Store(Path(cfg.out) / "store").manifest(cfg.name, version)["content_hash"]


# ---- a Ray cluster of our own ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid``: the `ray start` we launched and everything it started
    (Ray's workers put themselves in process groups of their own, but stay in the session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def ray_cluster():
    """``127.0.0.1:PORT`` of a 2-CPU Ray head started here, torn down after the module.

    Loopback only: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine mode (on Linux Ray
    otherwise swaps 127.0.0.1 for the host's routable address). Token authentication on, with a
    token of our own: the setup docs/cluster.md describes for a real cluster."""
    # Short: Ray's unix sockets live under it (108-byte limit on socket paths).
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    token = tmp / "token"
    token.write_text(uuid.uuid4().hex)
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # for in-process drivers (read when ray is imported) and child processes
    port = _free_port()
    ports = {f"--{name}": str(_free_port()) for name in (
        "node-manager-port", "object-manager-port", "dashboard-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")}
    argv = [PY, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
            "--temp-dir", str(tmp), "--disable-usage-stats", *[x for kv in ports.items() for x in kv]]
    log = open(tmp / "ray-start.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}: {(tmp / 'ray-start.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("the Ray head did not come up in 120 s")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in _session_pids(proc.pid):  # anything left of it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def run0(tmp_path_factory):
    return make_round0(tmp_path_factory.mktemp("run0") / "out")


@pytest.fixture(scope="module")
def local_round1(run0, tmp_path_factory):
    """Round 1 built by the local executor: the hash every layout must reproduce."""
    from macpo.builder.rounds import build

    cfg = copy_run(run0, tmp_path_factory.mktemp("local") / "out")
    result = build(cfg, 1, progress=False)
    assert result.created
    return cfg, result.content_hash


def _build_cli(cfg, *extra: str) -> list[str]:
    from macpo.config import dump

    path = Path(cfg.out) / "run.yaml"
    dump(cfg, path)
    return [PY, "-m", "macpo.cli", "build", "--config", str(path), "--round", "1", "--no-progress", *extra]


def _env() -> dict:
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


# ---- the checks ----------------------------------------------------------------------------------
def test_two_ray_workers_build_the_local_round(run0, local_round1, ray_cluster, tmp_path):
    from macpo.builder.rounds import RoundBuilder
    from macpo.store import Store

    local_cfg, expected = local_round1
    cfg = copy_run(run0, tmp_path / "out", executor="ray", ray={"address": ray_cluster, "num_workers": 2})
    b = RoundBuilder(cfg, progress=False)
    try:
        pids = b.executor.worker_pids()
        result = b.build_round(1)
        served = dict(b.executor.served)
        loads = b.executor.loads
    finally:
        b.close()
    assert result.content_hash == expected
    # Both workers (neither of them this process) ran shards, and every shard ran once.
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert set(served) == set(pids) and all(n > 0 for n in served.values())
    assert sum(served.values()) == SHARDS == b.shard_counts["run"]
    # Model-affine: each worker loaded each of its models once, and every model of the round (2
    # generators, 3 scorers) was loaded by some worker; plan order had each worker load nearly all 5.
    assert set(loads) == {0, 1} and all(w.loads == len(set(w.models)) for w in loads.values()), \
        {w: s.models for w, s in loads.items()}
    assert len(set().union(*(w.models for w in loads.values()))) == 5
    assert sum(w.loads for w in loads.values()) < 10
    # Same tables, row for row (the hash says so; this says where a difference would be).
    for subset in ("candidates", "student", "teacher-0"):
        a = Store(Path(local_cfg.out) / "store").read("rt", "round-1", subset)
        r = Store(Path(cfg.out) / "store").read("rt", "round-1", subset)
        assert a.equals(r), subset


def test_plan_order_schedule_builds_the_same_round(run0, local_round1, ray_cluster, tmp_path):
    from macpo.builder.executor import RayExecutor
    from macpo.builder.rounds import RoundBuilder

    _, expected = local_round1
    cfg = copy_run(run0, tmp_path / "out")
    executor = RayExecutor(address=ray_cluster, num_workers=2, threads=1, progress=False, schedule="plan")
    try:
        b = RoundBuilder(cfg, progress=False, executor=executor)
        result = b.build_round(1)
        assert sum(w.shards for w in executor.loads.values()) == SHARDS
    finally:
        executor.close()
    assert result.content_hash == expected


def test_worker_killed_mid_build_is_restarted_with_the_same_round(run0, local_round1, ray_cluster, tmp_path):
    from macpo.builder.rounds import RoundBuilder

    _, expected = local_round1
    cfg = copy_run(run0, tmp_path / "out", executor="ray", ray={"address": ray_cluster, "num_workers": 2})
    b = RoundBuilder(cfg, progress=False)
    work = Path(cfg.out) / "store" / ".work" / "rt" / "round-1"
    stop, killed = threading.Event(), {}
    try:
        pids = b.executor.worker_pids()

        def kill_when_a_shard_is_checkpointed():
            while not stop.is_set():
                done = list(work.glob("*.parquet"))
                if done:
                    os.kill(pids[0], signal.SIGKILL)
                    killed["after"] = len(done)
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_when_a_shard_is_checkpointed)
        watcher.start()
        try:
            result = b.build_round(1)
        finally:
            stop.set()
            watcher.join()
        after = b.executor.worker_pids()
        served = dict(b.executor.served)
    finally:
        b.close()
    assert killed and killed["after"] < SHARDS, "the build finished before a worker could be killed"
    assert result.content_hash == expected
    assert pids[0] not in after and pids[1] in after and len(set(after)) == 2  # Ray restarted the killed actor
    restarted = (set(after) - set(pids)).pop()
    assert served.get(restarted, 0) > 0  # and it served shards after its restart
    assert sum(served.values()) == SHARDS


def test_driver_killed_mid_build_then_rerun_gives_the_same_round(run0, local_round1, ray_cluster, tmp_path):
    _, expected = local_round1
    cfg = copy_run(run0, tmp_path / "out", executor="ray", ray={"address": ray_cluster})
    argv = _build_cli(cfg)
    work = Path(cfg.out) / "store" / ".work" / "rt" / "round-1"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(work.glob("gen-*.parquet"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before its driver could be killed"
    assert not (Path(cfg.out) / "store" / "rt" / "round-1").exists()
    left = len(list(work.glob("*.parquet")))
    assert 2 <= left < SHARDS

    r = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"content {expected}" in r.stdout
    # The rerun ran only what the killed driver had not checkpointed.
    assert f"shards: {SHARDS - left} run on 2 Ray workers, {left} read from checkpoints" in r.stdout
    assert round_hash(cfg) == expected


def test_private_ray_instance_from_the_command_line(run0, local_round1, tmp_path):
    """No address: `macpo build --executor ray` starts a Ray instance of its own for the build."""
    _, expected = local_round1
    cfg = copy_run(run0, tmp_path / "out")
    env = _env()
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(k, None)
    r = subprocess.run(_build_cli(cfg, "--executor", "ray", "--set", "ray.num_workers=2"), capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"content {expected}" in r.stdout and f"shards: {SHARDS} run on 2 Ray workers" in r.stdout
    # One line per worker: its shards, model loads and engine starts; together every shard, no model twice.
    import re

    lines = re.findall(r"worker (\d) \(pid \d+\): (\d+) shards, (\d+) model loads? \((\d+) models?, [0-9.]+ s\), "
                       r"0 engine starts", r.stdout)
    assert sorted(w for w, *_ in lines) == ["1", "2"], r.stdout
    assert sum(int(n) for _, n, _, _ in lines) == SHARDS
    assert all(loads == distinct for _, _, loads, distinct in lines), r.stdout


def test_ray_config_mistakes_are_one_line_user_errors(run0, tmp_path):
    cfg = copy_run(run0, tmp_path / "out")
    cases = [
        (["--executor", "spark"], "invalid choice: 'spark'"),
        (["--set", "executor=spark"], "config executor: 'spark' is not one of local, ray"),
        (["--executor", "ray", "--set", "ray.num_workers=0"], "config ray.num_workers: 0 is out of range (must be between 1 and"),
        (["--executor", "ray", "--set", "ray.address=127.0.0.1:1"], "cannot join the Ray cluster at 127.0.0.1:1"),
    ]
    for extra, message in cases:
        r = subprocess.run(_build_cli(cfg, *extra), capture_output=True, text=True, env=_env(), timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr, (extra, r.stderr[-2000:])
        assert message in lines[-1] and len(lines) == 1, (extra, r.stderr[-2000:])
        assert not (Path(cfg.out) / "store" / "rt" / "round-1").exists()


def test_joining_without_the_cluster_token_is_a_one_line_user_error(run0, ray_cluster, tmp_path):
    cfg = copy_run(run0, tmp_path / "out", executor="ray", ray={"address": ray_cluster})
    wrong = tmp_path / "wrong-token"
    wrong.write_text(uuid.uuid4().hex)
    r = subprocess.run(_build_cli(cfg), capture_output=True, text=True, timeout=300,
                       env=dict(_env(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert f"cannot join the Ray cluster at {ray_cluster}" in last and "RAY_AUTH_MODE=token" in last, last
    assert not (Path(cfg.out) / "store" / "rt" / "round-1").exists()


# ---- the schedule, without Ray -----------------------------------------------------------------
def test_affine_plan_balances_shards_over_few_whole_models():
    from macpo.builder.executor_schedule import affine_plan

    # This module's scoring call: the student's 18 shards and 6 per teacher, on 2 workers: 15 each,
    # the teachers whole, only the student split (each half loaded once, by its worker).
    assert affine_plan([("student", 18), ("teacher-0", 6), ("teacher-1", 6)], 2) == [[(1, 6), (0, 9)], [(2, 6), (0, 9)]]
    # A model goes back to the worker that served it (an agent's generation, then its scoring).
    assert affine_plan([("a", 4), ("b", 4)], 2, home={"a": 1, "b": 0}) == [[(1, 4)], [(0, 4)]]
    # Fewer models than workers: every worker gets a part. More: whole models, one split.
    assert affine_plan([("a", 7)], 3) == [[(0, 3)], [(0, 2)], [(0, 2)]]
    assert affine_plan([("s", 8), ("t1", 8), ("t2", 8)], 2) == [[(0, 8), (2, 4)], [(1, 8), (2, 4)]]
    for sizes, workers in (([("a", 5), ("b", 1), ("c", 9), ("d", 2)], 3), ([("a", 1)], 4)):
        plan = affine_plan(sizes, workers)
        counts = [sum(n for _, n in chunks) for chunks in plan]
        assert max(counts) - min(counts) <= 1 and sum(counts) == sum(n for _, n in sizes)
        assert all(len({g for g, _ in chunks}) == len(chunks) for chunks in plan)  # a model once per worker


def test_a_worker_keeps_one_vllm_engine_for_adapters_on_one_base(tmp_path):
    """vLLM works sharing an engine key (adapters of one base) follow each other on a worker without
    an engine restart; another base closes it. The generators are the real VLLMGenerator over the
    vLLM stand-in of test_generate (its engine reuse is vllm_backend's own)."""
    from functools import partial
    from types import SimpleNamespace

    from test_generate import FAKE_VLLM, make_adapter
    from tiny import save_tiny_model

    from macpo.builder.executor import engine_key
    from macpo.builder.executor_work import Holder, Work
    from macpo.builder.vllm_backend import VLLMGenerator, shutdown_engine
    from macpo.layout import ModelSource

    save_tiny_model(tmp_path / "base", hidden=32, layers=1, seed=0)
    save_tiny_model(tmp_path / "other", hidden=32, layers=1, seed=1)
    models = {"t0": make_adapter(tmp_path / "base", tmp_path / "t0", 1), "t1": make_adapter(tmp_path / "base", tmp_path / "t1", 2),
              "other": tmp_path / "other"}
    vllm = SimpleNamespace(backend="vllm")

    def works(shared: bool):
        return [Work(key=name, load=partial(lambda path, progress: VLLMGenerator(path, vllm=FAKE_VLLM, progress=False), path),
                     run=lambda gen, item, progress: gen, engine=engine_key(vllm, ModelSource(str(path))) if shared else "")
                for name, path in models.items()]

    try:
        assert engine_key(vllm, ModelSource(str(models["t0"]))) == engine_key(vllm, ModelSource(str(models["t1"])))
        assert engine_key(SimpleNamespace(backend="transformers"), ModelSource(str(models["t0"]))) == ""
        for shared, starts in ((True, [True, False, True]), (False, [True, True, True])):
            holder = Holder(close_on_switch=True)
            gens, infos = zip(*(holder.run(w, None) for w in works(shared)))
            assert [i["engine_started"] for i in infos] == starts and all(i["loaded"] for i in infos)
            # Shared: t1's generator runs on t0's engine, still open; not shared: t0's was closed first.
            assert (gens[1]._engine is gens[0]._engine) == shared
            assert gens[1]._lora["default"].lora_path == str(models["t1"])
            holder.release()
            assert gens[2]._engine.llm is None  # a Ray worker's release closes the engine
    finally:
        shutdown_engine()
        import gc

        gc.unfreeze()  # a worker's release froze this (pytest's) process's objects for the collector


def test_a_worker_out_of_shards_takes_half_of_anothers_queue_when_that_ends_sooner():
    from collections import deque

    from macpo.builder.executor_records import Recorder, ShardTiming
    from macpo.builder.executor_schedule import Affine
    from macpo.builder.executor_work import Work

    tasks = [(Work(key="a", load=None, run=None), i) for i in range(6)] + [(Work(key="b", load=None, run=None), 0)]

    def schedule(load_seconds: float):
        rec = Recorder()
        rec.calls.append(None)
        # Shards of `a` measured at 1 s, its load at `load_seconds`.
        rec.timeline += [ShardTiming(0, 0, "a", load_seconds if i == 0 else 0.0, 1.0, 0.0, 0, 1, 1, 0) for i in range(2)]
        sched = Affine(tasks, 2, {}, rec)
        sched.queues = [deque(range(6)), deque([6])]  # worker 0: six shards of a; worker 1: one of b
        sched.current = ["a", None]
        return sched

    # Worker 1 runs its one shard of b while worker 0 runs one of a with 6 more queued. Taking n of
    # them ends both at once when 1 + load + n = 6 + 1 - n (in shards of 1 s): a 0.5 s load -> n = 2
    # (from the end of worker 0's queue); a 6 s load costs more than it saves -> none.
    sched = schedule(0.5)
    assert sched.next(1, [1, 0]) == 6
    assert sched.next(1, [1, 1]) == 4 and list(sched.queues[0]) == [0, 1, 2, 3] and list(sched.queues[1]) == [5]
    sched = schedule(6.0)
    assert sched.next(1, [1, 0]) == 6 and sched.next(1, [1, 1]) is None and len(sched.queues[0]) == 6
    # Free when the worker holds that model already: half of what is left.
    sched = schedule(6.0)
    sched.queues[1].clear()
    sched.current[1] = "a"
    assert sched.next(1, [1, 1]) == 3 and list(sched.queues[0]) == [0, 1, 2]
    # Never a model it served and let go in the same step (it would load it twice).
    sched = schedule(0.5)
    assert sched.next(1, [1, 0]) == 6
    sched.dropped[1].add("a")
    assert sched.next(1, [1, 1]) is None

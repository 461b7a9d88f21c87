"""Process hygiene and Ctrl-C (issue 23): a stage never outlives the run that started it, one run
folder has one run at a time, and build, train, study and run stop on SIGINT with exit 130.

Every long command is stopped mid-work, as tests/test_integrity.py stops a running query: wait
for a sign that the slow part started, send SIGINT, expect exit 130 and one stderr line. On a
timeout the process gets SIGUSR1 first (faulthandler prints every thread's stack) so a hang says
where it is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import one_line_error, pairs_table

if not Path("/proc/self/task").is_dir():
    pytest.skip("reads the process tree from /proc (Linux)", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
CI = REPO_ROOT / "eval" / "configs" / "ci.yaml"
MACPO = [sys.executable, "-m", "macpo.cli"]


# ---- the process tree ----------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], children(pid)
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def wait_for(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def stage_of(proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid of the first stage process ``proc`` starts."""
    return wait_for(lambda: next(iter(children(proc.pid)), None) or (proc.poll() is not None and pytest.fail(
        f"exited {proc.returncode} before starting a stage")), timeout, "a stage process")


def interrupt(proc: subprocess.Popen, timeout: float = 60, send: bool = True) -> str:
    """SIGINT ``proc`` (unless sent already) and return its stderr; on a hang, its threads' stacks
    fail the test."""
    if send:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no exit {timeout:g}s after SIGINT; threads:\n{err}")
    return err


def assert_interrupted(proc: subprocess.Popen, err: str, command: str) -> None:
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == f"macpo {command}: interrupted", err[-3000:]


@pytest.fixture
def cold_cache(tmp_path):
    """A fresh sandbox model cache: the first stage (prepare) pretrains the world's models, so it
    runs for several seconds after its imports."""
    return {**os.environ, "MACPO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def start(args, env=None, stdout=None) -> subprocess.Popen:
    return subprocess.Popen([*MACPO, *map(str, args)], stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO_ROOT)


# ---- the orchestrator's stages ---------------------------------------------------------------------
def test_kill_9_of_a_run_leaves_no_stage_behind(cold_cache, tmp_path):
    run = start(["run", CI, "--out", tmp_path / "out"], env=cold_cache)
    try:
        stage = stage_of(run)
        time.sleep(2)  # past its imports: pretraining the world's models (~8 s here)
        tree = [stage, *descendants(stage)]
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        # The stage polls its parent every 0.2 s; an orphan would run on for the rest of the prepare step.
        wait_for(lambda: not any(alive(p) for p in tree), 3, f"stage processes {tree} to go")
    finally:
        run.kill()
        for p in descendants(run.pid):
            os.kill(p, signal.SIGKILL)


STAGE = """
import subprocess, sys, time
from macpo.cliutil import watch_parent
watch_parent()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(child.pid, flush=True)
time.sleep(300)
"""
RUNNER = """
import sys
from pathlib import Path
from macpo.run.plan import Step
from macpo.run.procs import run_step
step = Step("slow stage", [sys.executable, "-c", sys.argv[1]], lambda: False)
run_step(step, Path(sys.argv[2]), verbose=False)
"""


def test_a_stage_takes_its_own_children_down_with_it(tmp_path):
    log = tmp_path / "stage.log"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, STAGE, str(log)], cwd=REPO_ROOT)
    try:
        stage = stage_of(runner, 30)
        grandchild = int(wait_for(lambda: log.is_file() and [ln for ln in log.read_text().splitlines() if ln.isdigit()],
                                  30, "the stage's child")[0])
        assert os.getpgid(stage) == stage != os.getpgid(runner.pid)  # its own process group
        assert os.getpgid(grandchild) == stage
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        wait_for(lambda: not alive(stage) and not alive(grandchild), 5, "the stage and its child to go")
    finally:
        runner.kill()


def test_two_runs_on_one_folder_and_ctrl_c_of_a_run(cold_cache, tmp_path):
    out = tmp_path / "out"
    first = start(["run", CI, "--out", out], env=cold_cache)
    try:
        stage = stage_of(first)
        second = subprocess.run([*MACPO, "run", str(CI), "--out", str(out)], capture_output=True, text=True,
                                env=cold_cache, timeout=120, cwd=REPO_ROOT)
        one_line_error(second, f"run folder {out} is in use by another macpo run (pid {first.pid})")
        assert alive(stage)  # the refused run touched nothing of the first
        err = interrupt(first)
        assert_interrupted(first, err, "run")
        wait_for(lambda: not alive(stage), 5, "the stage to go")
    finally:
        first.kill()
    # The lock died with its holder: the folder can be resumed.
    again = start(["run", CI, "--out", out], env=cold_cache)
    try:
        stage_of(again)
        assert_interrupted(again, interrupt(again), "run")
    finally:
        again.kill()


def test_ctrl_c_of_a_study_stops_its_running_stage(cold_cache, tmp_path):
    study = start(["study", CI, "--seeds", "1", "--variants", "macpo", "--jobs", "1", "--bootstrap", "10",
                   "--out", tmp_path / "study"], env=cold_cache)
    try:
        stage = stage_of(study)
        time.sleep(2)  # past its imports
        study.send_signal(signal.SIGINT)
        # Stopped, not left to finish its step (the prepare step runs ~8 s here).
        wait_for(lambda: not alive(stage), 3, "the study's stage to go")
        assert_interrupted(study, interrupt(study, send=False), "study")
    finally:
        study.kill()


# ---- Ctrl-C of the trainer and the builder alone, on slow inputs ---------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from macpo.store import Store, Subset

    root = tmp_path_factory.mktemp("data") / "store"
    rows = [(f"question {i} please reverse the words a b c", f"sure , here is {i}", f"i cannot help {i}") for i in range(400)]
    Store(root, create=True).write("hh", "v1", {"default": Subset("pairs", pairs_table(rows))})
    return root


def test_ctrl_c_of_train(store, tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    train = subprocess.Popen(
        [*MACPO, "train", "--data", str(store), "--subset", "default", "--model", str(tiny_model_dir), "--loss", "sft",
         "--max-steps", "1000000", "--batch-size", "2", "--threads", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=REPO_ROOT)
    try:
        wait_for(lambda: "'loss'" in train.stdout.readline(), 180, "a logged training step")
        err = interrupt(train)
        assert_interrupted(train, err, "train")
    finally:
        train.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither --out nor its .partial folder


def test_ctrl_c_of_build(store, tiny_model_dir, tmp_path):
    from macpo import config as config_mod
    from macpo.builder.rounds import build
    from macpo.eval.cli import prepare
    from macpo.layout import RunLayout
    from macpo.store import Store

    data = {"name": "slow", "method": "macpo", "K": 1, "T": 1, "teachers": [str(tiny_model_dir)],
            "student": str(tiny_model_dir), "out": str(tmp_path / "run"), "threads": 1, "shard_size": 1,
            "data": {"store": str(store), "dataset": "hh"}, "sampling": {"max_new_tokens": 48, "batch_size": 1}}
    cfg = config_mod.from_dict(data)
    prepare(cfg)
    build(cfg, 0, "teachers", progress=False)
    layout = RunLayout(cfg)
    for agent in ("teacher-0", "teacher-0-neg"):
        shutil.copytree(tiny_model_dir, layout.model_dir(agent, 0))
    path = tmp_path / "slow.yaml"
    path.write_text(json.dumps(data))
    work = layout.store_dir / ".work"
    proc = subprocess.Popen([*MACPO, "build", "--config", str(path), "--round", "0", "--part", "labels", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        # ~180 prompts one per shard: the first checkpoint says generation is under way.
        wait_for(lambda: any(p.is_file() for p in work.rglob("*")) or proc.poll() is not None, 180, "a shard checkpoint")
        assert proc.poll() is None, "the build finished before it could be interrupted"
        err = interrupt(proc)
        assert_interrupted(proc, err, "build")
    finally:
        proc.kill()
    assert "round-0-labels" not in Store(layout.store_dir).versions("slow")

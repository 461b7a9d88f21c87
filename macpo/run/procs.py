"""A step as a subprocess: its environment and log, stopping it (and its children) cleanly, and
the lock that keeps two runs out of one run folder."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from macpo.cliutil import PARENT_ENV
from macpo.errors import UserError

RUN_LOCK = ".macpo-run.lock"

_LIVE: set[subprocess.Popen] = set()  # running stages (several at once under `macpo study --jobs`)
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a stage's whole process group: SIGINT (it exits 130 and cleans up), SIGKILL after ``grace``."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def stop_stages() -> None:
    """Stop every running stage (Ctrl-C of ``macpo study``, whose stages run on other threads)."""
    _STOPPING.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        _stop(proc)


@contextmanager
def hold_run_folder(out: Path):
    """Hold ``OUT/.macpo-run.lock`` while a run writes its folder: a second run on the same folder
    stops with one line naming the holder, instead of racing it (flock: released if the holder dies)."""
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / RUN_LOCK, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise UserError(f"run folder {out} is in use by another macpo run (pid {holder}); "
                            "wait for it to finish or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


def run_step(step, log: Path, verbose: bool, threads: int = 0) -> None:
    """Run ``step.argv`` to the end, its output in ``log`` (or on the terminal with ``verbose``).

    A failure is one line naming the step and the log's last line: a UserError (exit 2) when the
    stage exited 2, else exit 1."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if threads > 0:
        # Measured here: a 64-wide model trains ~10x faster on 1 thread than on 2 when the cores are busy
        # (OpenMP spin-waits); every stage reads these variables at startup.
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # The stage leads its own process group (so stopping it stops its children too) and watches this
    # process: if the run dies, even by kill -9, the stage's group goes down with it (cliutil.watch_parent).
    env[PARENT_ENV] = str(os.getpid())
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(step.argv) + "\n")
        fh.flush()
        proc = subprocess.Popen(step.argv, stdout=None if verbose else fh, stderr=subprocess.STDOUT if not verbose else None,
                                env=env, start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            proc.wait()
        except BaseException:  # Ctrl-C (the terminal's SIGINT no longer reaches the stage's group) or an error
            _stop(proc)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    if _STOPPING.is_set():
        raise KeyboardInterrupt  # stopped by stop_stages(): an interruption, not a failing step
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] if not verbose else []
        reason = tail[0] if tail else f"exit code {proc.returncode}"
        msg = f"step '{step.name}' failed: {reason} (log: {log})"
        if proc.returncode == 2:
            raise UserError(msg)
        print(file=sys.stderr)
        print(f"macpo run: {msg}", file=sys.stderr)
        raise SystemExit(1)

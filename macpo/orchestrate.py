"""``macpo run`` / ``macpo demo``: the whole loop from one YAML config.

bootstrap (round 0) -> T rounds of build -> train every agent -> eval after every round -> report.
Each stage runs as its own process (``python -m macpo.cli build|train|eval``), joined only
through the store and the models folder. A rerun resumes: every step records the hash of
its inputs in ``STORE/run-state.json`` and is skipped when that hash matches and its
output exists; an interrupted build resumes from its shard checkpoints.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from macpo.cliutil import PARENT_ENV, check_owned, make_parser, parse_kv, write_marker
from macpo.config import RunConfig
from macpo.errors import UserError
from macpo.hashing import json_hash
from macpo.eval.cli import has_premise_gates
from macpo.eval.sandbox.gates import CEILING, DPO_SANITY_AGENT
from macpo.layout import RunLayout

# -P: never put the caller's working directory on sys.path, or a stray h11.py there shadows a library.
_PY = [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]
CLI = [*_PY, "-m", "macpo.cli"]
RUN_LOCK = ".macpo-run.lock"


@dataclass
class Step:
    name: str
    argv: list[str]
    done: Callable[[], bool]
    deps: list[str] = field(default_factory=list)
    # Outputs to delete before re-running (models are folders, not immutable store versions).
    clears: list[Path] = field(default_factory=list)
    config_sections: tuple[str, ...] = ()
    # What the step writes (store version folders, model folders): `macpo study` shares a step's
    # outputs between runs with identical inputs. A step without outputs is never shared.
    outputs: list[Path] = field(default_factory=list)


def train_job(cfg: RunConfig, layout: RunLayout, stage_name: str, *, agent: str, round_: int, version: str,
              subset: str, start_from: str | None) -> dict:
    """One trainer job: the stage's TrainConfig with this job's fields filled in, as a plain dict.

    No flag list: every field of the stage reaches the trainer as it is (``macpo.trainbatch``
    rebuilds the TrainConfig from this dict). Full fine-tuning continues from the previous model
    folder; LoRA continues the previous adapter on the base weights. ``ref: base`` always means the
    agent's pretrained base weights, so a full fine-tune that starts from a previous folder gets
    them as ``ref_model``.
    """
    stage = cfg.train[stage_name]
    spec = layout.agent_spec(agent)
    base = layout.base_model(agent)
    job = dict(data=str(layout.store_dir), dataset=layout.rounds_dataset, version=version, subset=subset,
               out=str(layout.model_dir(agent, round_)), overwrite=True, loss=cfg.stage_loss(stage_name),
               seed=cfg.seed * 1000 + round_, model=base, model_revision=spec.revision, gguf_file=spec.gguf_file,
               adapter=None, ref_model=None)
    if start_from is not None and stage.lora_r > 0:
        job["adapter"] = str(start_from)
    elif start_from is not None:
        # A previous full fine-tune is a local folder: revision and GGUF describe the base only.
        job.update(model=str(start_from), model_revision=None, gguf_file=None)
        if stage.ref == "base" and job["loss"] != "sft":
            job.update(ref_model=base, model_revision=spec.revision, gguf_file=spec.gguf_file)
    return dataclasses.asdict(dataclasses.replace(stage, **job))


def plan(cfg: RunConfig, config_path: Path) -> list[Step]:
    """The run's steps in order. Pure: looks at the config, never at the disk (except in ``done``)."""
    layout = RunLayout(cfg)
    store = layout.store_dir
    name = layout.rounds_dataset
    conf = ["--config", str(config_path)]

    def has(dataset: str, version: str) -> Callable[[], bool]:
        return lambda: (store / dataset / version / "manifest.json").is_file()

    def model(agent: str, round_: int) -> Callable[[], bool]:
        p = layout.model_dir(agent, round_)
        return lambda: (p / "metrics.json").is_file()

    steps = [Step("prepare", [*CLI, "eval", *conf, "--prepare"], has(layout.data_dataset, "v1"),
                  outputs=[store / layout.data_dataset / "v1"])]

    def job(agent: str, round_: int, stage_name: str, version: str, subset: str, start_from: str | None):
        config = train_job(cfg, layout, stage_name, agent=agent, round_=round_, version=version, subset=subset,
                           start_from=start_from)
        return {"config": config, "out": Path(config["out"]), "section": f"train.{stage_name}"}

    def train(label: str, jobs: list[dict], deps: list[str]):
        """One trainer process for a group of jobs (run in order)."""
        outs = [j["out"] for j in jobs]
        argv = [*_PY, "-m", "macpo.trainbatch", json.dumps([j["config"] for j in jobs], sort_keys=True)]
        steps.append(Step(label, argv, lambda: all((o / "metrics.json").is_file() for o in outs), deps=deps, clears=outs,
                          config_sections=tuple(sorted({j["section"] for j in jobs})), outputs=list(outs)))
        return steps[-1].name

    def build(round_: int, part: str | None, version: str, deps: list[str]):
        argv = [*CLI, "build", *conf, "--round", str(round_), "--no-progress"] + (["--part", part] if part else [])
        steps.append(Step(f"build {version}", argv, has(name, version), deps=deps, outputs=[store / name / version]))
        return steps[-1].name

    def evaluate(round_: int, deps: list[str]):
        steps.append(Step(f"eval round-{round_}", [*CLI, "eval", *conf, "--round", str(round_)], has(layout.evals_dataset, f"round-{round_}"), deps=deps,
                          config_sections=("eval",), outputs=[store / layout.evals_dataset / f"round-{round_}"]))
        return steps[-1].name

    def premise_gates(deps: list[str]):
        steps.append(Step("premise gates", [*CLI, "eval", *conf, "--gates"], lambda: (layout.out / "gates.json").is_file(),
                          deps=deps, config_sections=("eval",)))

    teachers = cfg.teacher_names()
    md = lambda a, r: str(layout.model_dir(a, r))  # noqa: E731
    if cfg.method in {"macpo", "naive-w2s"}:
        b0 = build(0, "teachers", "round-0-teachers", ["prepare"])
        jobs = [job(t, 0, "teacher_sft", "round-0-teachers", "teacher-sft", None) for t in teachers]
        # Negative teachers: every teacher for MACPO; the naive baseline only needs the weak-label teacher's.
        neg_for = teachers if cfg.method == "macpo" else [teachers[cfg.weak_label_teacher]]
        jobs += [job(f"{t}-neg", 0, "teacher_neg_sft", "round-0-teachers", "teacher-neg-sft", md(t, 0)) for t in neg_for]
        t0 = train("train teachers round-0", jobs, [b0])
        b1 = build(0, "labels", "round-0-labels", [t0])
        jobs = [job("student", 0, "student_sft", "round-0-labels", "weak-labels", None)]
        if cfg.method == "macpo":
            jobs.append(job("student-neg", 0, "student_neg_sft", "round-0-labels", "weak-negatives", md("student", 0)))
        gates = has_premise_gates(cfg)
        if gates:  # the gold ceiling: the student SFT'd on gold responses for Q, with the naive budget
            jobs.append(job(CEILING, 0, "student_sft", "round-0-labels", "gold-labels", None))
        s0 = train("train student round-0", jobs, [b1])
        last = [build(0, "final", "round-0", [s0])]
        evals_after = last + [t0]
        if gates:
            # dpo-sanity gate: one round of the run's DPO on the human pairs D_w, from the naive student.
            # Its own step, so runs that differ only in train.dpo still share the round-0 student.
            sanity = job(DPO_SANITY_AGENT, 0, "dpo", "round-0-labels", "dw", md("student", 0))
            sanity["config"].update(dataset=layout.data_dataset, version="v1", subset="dw")
            evals_after.append(train("train dpo-sanity round-0", [sanity], [s0]))
        e = evaluate(0, evals_after)
        rounds = cfg.T if cfg.method == "macpo" else 0
        if gates and rounds == 0:
            premise_gates([e])
        for t in range(1, rounds + 1):
            b = build(t, None, f"round-{t}", last + [e])
            if gates and t == 1:  # round-1 candidates are the round-0 models' outputs: the filter gate reads them
                premise_gates([b, e])
            learners = ["student"] + (teachers if cfg.update_teachers else [])
            last = [train(f"train agents round-{t}", [job(a, t, "dpo", f"round-{t}", a, md(a, t - 1)) for a in learners], [b])]
            e = evaluate(t, last)
    else:  # spac / spin / dpo over the offline pairs
        b0 = build(0, "teachers", "round-0-teachers", ["prepare"])
        s0 = train("train student round-0", [job("student", 0, "student_sft", "round-0-teachers", "student-sft", None)], [b0])
        last = [build(0, "final", "round-0", [s0])]
        e = evaluate(0, last)
        for t in range(1, cfg.T + 1):
            b = build(t, None, f"round-{t}", last + [e])
            last = [train(f"train student round-{t}", [job("student", t, "dpo", f"round-{t}", "student", md("student", t - 1))], [b])]
            e = evaluate(t, last)
    steps.append(Step("report", [*CLI, "eval", *conf, "--report"], lambda: (layout.out / "report.md").is_file(), deps=[e], config_sections=("eval",)))
    return steps


# ---- running -------------------------------------------------------------------------------
class RunState:
    def __init__(self, path: Path, cfg: RunConfig):
        self.path = path
        self.data = {"name": cfg.name, "config_hash": cfg.hash(), "steps": []}
        if path.exists():
            self.data["steps"] = self._read_steps(path)

    @staticmethod
    def _read_steps(path: Path) -> list[dict]:
        """The steps recorded by an earlier run, or a one-line UserError for anything else: a run
        that guessed would redo (or skip) steps without saying why."""
        fix = "delete it to run every step again"
        try:
            old = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise UserError(f"{path} is not a macpo run state ({why}); {fix}") from None
        steps = old.get("steps", []) if isinstance(old, dict) else None
        if not isinstance(steps, list):
            raise UserError(f"{path} is not a macpo run state (expected an object with a list of steps); {fix}")
        for i, step in enumerate(steps):
            if not (isinstance(step, dict) and isinstance(step.get("name"), str)):
                raise UserError(f"{path}: step {i} has no name; {fix}")
        return steps

    def key_of(self, name: str) -> str | None:
        for s in self.data["steps"]:
            if s["name"] == name and s.get("status") == "done":
                return s.get("key")
        return None

    def record(self, steps: list[Step], keys: dict[str, str], done: dict[str, float]) -> None:
        self.data["steps"] = [
            {"name": s.name, "key": keys[s.name], "status": "done" if s.name in done else "pending", "seconds": done.get(s.name)}
            for s in steps
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def step_keys(cfg: RunConfig, steps: list[Step]) -> dict[str, str]:
    """Input hash of each step: its command, the config sections it reads, and its deps' keys."""
    base = cfg.to_dict()
    # executor/ray say where build shards run, not what they compute (same round content hash), so
    # moving a run onto a Ray cluster redoes no step.
    shared = {k: v for k, v in base.items() if k not in {"train", "eval", "out", "executor", "ray"}}
    keys: dict[str, str] = {}
    for s in steps:
        argv = [a for a in s.argv if a != sys.executable]
        sections = {k: _dotted(base, k) for k in s.config_sections}
        if s.name != "report" and isinstance(sections.get("eval"), dict):
            # Only the report asks the LLM judge: adding or changing eval.judge must not redo generation.
            sections["eval"] = {k: v for k, v in sections["eval"].items() if k != "judge"}
        keys[s.name] = json_hash({"step": s.name, "argv": argv, "shared": shared, "sections": sections,
                                  "deps": [keys[d] for d in s.deps]})
    return keys


def _dotted(data: dict, path: str):
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def execute(cfg: RunConfig, config_path: Path, *, verbose: bool = False) -> None:
    layout = RunLayout(cfg)
    steps = plan(cfg, config_path)
    keys = step_keys(cfg, steps)
    layout.store_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(layout.store_dir / "run-state.json", cfg)
    done: dict[str, float] = {}
    width = len(str(len(steps)))
    t_run = time.time()
    for i, step in enumerate(steps, 1):
        label = f"[{i:>{width}}/{len(steps)}] {step.name}"
        if state.key_of(step.name) == keys[step.name] and step.done():
            done[step.name] = 0.0
            print(f"{label}: up to date", flush=True)
            continue
        for path in step.clears:
            shutil.rmtree(path, ignore_errors=True)
        print(f"{label} ...", end="" if not verbose else "\n", flush=True)
        t0 = time.time()
        _run_subprocess(step, layout.log_path(_slug(step.name)), verbose, cfg.threads)
        done[step.name] = round(time.time() - t0, 2)
        print(f" done in {done[step.name]:.1f}s" if not verbose else f"{label}: done in {done[step.name]:.1f}s", flush=True)
        state.record(steps, keys, done)
    state.record(steps, keys, done)
    print(f"run {cfg.name} complete in {time.time() - t_run:.0f}s; output in {layout.out}", flush=True)


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


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


def _run_subprocess(step: Step, log: Path, verbose: bool, threads: int = 0) -> None:
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


# ---- config resolution ------------------------------------------------------------------------
def resolve_config(cfg: RunConfig) -> RunConfig:
    """Replace ``sandbox:<name>`` models by their cached folders (computed, not trained, here)."""
    import dataclasses

    sandbox = [a for a in [cfg.student, *cfg.teachers] if a.model.startswith("sandbox:")]
    if not sandbox:
        return cfg
    from macpo.eval import sandbox

    def fix(spec):
        if not spec.model.startswith("sandbox:"):
            return spec
        return dataclasses.replace(spec, model=str(sandbox.model_dir(cfg.world, spec.model.split(":", 1)[1])))

    return dataclasses.replace(cfg, student=fix(cfg.student), teachers=[fix(t) for t in cfg.teachers])


def prepare_run(config_path: str | None, overrides: dict[str, str], base: dict | None = None) -> tuple[RunConfig, Path]:
    return write_run(load_run(config_path, overrides, base))


def load_run(config_path: str | None, overrides: dict[str, str], base: dict | None = None) -> RunConfig:
    """The validated, resolved config of a run; refuses an `out` holding someone else's files."""
    from macpo import config as config_mod

    cfg = resolve_config(config_mod.load(config_path, overrides, base=base))
    # run.yaml: run folders written before the marker existed.
    check_owned(cfg.out, ("run",), "run folder (out)", legacy=("run.yaml",), ignore=(RUN_LOCK,))
    return cfg


def write_run(cfg: RunConfig) -> tuple[RunConfig, Path]:
    """Create the run folder and its run.yaml (checking an earlier run's state first)."""
    from macpo import config as config_mod

    out = Path(cfg.out)
    RunState(RunLayout(cfg).store_dir / "run-state.json", cfg)  # a damaged state: one line before any write
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "run")
    resolved = out / "run.yaml"
    config_mod.dump(cfg, resolved)
    return cfg, resolved


def demo_config_path() -> Path:
    return Path(str(resources.files("macpo.eval") / "configs" / "demo.yaml"))


def summarize(cfg: RunConfig) -> str:
    """What a user must see whatever it is: the premise gates (sandbox), every agent's round-0
    and final scores, and the headline numbers, from gates.json and the report's metrics.json."""
    path = Path(cfg.out) / "metrics.json"
    if not path.is_file():
        return ""
    m = json.loads(path.read_text())
    lines = [f"report: {Path(cfg.out) / 'report.md'}"]
    gates_path = Path(cfg.out) / "gates.json"
    if gates_path.is_file():
        from macpo.eval.sandbox.gates import render

        try:
            lines.append(render(json.loads(gates_path.read_text())["gates"]))
        except (ValueError, KeyError, TypeError):
            lines.append(f"premise gates: {gates_path} is unreadable")
    rows = [r for r in m.get("rows") or [] if isinstance(r, dict) and not str(r.get("agent", "")).startswith("gate:")]
    final = max((r.get("round", 0) for r in rows), default=0)
    cols = [c for c in ("combined", "helpful", "harmless", "protocol_rate", "content_accuracy", "refusal_rate",
                        "over_refusal_rate", "reward") if any(r.get(c) is not None for r in rows)]
    if rows and cols:
        lines.append(f"  {'round':>5}  {'agent':<20}" + "".join(f"{c.replace('_rate', '').replace('_accuracy', ''):>13}" for c in cols))
        for r in sorted((r for r in rows if r.get("round") in (0, final)), key=lambda r: (r.get("round"), r.get("agent"))):
            cells = "".join(f"{r[c]:>13.3f}" if isinstance(r.get(c), (int, float)) else f"{'-':>13}" for c in cols)
            lines.append(f"  {r.get('round'):>5}  {str(r.get('agent')):<20}{cells}")
    # The sandbox scores with its gold reward (a `combined` axis); real runs with reward models.
    what = "gold reward" if any(r.get("combined") is not None for r in rows) else "reward (mean of the reward-model axes)"
    from macpo.config import round0_start

    for key, label in (("student_round0", f"student {what}, round 0 ({round0_start(cfg.method)})"),
                       ("student_final", f"student {what}, after round {cfg.T}"),
                       ("best_teacher", f"best teacher {what}")):
        if key in m and m[key] is not None:
            lines.append(f"  {label}: {m[key]:.3f}")
    return "\n".join(lines)


def _demo(args) -> int:
    """Both axes of the sandbox, as the paper runs HH-Helpful and HH-Harmless: one run each
    (OUT/<axis>) on one set of pretrained models, then a side-by-side summary (OUT/summary.md).

    The models are pretrained first, here (progress bars); then the axes' runs go side by side as
    ``macpo run`` processes when the machine has a core per run (each stage keeps the config's
    threads), their step lines prefixed with the axis."""
    from macpo import config as config_mod

    axes = list(dict.fromkeys(args.axis or ["helpful", "harmless"]))
    base = parse_kv(args.set)
    runs = []
    for axis in axes:
        overrides = {**base, "out": str(Path(args.out) / axis), "world.axis": axis, "name": f"macpo-demo-{axis}"}
        # Checked here, before anything runs; each axis's `macpo run` writes its own folder.
        runs.append((axis, config_mod.load(str(demo_config_path()), overrides), overrides))
    from macpo.eval import sandbox

    cfg0 = runs[0][1]
    print(f"macpo demo: {', '.join(axes)} axes (K={cfg0.K}, T={cfg0.T}) -> {args.out}; pretraining the sandbox models "
          "(cached after the first run)", flush=True)
    sandbox.prepare_models(cfg0.world)
    parallel = len(runs) > 1 and (os.cpu_count() or 1) >= len(runs) * max(cfg0.threads, 1)
    procs = []
    lock = threading.Lock()

    def relay(axis: str, stream) -> None:
        for line in stream:
            with lock:
                sys.stdout.write(f"[{axis}] {line}")
                sys.stdout.flush()

    def start(axis: str, overrides: dict):
        argv = [*CLI, "run", str(demo_config_path()), *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]]
        if args.verbose:
            argv.append("--verbose")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t = threading.Thread(target=relay, args=(axis, proc.stdout), daemon=True)
        t.start()
        return proc, t

    try:
        if parallel:
            procs = [(axis, *start(axis, ov)) for axis, _, ov in runs]
        for i, (axis, _, ov) in enumerate(runs):
            if not parallel:
                procs.append((axis, *start(axis, ov)))
            _, proc, t = procs[i]
            proc.wait()
            t.join()
    except KeyboardInterrupt:
        for _, proc, _t in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc, _t in procs:
            proc.wait()
        raise
    failed = [(axis, proc.returncode) for axis, proc, _ in procs if proc.returncode != 0]
    if failed:
        code = 2 if all(c == 2 for _, c in failed) else 1
        msg = "; ".join(f"the {axis} run exited {c}" for axis, c in failed)
        if code == 2:
            raise UserError(f"macpo demo: {msg}")
        print(f"macpo demo: {msg} (see its lines above and its logs under {args.out})", file=sys.stderr)
        return code
    text = side_by_side([(axis, cfg) for axis, cfg, _ in runs])
    (Path(args.out) / "summary.md").write_text(text)
    print(text, end="")
    return 0


def side_by_side(runs: list[tuple[str, RunConfig]]) -> str:
    """The axes' headline numbers and gates in one table (from each run's metrics.json / gates.json)."""
    keys = [("student_round0", "student, round 0 (naive weak-to-strong)"), ("student_final", "student, final round"),
            ("best_teacher_round0", "best teacher, round 0"), ("best_teacher", "best teacher, final round"),
            ("ceiling", "gold ceiling"), ("pgr_round0", "PGR, round 0"), ("pgr_final", "PGR, final round")]
    data = {}
    for axis, cfg in runs:
        try:
            data[axis] = json.loads((Path(cfg.out) / "metrics.json").read_text())
        except (OSError, ValueError):
            data[axis] = {}
    axes = [a for a, _ in runs]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"  # noqa: E731
    split = runs[0][1].eval.split if runs else "test"
    lines = [f"# macpo demo: both axes (each axis's headline gold reward on its {split} split: helpfulness on "
             "the helpful axis, harmlessness on the harmless axis)", "",
             "| | " + " | ".join(axes) + " |", "|---|" + "---|" * len(axes)]
    for key, label in keys:
        lines.append(f"| {label} | " + " | ".join(fmt(data[a].get(key)) for a in axes) + " |")
    failed = {a: data[a].get("gates_failed") for a in axes}
    lines.append("| premise gates | " + " | ".join(
        "–" if failed[a] is None else ("all pass" if not failed[a] else "FAILED: " + ", ".join(failed[a])) for a in axes) + " |")
    lines += ["", "Reports: " + ", ".join(f"`{Path(cfg.out) / 'report.md'}`" for _, cfg in runs), ""]
    return "\n".join(lines)


def main(argv: list[str], command: str = "run") -> int:
    if command == "demo":
        p = make_parser("demo", "Run the full MACPO loop (K=3 teachers, T=3 rounds) on the built-in gold-reward sandbox, on CPU,\n"
                        "on both of its axes (helpful, harmless; OUT/<axis>, side by side in OUT/summary.md).\n"
                        "A cold run (pretraining the sandbox models) takes a few minutes; later runs reuse the cache.")
        p.add_argument("--out", default="macpo-demo", help="output folder (default: ./macpo-demo)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
        p.add_argument("--verbose", action="store_true", help="stream every stage's output")
        p.add_argument("--axis", choices=["helpful", "harmless"], action="append",
                       help="run only this axis (repeatable; default: both, in OUT/helpful and OUT/harmless)")
        args = p.parse_args(argv)
        return _demo(args)
    else:
        p = make_parser("run", __doc__)
        p.add_argument("config", help="run config YAML")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (dotted path), e.g. --set T=2")
        p.add_argument("--out", help="output folder (overrides the config's `out`)")
        p.add_argument("--verbose", action="store_true", help="stream every stage's output")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved config, every field with its help text, and exit (runs nothing)")
        args = p.parse_args(argv)
        overrides = parse_kv(args.set)
        if args.out:
            overrides["out"] = args.out
        config_path = args.config
        if args.print_config:
            from macpo import config as config_mod

            print(config_mod.describe(config_mod.load(config_path, overrides)), end="")
            return 0
    cfg = load_run(config_path, overrides)
    with hold_run_folder(Path(cfg.out)):
        cfg, resolved = write_run(cfg)
        print(f"macpo {command}: {cfg.name} ({cfg.method}, K={cfg.K}, T={cfg.T}) -> {cfg.out}", flush=True)
        execute(cfg, resolved, verbose=args.verbose)
    summary = summarize(cfg)
    if summary:
        print(summary)
    return 0

"""``macpo study CONFIG --seeds N [--variants ...] --out DIR``: the paper's comparison, with seeds.

Every (variant, seed) is an ordinary run (``DIR/runs/<variant>/seed-<s>``, each with its own
report). Steps whose inputs are identical across runs run once: a shared, content-addressed step
cache (``DIR/step-cache/<key>``) holds each finished step's outputs (store versions, model
folders), keyed by

- the step's command with the run's own folder replaced by a placeholder (a trainer job's
  command is its whole TrainConfig, so it says everything the trainer reads);
- for steps that read the run config (``--config``), the config without ``out`` and ``T`` and, for
  round-0 steps, without the fields only rounds >= 1 read (``ROUND_ONLY``);
- the *content* hashes of its dependencies' outputs (store content hashes, model file hashes),
  not their keys: two variants whose round-0 builds differ in config but not in output share
  everything downstream.

A hit copies (hard-links) the outputs into the run; a miss runs the step and files its
outputs. A step that declares no outputs is never shared. Restored store versions keep the
manifest of the run that produced them (its config and model paths): the data is identical,
the provenance names the first producer.

Then ``study.md`` (one line per variant: the final student's gold scores, mean over seeds with
a bootstrap 95% interval over seeds and test prompts, PGR, and the paired difference against
naive weak-to-strong), ``study.csv`` (variant, seed, round, agent: helpful, harmless,
combined, pgr) and PNG plots.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from macpo.cliutil import make_parser, parse_kv
from macpo.errors import UserError
from macpo.hashing import file_sha256, json_hash


@dataclass(frozen=True)
class Variant:
    name: str
    help: str
    overrides: dict = field(default_factory=dict)
    # The agent whose scores are the variant's result, and at which round (None = the run's last).
    agent: str = "student"
    round: int | None = None


# The two student initialisations the issue compares: the paper's 3 epochs of SFT on the weak labels,
# and an early stop. EARLY_STOP_STEPS was chosen on the demo world's val split among budgets shorter
# than the paper's 48 steps (1000 labels, batch 64, 3 epochs), naive student's combined score:
# 8 steps 0.250 (no end of turn yet), 16 steps 0.347, 32 steps 0.383 (48 steps: 0.577). None of the
# shorter budgets teaches the refusal policy (refusal rate 0), so in this world early stopping
# costs more than the copying of teacher errors it avoids. A config may already be one of them;
# the step cache then makes the duplicate variant free.
EARLY_STOP_STEPS = 32
_3EP = {"train": {"student_sft": {"max_steps": -1, "epochs": 3}}}
_EARLY = {"train": {"student_sft": {"max_steps": EARLY_STOP_STEPS}}}
# SPAC's pessimism weight, chosen on the demo world's val split (eval.split=val, seed 0, T=3) over the
# sweep {0.1, 0.5, 1} (theory gives no value for this scale): final student combined 0.264 / 0.297 /
# 0.257 at alpha 0.1 / 0.5 / 1.
_SELF_PLAY_ALPHA = 0.5

VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("naive-w2s", "naive weak-to-strong: SFT on the weak labels with the config's budget (train.student_sft; "
            "MACPO's round-0 student, run with T=0): the baseline of every difference", {"T": 0}, round=0),
    Variant("naive-w2s-early", f"naive weak-to-strong, early-stopped ({EARLY_STOP_STEPS} SFT steps)", {"T": 0, **_EARLY}, round=0),
    Variant("naive-w2s-3ep", "naive weak-to-strong at 3 epochs (the paper's student initialisation)", {"T": 0, **_3EP}, round=0),
    Variant("macpo", "MACPO as configured"),
    Variant("macpo-early", f"MACPO from the early-stopped student ({EARLY_STOP_STEPS} SFT steps)", _EARLY),
    Variant("macpo-3ep", "MACPO from the 3-epoch student (the paper's procedure)", _3EP),
    Variant("no-mp", "-MP: the student's chosen is its own sample (no mutual positives)", {"mutual_positive": False}),
    Variant("no-hn", "-HN (paper): no negatives, every learner trains SFT/NLL on its positives", {"negative": "none"}),
    Variant("self-neg", "own-sample negative: rejected = the learner's second plain sample (SPIN-like, not -HN)",
            {"negative": "self"}),
    Variant("no-iw", "-IW: teachers are not updated", {"update_teachers": False}),
    Variant("ref-previous", "MACPO with the DPO reference = each agent's start-of-round policy (standard DPO) instead "
            "of its pretrained base (what the paper's released code does)", {"train": {"dpo": {"ref": "previous"}}}),
    Variant("k1", "K=1 weak teacher", {"K": 1}),
    Variant("k2", "K=2 weak teachers", {"K": 2}),
    Variant("k3", "K=3 weak teachers", {"K": 3}),
    Variant("oracle-chosen", "the student's chosen = the gold-best teacher candidate (upper bound on the filter)",
            {"chosen_rule": "oracle"}),
    Variant("random-chosen", "the student's chosen = a random teacher's candidate (what the filter adds over chance)",
            {"chosen_rule": "random"}),
    Variant("spin", "SPIN on the offline D_w pairs (student only)", {"method": "spin"}),
    Variant("spac", f"SPAC (alpha {_SELF_PLAY_ALPHA}) on the offline D_w pairs (student only)",
            {"method": "spac", "train": {"dpo": {"alpha": _SELF_PLAY_ALPHA}}}),
    Variant("dpo", "plain iterated DPO on the offline D_w pairs (student only)", {"method": "dpo"}),
    Variant("pretrained", "the pretrained student before any alignment (the run's pretrained-student agent)",
            {"T": 0}, agent="pretrained", round=0),
    Variant("gold-ceiling", "the student SFT'd on gold responses with the naive budget (the run's ceiling agent)",
            {"T": 0}, agent="ceiling", round=0),
]}
# DPO learning rates to choose train.dpo.lr on val (issue 21): not in the default matrix.
LR_VARIANTS = {f"dpo-lr-{lr:.0e}".replace("e-0", "e-"): lr for lr in (1e-4, 3e-4, 1e-3)}
VARIANTS.update({name: Variant(name, f"MACPO with DPO lr {lr:g} (for choosing train.dpo.lr on val)",
                               {"train": {"dpo": {"lr": lr}}}) for name, lr in LR_VARIANTS.items()})
BASELINE = "naive-w2s"
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in LR_VARIANTS]
# Run-config fields that no round-0 step reads (they steer rounds >= 1): left out of round-0 keys.
ROUND_ONLY = ("T", "mutual_positive", "update_teachers", "chosen_rule", "store_ref_logps")
ROUND_ONLY_TRAIN = ("dpo",)
# Model-folder files that name the run's paths or timings, not the model.
_RUN_SPECIFIC = {"metrics.json", "train_config.json", "README.md"}


# ---- the shared step cache -----------------------------------------------------------------------
class StepCache:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        return self.root / key.split(":", 1)[-1][:32]

    def has(self, key: str) -> bool:
        return (self.entry(key) / "complete.json").is_file()

    @contextmanager
    def claim(self, key: str):
        """Hold the key while producing it: a parallel run that needs the same step waits here, then
        finds it filed, instead of computing it twice (flock: released if the holder dies)."""
        with open(self.entry(key).with_name(self.entry(key).name + ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def restore(self, key: str, run_out: Path, outputs: list[Path]) -> None:
        entry = self.entry(key)
        for out in outputs:
            _remove(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            _link_tree(entry / "files" / out.relative_to(run_out), out)

    def save(self, key: str, run_out: Path, outputs: list[Path], info: dict) -> None:
        entry = self.entry(key)
        tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
        _remove(tmp)
        for out in outputs:
            _link_tree(out, tmp / "files" / out.relative_to(run_out))
        (tmp / "complete.json").write_text(json.dumps(info, indent=1, default=str))
        _remove(entry)
        os.replace(tmp, entry)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder as hard links (the store's files are immutable, trained models are replaced
    by a new folder, never edited), falling back to copies across file systems."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=link)


def output_hash(outputs: list[Path]) -> str:
    """Content of a step's outputs: a store version's content hash, or a model folder's files."""
    parts = []
    for out in outputs:
        manifest = out / "manifest.json"
        if manifest.is_file():
            parts.append(("store", out.name, json.loads(manifest.read_text())["content_hash"]))
            continue
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in _RUN_SPECIFIC)
        parts.append(("files", out.name, [(str(p.relative_to(out)), file_sha256(p)) for p in files]))
    return json_hash(parts)


def _is_round0(name: str) -> bool:
    return name == "prepare" or name.endswith("round-0") or "round-0-" in name


def config_view(cfg_dict: dict, step_name: str, argv: list[str]) -> dict | None:
    """What of the run config a step's key covers (None: the step does not read the config)."""
    if "--config" not in argv:
        return None
    # T only sets how many rounds the plan has (a step checks its --round against it, nothing more),
    # so a T=1 study's rounds are shared with a T=3 study's first round.
    view = {k: v for k, v in cfg_dict.items() if k not in ("out", "T")}
    if _is_round0(step_name):
        view = {k: v for k, v in view.items() if k not in ROUND_ONLY}
        view["train"] = {k: v for k, v in view.get("train", {}).items() if k not in ROUND_ONLY_TRAIN}
        # Round 0 reads `negative` only to draw a second sample per prompt under "self".
        if view.get("negative") != "self":
            view.pop("negative", None)
    return view


def study_key(step, run_out: Path, cfg_dict: dict, dep_hashes: list[str]) -> str:
    run = str(run_out)
    argv = [a.replace(run, "$RUN") for a in step.argv if a != sys.executable]
    return json_hash({"step": step.name, "argv": argv, "config": config_view(cfg_dict, step.name, step.argv),
                      "threads": cfg_dict.get("threads"), "deps": dep_hashes})


@dataclass
class Tally:
    ran: int = 0
    shared: int = 0
    up_to_date: int = 0
    naive: int = 0
    seconds_ran: float = 0.0

    def add(self, **counts) -> None:
        with _TALLY_LOCK:  # runs execute on several threads (--jobs)
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)


_TALLY_LOCK = threading.Lock()


class _Stopped(Exception):
    """A run left between two steps because another run of the study failed."""


def _say(line: str) -> None:
    # One write per line: print() writes the text and its newline separately, which two runs' threads interleave.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def execute_shared(cfg, config_path: Path, cache: StepCache, tally: Tally, *, label: str, verbose: bool = False,
                   stop: threading.Event | None = None) -> None:
    """``orchestrate.execute`` with the shared step cache (same steps, same run-state.json)."""
    from macpo import orchestrate
    from macpo.layout import RunLayout

    layout = RunLayout(cfg)
    run_out = layout.out.resolve()
    steps = orchestrate.plan(cfg, config_path)
    keys = orchestrate.step_keys(cfg, steps)
    layout.store_dir.mkdir(parents=True, exist_ok=True)
    state = orchestrate.RunState(layout.store_dir / "run-state.json", cfg)
    cfg_dict = cfg.to_dict()
    done: dict[str, float] = {}
    hashes: dict[str, str] = {}
    tally.add(naive=len(steps))
    # Up to date = recorded done with the same key, and no earlier step redone (as `macpo run` resumes).
    recorded = {s.name for s in steps if state.key_of(s.name) == keys[s.name]}
    fresh = True
    for step in steps:
        if stop is not None and stop.is_set():
            raise _Stopped()  # another run of the study failed: leave this one resumable
        outputs = [Path(o).resolve() for o in step.outputs]
        key = study_key(step, run_out, cfg_dict, [hashes[d] for d in step.deps])
        fresh = fresh and step.name in recorded and step.done()
        if fresh:
            status = "up to date"
            tally.add(up_to_date=1)
        elif outputs:
            with cache.claim(key):
                status = _restore_or_run(step, key, cache, layout, run_out, outputs, tally, verbose, cfg.threads)
        else:
            status = _restore_or_run(step, key, None, layout, run_out, outputs, tally, verbose, cfg.threads)
        hashes[step.name] = output_hash(outputs) if outputs and all(o.exists() for o in outputs) else key
        done[step.name] = 0.0
        state.record(steps, keys, done)
        _say(f"  [{label}] {step.name}: {status}")


def _restore_or_run(step, key, cache, layout, run_out, outputs, tally, verbose, threads) -> str:
    from macpo import orchestrate

    for path in step.clears:
        shutil.rmtree(path, ignore_errors=True)
    if cache is not None and cache.has(key):
        cache.restore(key, run_out, outputs)
        tally.add(shared=1)
        return "shared"
    t0 = time.time()
    orchestrate._run_subprocess(step, layout.log_path(orchestrate._slug(step.name)), verbose, threads)
    seconds = time.time() - t0
    tally.add(ran=1, seconds_ran=seconds)
    if cache is not None and all(o.exists() for o in outputs):
        cache.save(key, run_out, outputs, {"step": step.name, "producer": str(run_out), "seconds": round(seconds, 2)})
    return f"ran in {seconds:.1f}s"


# ---- reading the runs --------------------------------------------------------------------------------
@dataclass
class RunResult:
    variant: str
    seed: int
    out: Path
    rows: list[dict]  # report rows: round, agent, helpful, harmless, combined, ...
    responses: dict[tuple[int, str], dict[str, str]]  # (round, agent) -> prompt_id -> response text
    weak: str = "teacher-0"  # the weak-label teacher


def read_run(variant: str, seed: int, cfg) -> RunResult:
    from macpo.eval.report import collect
    from macpo.layout import RunLayout
    from macpo.store import Store

    rows, _, _ = collect(cfg)
    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    responses: dict[tuple[int, str], dict[str, str]] = {}
    for version in store.versions(layout.evals_dataset):
        table = store.read(layout.evals_dataset, version, "default")
        for r, a, pid, resp in zip(*(table.column(c).to_pylist() for c in ("round", "agent", "prompt_id", "response"))):
            responses.setdefault((r, a), {})[pid] = resp[-1]["content"] if resp else ""
    return RunResult(variant, seed, layout.out, rows, responses, weak=f"teacher-{cfg.weak_label_teacher}")


def result_cell(v: Variant, run: RunResult) -> tuple[int, str] | None:
    """(round, agent) of a variant's result in one run: the named agent at its round (or the last)."""
    agents = {a for (_, a) in run.responses}
    agent = v.agent if v.agent in agents else next((a for a in sorted(agents) if v.agent in a), None)
    if agent is None:
        return None
    rounds = sorted(r for (r, a) in run.responses if a == agent)
    round_ = v.round if v.round is not None else rounds[-1]
    return (round_, agent) if (round_, agent) in run.responses else None


# ---- the study ------------------------------------------------------------------------------------------
def plan_runs(config: str, overrides: dict[str, str], variants: list[str], seeds: list[int], out: Path,
              vary_world: bool = True) -> list[tuple[str, int, dict]]:
    """(variant, seed, run-config mapping) for every run; the baseline always runs.

    With ``vary_world`` (the default) a seed also sets the world's seed (which prompts and pairs
    are drawn) and its pretraining seed (the pretrained models), so the study's intervals include
    world variance; without it, every seed runs on the config's one world."""
    from macpo import config as config_mod

    p = Path(config)
    base = config_mod.apply_overrides(config_mod.read_yaml(p), overrides)
    models = [str(base.get("student") or ""), *map(str, base.get("teachers") or [])]
    if not base.get("world") and not any("sandbox:" in m for m in models):
        # The study's intervals and differences are over per-prompt gold scores.
        raise UserError(f"{p}: macpo study needs the built-in sandbox's gold reward (a `world` section); "
                        "for real data run the variants with macpo run and compare their reports")
    name = str(base.get("name") or "study")
    runs = []
    # Seed-major: a study stopped part-way has whole seeds, and `--seeds` of those resumes into a table.
    for seed in seeds:
        for v in variants:
            data = config_mod._deep_merge(base, VARIANTS[v].overrides)
            # One dataset name for every run, so a shared store version fits any run's store.
            data.update(seed=seed, name=name, out=str((out / "runs" / v / f"seed-{seed}").resolve()))
            if vary_world and isinstance(data.get("world"), dict):
                world = data["world"] = dict(data["world"])
                world["pretrain"] = {**(world.get("pretrain") or {}), "seed": seed}
                world["seed"] = seed
            config_mod.from_dict(json.loads(json.dumps(data)))  # validate every run before running any
            runs.append((v, seed, data))
    return runs


def run_study(config: str, overrides: dict[str, str], variants: list[str], seeds: list[int], out: Path, *,
              n_boot: int = 1000, verbose: bool = False, jobs: int | None = None, vary_world: bool = True) -> Path:
    from macpo import orchestrate

    from macpo import config as config_mod
    from macpo.cliutil import check_out_apart, check_out_path, check_owned, write_marker

    check_out_path(out)
    check_owned(out, ("study",), legacy=("step-cache",))  # step-cache: studies from before the marker
    runs = plan_runs(config, overrides, variants, seeds, out, vary_world)  # validates every run before writing anything
    check_out_apart(out, config_mod.reads_of(config_mod.from_dict(json.loads(json.dumps(runs[0][2])))))
    if jobs is None:  # as many runs as the usable CPUs hold steps of `threads` threads (0 = torch takes them all)
        threads = int(runs[0][2].get("threads", 1)) if runs else 1
        jobs = max(1, len(os.sched_getaffinity(0)) // threads) if threads > 0 else 1
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "study")
    cache = StepCache(out / "step-cache")
    tally = Tally()
    stop = threading.Event()
    failures: list[BaseException] = []  # the first is the cause; later ones are runs stopped because of it
    t0 = time.time()

    def one(i: int, v: str, seed: int, data: dict):
        _say(f"[{i}/{len(runs)}] {v} seed {seed}")
        cfg, resolved = orchestrate.prepare_run(None, {}, base=data)
        try:
            execute_shared(cfg, resolved, cache, tally, label=f"{v} s{seed}", verbose=verbose, stop=stop)
        except _Stopped:
            raise
        except BaseException as e:
            failures.append(e)  # list.append is atomic; the first one is the cause
            stop.set()
            raise
        return v, seed, cfg

    # Each step runs on `threads` torch threads (1 for the sandbox): with --jobs 2 two runs' steps use
    # both cores. A step two runs need waits on the first producer (StepCache.claim), never runs twice.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, i, v, seed, data) for i, (v, seed, data) in enumerate(runs, 1)]
        try:
            results = [f.result() for f in futures]
        except BaseException as e:
            stop.set()
            for f in futures:
                f.cancel()
            # Ctrl-C: the stages run in their own process groups (out of the terminal's reach); stop them
            # here, or leaving `with` would wait for every running step to finish.
            cause = e if isinstance(e, KeyboardInterrupt) else (failures[0] if failures else e)
            if isinstance(e, KeyboardInterrupt):
                orchestrate.stop_stages()
            raise cause from None  # leaving `with` waits for the running runs
    wall = time.time() - t0
    read = [read_run(v, seed, cfg) for v, seed, cfg in results]
    seed_cfgs = {seed: cfg for v, seed, cfg in results if v == variants[0]} if vary_world else None
    return write_study(out, read, variants, seeds, tally, wall, n_boot=n_boot, data_cfg=results[0][2],
                       setup={"config": config, "overrides": overrides, "jobs": jobs}, seed_cfgs=seed_cfgs)


def _gold_inputs(cfg):
    """(gold module, test prompt ids, their metas, task per prompt) of the study's world."""
    from macpo.eval.report import gold_module
    from macpo.layout import RunLayout
    from macpo.store import Store

    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    module = gold_module(store, layout.data_dataset)
    name, version = store.resolve(layout.data_dataset)
    test = store.read(name, version, cfg.eval.split)
    ids, metas = test.column("prompt_id").to_pylist(), test.column("meta").to_pylist()
    tasks = [json.loads(m).get("task", "") if isinstance(m, str) else m.get("task", "") for m in metas]
    return module, ids, metas, tasks


def summarize_variants(read: list[RunResult], variants: list[str], seeds: list[int], gold, *, n_boot: int = 1000) -> list[dict]:
    """Per variant: mean over seeds and bootstrap 95% intervals of helpful/harmless/combined of its
    result cell, PGR, and the paired difference in combined against the baseline (same draws)."""
    from macpo.eval import stats

    # gold: one (module, ids, metas, tasks) for a fixed world, or {seed: ...} when the world varies
    golds = gold if isinstance(gold, dict) else {s: gold for s in seeds}
    module = golds[seeds[0]][0]
    by = {(r.variant, r.seed): r for r in read}
    if all(golds[s][1] == golds[seeds[0]][1] for s in seeds):  # one test set: prompts crossed with seeds
        draws = stats.draws(len(seeds), len(golds[seeds[0]][1]), n_boot=n_boot, rng_seed=0, strata=golds[seeds[0]][3])
    else:  # a world per seed: prompts nested in seeds, resampled within each seed's test set
        draws = stats.nested_draws([golds[s][3] for s in seeds], n_boot=n_boot, rng_seed=0)
    cache: dict[tuple, dict] = {}

    def scores(variant: str, seed_index: int, idx) -> dict | None:
        run = by.get((variant, seeds[seed_index]))
        cell = result_cell(VARIANTS[variant], run) if run else None
        if cell is None:
            return None
        _, ids, metas, _ = golds[seeds[seed_index]]
        resp = run.responses[cell]
        key = (variant, seed_index, None if idx is None else idx.tobytes())
        if key not in cache:
            pick = range(len(ids)) if idx is None else idx
            if any(ids[j] not in resp for j in pick):
                return None
            cache[key] = module.aggregate([metas[j] for j in pick], [resp[ids[j]] for j in pick])
        return cache[key]

    def reps(variant: str, metric: str):
        return stats.replicate(lambda s, idx: (scores(variant, s, idx) or {}).get(metric), draws)

    def point(variant: str, metric: str):
        vals = [(scores(variant, s, None) or {}).get(metric) for s in range(len(seeds))]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    out = []
    base_reps = reps(BASELINE, "combined") if BASELINE in variants else None
    for v in variants:
        row = {"variant": v, "help": VARIANTS[v].help, "seeds": sum((v, s) in by for s in seeds)}
        for metric in ("helpful", "harmless", "combined"):
            r = reps(v, metric)
            row[metric] = stats.interval(point(v, metric), r)
            if metric == "combined":
                comb_reps = r
        row["diff_vs_baseline"] = (stats.paired_difference(point(v, "combined"), point(BASELINE, "combined"), comb_reps, base_reps)
                                   if base_reps is not None and v != BASELINE else stats.Interval(None, None, None))
        pgrs = [x["pgr"] for s in seeds if (v, s) in by for x in [_cell_row(by[(v, s)], v)] if x and x.get("pgr") is not None]
        row["pgr"] = sum(pgrs) / len(pgrs) if pgrs else None
        cells = [result_cell(VARIANTS[v], by[(v, s)]) for s in seeds if (v, s) in by]
        row["round"] = cells[0][0] if cells and cells[0] else None
        out.append(row)
    return out


def _cell_row(run: RunResult, variant: str) -> dict | None:
    cell = result_cell(VARIANTS[variant], run)
    return next((r for r in run.rows if cell and (r["round"], r["agent"]) == cell), None)


def study_rows(read: list[RunResult], baseline_by_seed: dict[int, RunResult]) -> list[dict]:
    """study.csv: one row per (variant, seed, round, agent), PGR against the seed's baseline run's
    weak-label teacher and ceiling when the run itself evaluated neither (self-play runs)."""
    from macpo.eval.report import ceiling_agent
    from macpo.eval.stats import pgr

    rows = []
    for run in read:
        ref = baseline_by_seed.get(run.seed, run)
        pick = lambda rs, agent: next((r.get("combined") for r in rs if r["round"] == 0 and r["agent"] == agent), None)  # noqa: E731
        weak = pick(run.rows, run.weak) if pick(run.rows, run.weak) is not None else pick(ref.rows, ref.weak)
        ceil_name = ceiling_agent(run.rows) or ceiling_agent(ref.rows)
        ceiling = (pick(run.rows, ceil_name) if ceil_name and pick(run.rows, ceil_name) is not None
                   else pick(ref.rows, ceil_name) if ceil_name else None)
        for r in sorted(run.rows, key=lambda r: (r["round"], r["agent"] != "student", r["agent"])):
            rows.append({"variant": run.variant, "seed": run.seed, "round": r["round"], "agent": r["agent"],
                         "helpful": r.get("helpful"), "harmless": r.get("harmless"), "combined": r.get("combined"),
                         "pgr": pgr(r.get("combined"), weak, ceiling) if r["agent"] == "student" else None})
    return rows


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def write_study(out: Path, read: list[RunResult], variants: list[str], seeds: list[int], tally: Tally, wall: float,
                *, n_boot: int, data_cfg, setup: dict | None = None, seed_cfgs: dict | None = None) -> Path:
    """``seed_cfgs``: {seed: a run config of that seed} when the world varies with the seed."""
    gold = {s: _gold_inputs(c) for s, c in seed_cfgs.items()} if seed_cfgs else _gold_inputs(data_cfg)
    n_test = len((next(iter(gold.values())) if isinstance(gold, dict) else gold)[1])
    baseline = {r.seed: r for r in read if r.variant == BASELINE}
    rows = study_rows(read, baseline)
    with open(out / "study.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["variant", "seed", "round", "agent", "helpful", "harmless", "combined", "pgr"])
        w.writeheader()
        w.writerows(rows)
    summary = summarize_variants(read, variants, seeds, gold, n_boot=n_boot)
    gates = _gates(read)
    pngs = plot_study(out, summary, rows, variants)
    lines = [f"# Study: {len(variants)} variants x {len(seeds)} seed(s)", ""]
    failed = failed_gates(gates)
    if failed:
        lines += [f"> **PREMISE GATES FAILED in some run: {', '.join(failed)}.** The comparison below does not test "
                  "weak-to-strong alignment where a premise fails; see each run's report.md.", ""]
    elif gates:
        lines += [f"Premise gates: all pass in the {len(gates)} run(s) that computed them.", ""]
    else:
        lines += ["Premise gates: no run wrote gates.json.", ""]
    if setup:
        sets = " ".join(f"`{k}={v}`" for k, v in setup["overrides"].items()) or "none"
        lines += [f"- base config: `{setup['config']}`; overrides: {sets}; {setup['jobs']} run(s) at a time"]
    lines += [
        f"- seeds: {', '.join(map(str, seeds))}; {data_cfg.eval.split} prompts: {n_test}"
        + (" per seed; **the world (prompts, pairs, pretrained models) is redrawn with each seed**, so the intervals "
           "include world variance" if seed_cfgs else "; one world for every seed") + f"; wall time {wall / 60:.1f} min",
        f"- steps: **{tally.ran} ran**, {tally.shared} restored from the shared step cache, {tally.up_to_date} already "
        f"up to date, of a naive sum of **{tally.naive}** steps over {len(read)} runs ({tally.seconds_ran / 60:.1f} min in steps that ran)",
        f"- cells: the variant's result agent (student unless noted) at its last round; mean over seeds with a 95% "
        f"percentile bootstrap interval ({n_boot} draws of seeds x prompts, prompts resampled within each task); "
        f"Δ = paired difference in combined against `{BASELINE}` on the same draws",
        "- PGR = (student − weak-label teacher at round 0) / (gold ceiling − weak-label teacher), mean over seeds",
        "",
        "| variant | round | combined | helpful | harmless | PGR | Δ combined vs naive | seeds | what |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['variant']} | {_fmt(s['round'])} | {s['combined'].fmt()} | {s['helpful'].fmt()} | {s['harmless'].fmt()} | "
                     f"{_fmt(s['pgr'])} | {s['diff_vs_baseline'].fmt()} | {s['seeds']} | {s['help']} |")
    lines += ["", "## Student combined gold reward per round (mean over seeds)", ""]
    rounds = sorted({r["round"] for r in rows})
    lines += ["| variant | " + " | ".join(f"round {r}" for r in rounds) + " |", "|---|" + "---|" * len(rounds)]
    for v in variants:
        cells = []
        for rnd in rounds:
            want = VARIANTS[v].agent
            vals = [r["combined"] for r in rows if r["variant"] == v and r["round"] == rnd and r["combined"] is not None
                    and (r["agent"] == want or (want != "student" and want in r["agent"]))]
            cells.append(_fmt(sum(vals) / len(vals)) if vals else "–")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [""] + [f"![{p}]({p})" for p in pngs]
    lines += ["", "Per-run reports (every agent, per task, rates, pair diagnostics): `runs/<variant>/seed-<s>/report.md`. "
              "All numbers: `study.csv`."]
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "study.json").write_text(json.dumps({"steps": tally.__dict__, "wall_seconds": round(wall, 1), "variants": [
        {**{k: v for k, v in s.items() if not hasattr(v, "fmt")}, **{k: v.__dict__ for k, v in s.items() if hasattr(v, "fmt")}}
        for s in summary]}, indent=1, default=str))
    return path


def failed_gates(gates: dict[str, list[dict]]) -> list[str]:
    """Names of the premise gates that fail across a study's runs (``{run: gates.json rows}``).

    A gate a run could not measure (a T=0 baseline has no round-1 candidates for the filter
    gate) fails only if no run measured it; a measured failure always counts."""
    every = [g for gs in gates.values() for g in gs]
    measured = {g["name"] for g in every if g.get("value") is not None}
    return sorted({g["name"] for g in every
                   if not g.get("pass") and (g.get("value") is not None or g["name"] not in measured)})


def _gates(read: list[RunResult]) -> dict[str, list[dict]]:
    from macpo.eval.report import read_gates

    out = {}
    for r in read:
        gates, _ = read_gates(r.out / "gates.json")
        if gates:
            out[f"{r.variant}/seed-{r.seed}"] = gates
    return out


def plot_study(out: Path, summary: list[dict], rows: list[dict], variants: list[str]) -> list[str]:
    from macpo.eval.report import _plt, _save

    plt = _plt()
    names = []
    shown = [s for s in summary if s["combined"].mean is not None]
    if shown:
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(shown) + 1.5))
        ys = list(range(len(shown)))[::-1]
        for y, s in zip(ys, shown):
            c = s["combined"]
            if c.low is not None:
                ax.plot([c.low, c.high], [y, y], color="C0", lw=2)
            ax.plot([c.mean], [y], "o", color="C3" if s["variant"] == BASELINE else "C0")
        ax.set_yticks(ys)
        ax.set_yticklabels([s["variant"] for s in shown])
        ax.set_xlabel("combined gold reward (mean over seeds, 95% bootstrap interval)")
        ax.grid(alpha=0.3, axis="x")
        names.append(_save(plt, fig, out / "study_combined.png").name)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        pts = {}
        for r in rows:
            if r["variant"] == v and r["agent"] == "student" and r["combined"] is not None:
                pts.setdefault(r["round"], []).append(r["combined"])
        if len(pts) > 1:
            xs = sorted(pts)
            ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", label=v, lw=2.5 if v == "macpo" else 1.2)
    if ax.lines:
        base = [r["combined"] for r in rows if r["variant"] == BASELINE and r["agent"] == "student" and r["combined"] is not None]
        if base:
            ax.axhline(sum(base) / len(base), color="grey", ls="--", lw=1, label=BASELINE)
        ax.set_xlabel("round")
        ax.set_ylabel("student combined gold reward (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        names.append(_save(plt, fig, out / "study_rounds.png").name)
    else:
        plt.close(fig)
    # Every agent per round, one panel per MACPO variant (as the paper's Fig. 2-4 show the student
    # and each teacher over iterations): do the teachers improve with the student?
    panels = [v for v in variants if len({r["round"] for r in rows if r["variant"] == v}) > 1
              and any(r["agent"].startswith("teacher") and r["round"] > 0 for r in rows if r["variant"] == v)]
    if panels:
        cols = min(3, len(panels))
        fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.4 * ((len(panels) + cols - 1) // cols)),
                                 squeeze=False, sharey=True)
        for ax, v in zip(axes.flat, panels):
            agents = sorted({r["agent"] for r in rows if r["variant"] == v and (r["agent"] == "student" or r["agent"].startswith("teacher"))
                             and not r["agent"].endswith("-neg")}, key=lambda a: (a != "student", a))
            for a in agents:
                pts: dict[int, list[float]] = {}
                for r in rows:
                    if r["variant"] == v and r["agent"] == a and r["combined"] is not None:
                        pts.setdefault(r["round"], []).append(r["combined"])
                xs = sorted(pts)
                ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", lw=2.5 if a == "student" else 1.2, label=a)
            ax.set_title(v, fontsize=9)
            ax.set_xticks(sorted({r["round"] for r in rows if r["variant"] == v}))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        axes[0][0].set_ylabel("gold reward, the axis's headline (mean over seeds)")
        axes[0][0].legend(fontsize=7)
        names.append(_save(plt, fig, out / "study_agents.png").name)
    return names


# ---- command line ------------------------------------------------------------------------------------------
def _help_variants() -> str:
    width = max(map(len, VARIANTS))
    return "variants (default: all; the baseline naive-w2s always runs):\n" + "\n".join(
        f"  {v.name:<{width}}  {v.help}" for v in VARIANTS.values())


def main(argv: list[str]) -> int:
    p = make_parser("study", __doc__ + "\n" + _help_variants())
    p.add_argument("config", help="run config YAML (e.g. eval/configs/demo.yaml); every variant overrides it")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds: runs use seed 0..N-1 (default 3)")
    p.add_argument("--variants", nargs="+", metavar="NAME", help="variants to run (default: all; see the list above)")
    p.add_argument("--out", required=True, help="study folder (runs/, step-cache/, study.md, study.csv, PNGs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the base config")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the intervals (default 1000)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs executed at a time (default: the usable CPUs divided by the config's `threads`, "
                        "2 for the sandbox on 2 cores); a step that several runs need still runs once")
    p.add_argument("--fixed-world", action="store_true",
                   help="keep the config's world seed and pretraining seed for every seed (default: a seed also "
                        "redraws the world and re-pretrains its models, so intervals include world variance)")
    p.add_argument("--axes", nargs="+", choices=["helpful", "harmless"], metavar="AXIS",
                   help="sandbox axes to study, each in OUT/<axis> (default: the config's world.axis); "
                        "the axes share their pretrained models")
    p.add_argument("--verbose", action="store_true", help="stream every stage's output")
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if args.bootstrap < 1:
        raise UserError("--bootstrap must be at least 1")
    chosen = args.variants or DEFAULT_VARIANTS
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    variants = list(dict.fromkeys([BASELINE, *chosen]))
    overrides = parse_kv(args.set)
    targets = [(None, Path(args.out))] if not args.axes else [(a, Path(args.out) / a) for a in dict.fromkeys(args.axes)]
    for axis, out in targets:
        path = run_study(args.config, {**overrides, **({"world.axis": axis} if axis else {})}, variants,
                         list(range(args.seeds)), out, n_boot=args.bootstrap, verbose=args.verbose, jobs=args.jobs,
                         vary_world=not args.fixed_world)
        print(f"study{f' ({axis})' if axis else ''}: {path}")
        print(Path(path).read_text().split("\n\n## ")[0])
    return 0

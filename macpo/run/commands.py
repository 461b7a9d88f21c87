"""``macpo run`` / ``macpo demo``: the whole loop from one YAML config.

bootstrap (round 0) -> T rounds of build -> train every agent -> eval after every round -> report.
Each stage runs as its own process (``python -m macpo.cli build|train|eval``), joined only
through the store and the models folder. A rerun resumes: every step records the hash of
its inputs in ``STORE/run-state.json`` and is skipped when that hash matches and its
output exists; an interrupted build resumes from its shard checkpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from macpo import config as config_mod
from macpo.cliutil import make_parser, parse_kv
from macpo.errors import UserError
from macpo.eval import sandbox
from macpo.run.config import demo_config_path, load_run, write_run
from macpo.run.execute import execute
from macpo.run.plan import CLI
from macpo.run.procs import hold_run_folder
from macpo.run.summary import side_by_side, summarize


def run_main(argv: list[str]) -> int:
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
    if args.print_config:
        print(config_mod.describe(config_mod.load(args.config, overrides)), end="")
        return 0
    cfg = load_run(args.config, overrides)
    with hold_run_folder(Path(cfg.out)):
        cfg, resolved = write_run(cfg)
        print(f"macpo run: {cfg.name} ({cfg.method}, K={cfg.K}, T={cfg.T}) -> {cfg.out}", flush=True)
        execute(cfg, resolved, verbose=args.verbose)
    summary = summarize(cfg)
    if summary:
        print(summary)
    return 0


def demo_main(argv: list[str]) -> int:
    p = make_parser("demo", "Run the full MACPO loop (K=3 teachers, T=3 rounds) on the built-in gold-reward sandbox, on CPU,\n"
                    "on both of its axes (helpful, harmless; OUT/<axis>, side by side in OUT/summary.md).\n"
                    "A cold run (pretraining the sandbox models) takes a few minutes; later runs reuse the cache.")
    p.add_argument("--out", default="macpo-demo", help="output folder (default: ./macpo-demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--verbose", action="store_true", help="stream every stage's output")
    p.add_argument("--axis", choices=["helpful", "harmless"], action="append",
                   help="run only this axis (repeatable; default: both, in OUT/helpful and OUT/harmless)")
    return _demo(p.parse_args(argv))


def _demo(args) -> int:
    """Both axes of the sandbox, as the paper runs HH-Helpful and HH-Harmless: one run each
    (OUT/<axis>) on one set of pretrained models, then a side-by-side summary (OUT/summary.md).

    The models are pretrained first, here (progress bars); then the axes' runs go side by side as
    ``macpo run`` processes when the machine has a core per run (each stage keeps the config's
    threads), their step lines prefixed with the axis."""
    axes = list(dict.fromkeys(args.axis or ["helpful", "harmless"]))
    base = parse_kv(args.set)
    runs = []
    for axis in axes:
        overrides = {**base, "out": str(Path(args.out) / axis), "world.axis": axis, "name": f"macpo-demo-{axis}"}
        # Checked here, before anything runs; each axis's `macpo run` writes its own folder.
        runs.append((axis, config_mod.load(str(demo_config_path()), overrides), overrides))
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

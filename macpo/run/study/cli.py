"""``macpo study CONFIG --seeds N [--variants ...] --out DIR``: the paper's comparison, with seeds.

Every (variant, seed) is an ordinary run (``DIR/runs/<variant>/seed-<s>``, each with its own
report). Steps whose inputs are identical across runs run once, through the shared step cache
``DIR/step-cache/<key>`` (:mod:`macpo.run.cache` says how a step is keyed and restored).

Then ``study.md`` (one line per variant: the final student's gold scores, mean over seeds with
a bootstrap 95% interval over seeds and test prompts, PGR, and the paired difference against
naive weak-to-strong), ``study.csv`` (variant, seed, round, agent: helpful, harmless,
combined, pgr) and PNG plots.
"""

from __future__ import annotations

from pathlib import Path

from macpo.cliutil import make_parser, parse_kv
from macpo.errors import UserError
from macpo.run.study.runner import run_study
from macpo.run.study.variants import BASELINE, DEFAULT_VARIANTS, VARIANTS


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

"""``macpo build`` and ``macpo eval``: the stages as commands.

The run layer parses a stage command's options, loads the run config and resolves it as
``macpo run`` does (so a standalone step with ``--set`` runs what the run would), then hands
the stage what it needs: the resolved config and, for the builder's ``chosen_rule: oracle``, the
sandbox's gold scoring function.
"""

from __future__ import annotations

from macpo.builder import rounds
from macpo.cliutil import make_parser, parse_kv
from macpo.config import EXECUTORS
from macpo.errors import UserError
from macpo.eval import cli as evaluation
from macpo.eval.judge_llm import run_judge, summary_lines
from macpo.eval.report import gold_module, response_gold, write_report
from macpo.eval.sandbox import gates
from macpo.layout import RunLayout
from macpo.run.config import load_resolved


def sandbox_gold(store, data_dataset: str, metas: list, texts: list[str]) -> list[float]:
    """The gold reward of each response (``rounds.Oracle``), by the sandbox module that wrote the data."""
    module = gold_module(store, data_dataset)
    return [response_gold(module, meta, text) for meta, text in zip(metas, texts)]


def build_main(argv: list[str]) -> int:
    p = make_parser("build", rounds.__doc__)
    p.add_argument("--config", required=True, help="run config YAML (a macpo run's OUT/run.yaml)")
    p.add_argument("--round", type=int, required=True, help="round to build (0 = bootstrap)")
    p.add_argument("--part", choices=rounds.BOOTSTRAP_PARTS, help="round-0 part (default: the next one missing)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--executor", choices=EXECUTORS,
                   help="where generation and scoring shards run (default: the config's `executor`); "
                        "ray: on Ray workers, see the config's `ray` section")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    overrides = parse_kv(args.set)
    if args.executor:
        overrides["executor"] = args.executor
    cfg = load_resolved(args.config, overrides)
    result = rounds.build(cfg, args.round, args.part, progress=not args.no_progress, oracle=sandbox_gold)
    state = "built" if result.created else "unchanged (already built with identical content)"
    print(f"{result.name}/{result.version}: {state}; content {result.content_hash}")
    return 0


def eval_main(argv: list[str]) -> int:
    p = make_parser("eval", evaluation.__doc__)
    p.add_argument("--config", required=True, help="run config YAML (a macpo run's OUT/run.yaml)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--round", type=int, help="evaluate every agent's round-N model")
    what.add_argument("--report", action="store_true", help="write report.md, metrics.csv and plots")
    what.add_argument("--prepare", action="store_true", help="prepare the run's data (and sandbox models)")
    what.add_argument("--gates", action="store_true",
                      help="sandbox runs: measure the weak-to-strong premise gates at round 0 and write OUT/gates.json")
    what.add_argument("--judge", action="store_true",
                      help="ask the run's LLM judge (eval.judge) for the pairwise verdicts and print win / tie / loss; "
                           "--report then reuses them (cached in OUT/judge/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    cfg = load_resolved(args.config, parse_kv(args.set))
    if args.prepare:
        evaluation.prepare(cfg)
        print(f"data ready in {RunLayout(cfg).store_dir}")
    elif args.gates:
        if not evaluation.has_premise_gates(cfg):
            raise UserError("--gates needs a sandbox run of method macpo or naive-w2s")
        result = gates.compute(cfg)
        path = gates.write(result, RunLayout(cfg).out)
        print(gates.render(result["gates"]))
        print(f"gates: {path}")
    elif args.judge:
        print("\n".join(summary_lines(run_judge(cfg))))
    elif args.report:
        print(f"report: {write_report(cfg)}")
    else:
        if not 0 <= args.round <= cfg.T:
            raise UserError(f"round {args.round} is outside 0..T={cfg.T}")
        res = evaluation.evaluate_round(cfg, args.round, progress=not args.no_progress)
        print(f"{res.name}/{res.version}: {'written' if res.created else 'unchanged'}; content {res.content_hash}")
    return 0

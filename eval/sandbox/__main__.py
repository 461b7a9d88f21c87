"""``python -m macpo.eval.sandbox``: measure a sandbox world before running MACPO on it
(:mod:`macpo.eval.sandbox.measure`).

A command, so it reads a run config (its ``world`` and ``train`` sections) with the run layer's
loader: an entry point, imported by nothing (docs/architecture.md, "Entry points").
"""

from __future__ import annotations

import json
from importlib import resources

from macpo import config as config_mod
from macpo.cliutil import make_parser, parse_kv, run_script
from macpo.eval.sandbox.measure import measure


def main(argv: list[str] | None = None) -> int:
    p = make_parser("sandbox", "Measure the sandbox: pretraining times, gold rewards, naive W2S gap (PGR).")
    p.add_argument("--config", help="run config YAML (its `world` and `train` sections); default: the demo config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--json", help="also write the measurements to this JSON file")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="held-out prompts to score (default val: choose settings there, never on test)")
    args = p.parse_args(argv)
    if args.config is None:
        args.config = str(resources.files("macpo.eval") / "configs" / "demo.yaml")
    cfg = config_mod.load(args.config, parse_kv(args.set))
    teachers = [t.model.split(":", 1)[1] for t in cfg.teachers[: cfg.K] if t.model.startswith("sandbox:")]
    out = measure(cfg.world, cfg.train, teachers=teachers or None, split=args.split)
    print(f"prepare_models: {out['prepare_seconds']} s wall")
    for name, info in out["pretrain"].items():
        print(f"  {name:<10} {info['parameters']:>9,} params  {info['steps']:>5} steps  {info['seconds']:>7.1f} s "
              f"({info['threads']} threads)  final loss {info['final_loss']:.3f}")
    print("PGR (naive W2S vs ceiling, combined): " + ", ".join(
        f"{k}: {v:.2f}" if v is not None else f"{k}: n/a" for k, v in out["pgr"].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    run_script("sandbox", main)

"""demo_wall_seconds: ``macpo demo`` end to end, target ≤ 600 s.

Runs ``macpo demo --out DIR`` as a subprocess in a fresh folder and times it, 3 times (``--reps``;
each run minutes), reporting the median and the spread. There is no baseline. The sandbox's
pretrained models are cached (``MACPO_CACHE``) after the first run ever, so these are warm runs. A --quick run times the same loop at a small size,
``macpo run`` on the CI config (eval/configs/ci.yaml: K=2, T=1, tiny models), and says so;
the target is for the demo only. Skipped, with the reason printed, in --smoke runs or when
the config is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

TARGET_SECONDS = 600.0


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.smoke:
        common.skip("demo_wall_seconds", "full and quick runs only", args)
        return 0
    from macpo.run.config import demo_config_path

    config = demo_config_path().with_name("ci.yaml") if args.quick else demo_config_path()
    if not config.is_file():
        common.skip("demo_wall_seconds", f"no config at {config}", args)
        return 0
    # The demo chooses its own threads (it is the product's default behaviour being timed).
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cmd = ["run", str(config)] if args.quick else ["demo"]
    runs = []
    for _ in range(common.reps(args)):
        tmp = Path(tempfile.mkdtemp(prefix="macpo-bench-demo-"))
        try:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "macpo.cli", *cmd, "--out", str(tmp / "demo")],
                                  capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                common.skip("demo_wall_seconds", f"macpo {cmd[0]} failed after {seconds:.0f} s: {tail[0][:200]}", args)
                return 1
            runs.append(seconds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = common.median(runs)
    common.report("demo_wall_seconds", ratio=None, ours=seconds, baseline=None, unit="s", args=args,
                  target=f"<= {TARGET_SECONDS:g} s", met=None if args.quick else seconds <= TARGET_SECONDS,
                  runs={"ours": runs}, rep_values=runs, meets=lambda s: s <= TARGET_SECONDS,
                  extra={"reps": len(runs), "config": config.name},
                  size=f"macpo run eval/configs/ci.yaml, {len(runs)} runs; the target is for macpo demo" if args.quick
                  else f"{len(runs)} warm runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

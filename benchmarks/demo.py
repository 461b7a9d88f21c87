"""demo_wall_seconds: ``macpo demo`` end to end (full run only), target ≤ 600 s.

Runs ``macpo demo --out DIR`` as a subprocess in a fresh folder and times it. There is no
baseline. Skipped, with the reason printed, in --quick/--smoke runs or when the sandbox's
demo config (eval/configs/demo.yaml) is not installed.
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
    if args.quick or args.smoke:
        common.skip("demo_wall_seconds", "full run only", args)
        return 0
    from macpo.orchestrate import demo_config_path

    if not demo_config_path().is_file():
        common.skip("demo_wall_seconds", f"no demo config at {demo_config_path()}", args)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="macpo-bench-demo-"))
    try:
        # The demo chooses its own threads (it is the product's default behaviour being timed).
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "macpo.cli", "demo", "--out", str(tmp / "demo")],
                              capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            common.skip("demo_wall_seconds", f"macpo demo failed after {seconds:.0f} s: {tail[0][:200]}", args)
            return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.report("demo_wall_seconds", ratio=None, ours=seconds, baseline=None, unit="s", args=args,
                  target=f"<= {TARGET_SECONDS:g} s", met=seconds <= TARGET_SECONDS, runs={"ours": [seconds]},
                  extra={"reps": 1})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run several ``macpo train`` jobs in one trainer process: ``python -m macpo.trainbatch JOBS_JSON``.

``JOBS_JSON`` is a JSON list of ``macpo train`` argument lists, run in order (a later job may
start from an earlier job's output, e.g. a negative model from its positive). Each job is
exactly ``macpo train ARGS``; batching only pays the torch/TRL import once per stage, which
on a CPU dominates tiny-model training (research/sandbox.md timings).
"""

from __future__ import annotations

import json

from macpo.errors import UserError


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    try:
        jobs = json.loads(argv[0])
    except json.JSONDecodeError as exc:
        raise UserError(f"jobs must be a JSON list of argument lists ({exc.msg})") from None
    from macpo.trainer.cli import main as train_main

    for i, job in enumerate(jobs, 1):
        print(f"== job {i}/{len(jobs)}: macpo train {' '.join(job)}", flush=True)
        code = train_main(list(job))
        if code:
            return code
    return 0


if __name__ == "__main__":
    from macpo.cliutil import run_script

    run_script("macpo train", main)

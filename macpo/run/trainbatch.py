"""Run several ``macpo train`` jobs in one trainer process: ``python -m macpo.run.trainbatch JOBS_JSON``.

``JOBS_JSON`` is a JSON list of jobs, run in order (a later job may start from an earlier job's
output, e.g. a negative model from its positive). A job is either a mapping of TrainConfig
fields (what ``macpo run`` writes: every field of the stage, so nothing is lost in a flag list)
or a ``macpo train`` argument list. Each job is exactly one ``macpo train``, launcher included;
batching only pays the torch/TRL import once per stage, which on a CPU dominates tiny-model
training.
"""

from __future__ import annotations

import json

from macpo.cliutil import run_script
from macpo.errors import UserError
from macpo.trainer.cli import main as train_main
from macpo.trainer.cli import run as train_run
from macpo.trainer.train_config import from_dict


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    try:
        jobs = json.loads(argv[0])
    except json.JSONDecodeError as exc:
        raise UserError(f"jobs must be a JSON list of argument lists ({exc.msg})") from None
    if not isinstance(jobs, list):
        raise UserError("jobs must be a JSON list")
    for i, job in enumerate(jobs, 1):
        if isinstance(job, dict):
            cfg = from_dict(job)
            print(f"== job {i}/{len(jobs)}: macpo train ({cfg.loss}) -> {cfg.out}", flush=True)
            code = train_run(cfg)
        else:
            print(f"== job {i}/{len(jobs)}: macpo train {' '.join(job)}", flush=True)
            code = train_main(list(job))
        if code:
            return code
    return 0


if __name__ == "__main__":
    run_script("macpo train", main)

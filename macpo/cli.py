"""``macpo``: a thin dispatcher. Each command is a function ``main(argv)`` of its own module
(``module`` or ``module:function``).

Modules are imported by name only when their command runs (``importlib``), so ``macpo --help``
loads no stage and a command never pays for torch unless it needs it.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import signal
import sys

from macpo import __version__
from macpo.errors import UserError

# name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("macpo.run.commands:demo_main", "full MACPO loop on the built-in gold-reward sandbox (CPU)"),
    "run": ("macpo.run.commands:run_main", "full loop (bootstrap, rounds, eval) from a YAML config; resumes"),
    "study": ("macpo.run.study.cli", "variants x seeds of a config (ablations, baselines), shared steps, intervals"),
    "import": ("macpo.builder.importers", "import hh-rlhf / pku-saferlhf / trl / llamafactory preference or SFT data into a store"),
    "build": ("macpo.run.stages:build_main", "builder stage: build one round of a run into the store"),
    "train": ("macpo.trainer.cli", "trainer stage: SFT / DPO / DPO+NLL / SPIN / SPAC on a round dataset"),
    "eval": ("macpo.run.stages:eval_main", "eval stage: generate on held-out prompts, score, write the report"),
    "sql": ("macpo.sql", "read-only DuckDB SQL over every dataset version in a store"),
    "audit": ("macpo.audit", "named data-quality audits over a store"),
    "push": ("macpo.builder.publish", "publish one round to the Hugging Face Hub as one commit + tag"),
    "status": ("macpo.status", "list datasets, versions, row counts and content hashes"),
}

_HELP = "\n".join(
    ["usage: macpo <command> [options]", "", "Weak-to-strong alignment on round-versioned preference data.", "", "commands:"]
    + [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
    + ["", "Run 'macpo <command> --help' for a command's options."]
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_HELP)
        return 0
    if argv[0] in {"-V", "--version"}:
        print(f"macpo {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"macpo: error: unknown command {name!r} (commands: {', '.join(COMMANDS)})\n")
        return 2
    # Here, not at the top: cliutil pulls in argparse (4-15 ms measured), a quarter of `macpo --help`.
    from macpo.cliutil import watch_parent

    # `kill -USR1 <pid>` prints every thread's stack: for a command that will not stop.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    watch_parent()  # a stage of `macpo run` goes down with it
    try:
        # Inside the try: Ctrl-C while torch imports is an interruption like any other (exit 130).
        module_name, _, function = COMMANDS[name][0].partition(":")
        code = getattr(importlib.import_module(module_name), function or "main")(rest)
    except UserError as exc:
        sys.stderr.write(f"macpo {name}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"macpo {name}: interrupted\n")
        return 130
    return int(code or 0)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())

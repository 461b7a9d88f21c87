"""``python -m macpo.trainer`` / ``accelerate launch -m macpo.trainer``: same as ``macpo train``."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before any tokenizer loads, as `macpo` sets it

from macpo.cliutil import run_script  # noqa: E402
from macpo.trainer.cli import main  # noqa: E402

if __name__ == "__main__":
    run_script("macpo train", main)

"""``python -m macpo.trainer`` / ``accelerate launch -m macpo.trainer``: same as ``macpo train``."""

import os
import sys

from macpo.cli import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main(["train", *sys.argv[1:]]))

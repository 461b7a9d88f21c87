import os
import sys
from pathlib import Path

# Offline, deterministic, and light on this 2-core machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
_HH = "data/hh-rlhf-harmless-base-test.jsonl.gz"
# ../shared next to the checkout; $MACPO_SHARED or the workspace's copy for clones made elsewhere.
SHARED_HH = next(
    (p for p in (Path(os.environ.get("MACPO_SHARED", REPO.parent / "shared")) / _HH, Path("/work/shared") / _HH) if p.is_file()),
    REPO.parent / "shared" / _HH,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_hh():
    if not SHARED_HH.is_file():
        pytest.skip(f"shared HH-RLHF data not found at {SHARED_HH} (../shared is absent)")
    return SHARED_HH

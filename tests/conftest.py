import os
import signal
import subprocess
import sys
from pathlib import Path

# Offline, deterministic, and light on this 2-core machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# A suite started in the background of a non-interactive shell (`make test &`, nohup) inherits
# SIGINT ignored, and an ignored signal stays ignored across exec: the Ctrl-C tests' children could
# not be interrupted. A handler here is reset to the default in every child the tests start.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


CI_CONFIG = REPO / "eval" / "configs" / "ci.yaml"
# Small shards so a build has several checkpoints to resume from (tests/test_run_e2e.py).
CI_OVERRIDES = ["--set", "shard_size=4"]


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """One uninterrupted `macpo run` of eval/configs/ci.yaml, `(out folder, stdout)`, shared by the
    end-to-end checks and the README's `$OUT` examples (it costs ~45 s here). Read it, or copy it
    before changing anything."""
    if not CI_CONFIG.is_file():
        pytest.skip("eval/configs/ci.yaml is missing")
    out = tmp_path_factory.mktemp("ci-run") / "out"
    r = subprocess.run([sys.executable, "-m", "macpo.cli", "run", str(CI_CONFIG), "--out", str(out), *CI_OVERRIDES],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r.stdout


# Test files that read the session's ci_run: one worker builds it once for all of them.
CI_RUN_USERS = ("test_invariants", "test_readme", "test_run_e2e", "test_trl_stock", "test_judge_llm", "test_weak_labels")


def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite on 2 pytest-xdist workers with ``--dist loadgroup``: one group per
    test file (its module fixtures are built once), except the files sharing the session's
    ``ci_run`` (one `macpo run`, ~60 s), which go to the same worker."""
    for item in items:
        name = item.path.stem
        item.add_marker(pytest.mark.xdist_group("ci_run" if name in CI_RUN_USERS else name))

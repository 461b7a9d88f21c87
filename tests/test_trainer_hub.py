"""`macpo train --data ORG/NAME@round-N` against the loopback fake Hub (tests/hub_server.py):
the round is pushed with `macpo push`, then trained from the Hub at the pinned tag.

Both run as subprocesses: HF_ENDPOINT must be set before huggingface_hub/datasets are imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from hub_server import FakeHub
from test_trainer import pairs_rows, pairs_table

TOKEN = "hf_trainerFAKEtoken_9a8b7c"


@pytest.mark.skipif(importlib.util.find_spec("macpo.builder.publish") is None, reason="macpo push not available")
def test_train_from_hub_revision(tmp_path, tiny_model_dir):
    from macpo.store import Store, Subset

    store = Store(tmp_path / "store", create=True)
    manifest_hash = store.write("run", "round-1", {"student": Subset("pairs", pairs_table(pairs_rows()))}).content_hash
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0",
                   HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN=TOKEN, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        push = subprocess.run([sys.executable, "-m", "macpo.cli", "push", "--store", str(tmp_path / "store"),
                               "--round", "1", "--repo", "org/rounds", "--no-audit"],
                              env=env, capture_output=True, text=True, timeout=180)
        assert push.returncode == 0, push.stderr
        out = tmp_path / "agent"
        train = subprocess.run([sys.executable, "-m", "macpo.cli", "train", "--data", "org/rounds@round-1",
                                "--subset", "student", "--model", str(tiny_model_dir), "--loss", "dpo",
                                "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--out", str(out)],
                               env=env, capture_output=True, text=True, timeout=300)
        assert train.returncode == 0, train.stderr[-3000:]
        tagged = hub.repo("org/rounds").resolve("round-1")

        missing = subprocess.run([sys.executable, "-m", "macpo.cli", "train", "--data", "org/rounds@round-9",
                                  "--subset", "student", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")],
                                 env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "round-9" in missing.stderr, missing.stderr

    metrics = json.loads((out / "metrics.json").read_text())
    ds = metrics["dataset"]
    assert (ds["kind"], ds["source"], ds["revision"], ds["version"], ds["config"]) == (
        "hub", "org/rounds", "round-1", "round-1", "round-1-student")
    assert re.fullmatch(r"[0-9a-f]{40}", ds["resolved_sha"]) and ds["resolved_sha"] == tagged
    assert ds["content_hash"] == manifest_hash and ds["rows"] == 8
    assert metrics["steps"] == 2 and metrics["losses"][-1] < metrics["losses"][0]
    card = (out / "README.md").read_text()
    assert "org/rounds" in card and tagged in card and manifest_hash in card
    assert TOKEN not in card and TOKEN not in json.dumps(metrics)

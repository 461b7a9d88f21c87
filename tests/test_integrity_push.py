"""Issue 15's exploit chain end to end against the loopback Hub (tests/hub_server.py) through the
real huggingface_hub client, plus push's dataset choice for ``--round N`` (issue 16, item 1).

The client runs in a subprocess: ``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET`` must be set before
``huggingface_hub`` is imported (SPEC.md, "Hub publishing").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import pairs_table
from hub_server import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_macpoINTEGRITYtok3n_q81"
SHARD = "student/train-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with FakeHub(tmp_path_factory.mktemp("hub"), token=TOKEN) as h:
        yield h


@pytest.fixture
def env(hub, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    e.update({"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
              "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
              "OMP_NUM_THREADS": "1"})
    return e


def macpo(env, *args):
    return subprocess.run([sys.executable, "-m", "macpo.cli", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


def one_line_error(p, *needles):
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _store(root: Path, datasets=("run",)) -> Path:
    from macpo.store import Store, Subset

    store = Store(root, create=True)
    for name in datasets:
        rows = [(f"question {i}", f"good {name} {i}", f"bad {i}") for i in range(8)]
        store.write(name, "round-1", {"student": Subset("pairs", pairs_table(rows, "student", 1))})
    return root


def _requests_for(hub, repo):
    return [entry for entry in hub.log if repo in entry[1]]


def _writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


def test_hostile_query_then_push_publishes_nothing(hub, env, tmp_path):
    """The issue's chain: EXPLAIN ANALYZE COPY rewrites the manifest to list a file outside the
    store, then push uploads it under the round's tag. Each link now breaks on its own."""
    store = _store(tmp_path / "s")
    version = store / "run" / "round-1"
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-BYTES-3b1f\n")
    evil = json.loads((version / "manifest.json").read_text())
    evil["subsets"]["student"]["files"] = [str(secret)]
    evil_json = json.dumps(evil).replace("'", "''")
    before = (version / "manifest.json").read_bytes()

    # 1. The hostile query is refused, and the manifest is unchanged.
    q = f"EXPLAIN ANALYZE COPY (SELECT '{evil_json}' AS x) TO '{version}/manifest.json' (FORMAT csv, HEADER false, QUOTE '')"
    one_line_error(macpo(env, "sql", "--store", store, q), "refused")
    assert (version / "manifest.json").read_bytes() == before

    # 2. Had it succeeded (done here by hand), push refuses before any request to the Hub.
    repo = "macpo-org/exploit"
    _writable(version / "manifest.json").write_text(json.dumps(evil))
    one_line_error(macpo(env, "push", "--store", store, "--round", "1", "--repo", repo), "invalid manifest", "must be relative")
    # 3. So does a replaced shard (valid Parquet, other rows) and a byte-flipped one.
    (version / "manifest.json").write_bytes(before)
    shard = _writable(version / SHARD)
    original = shard.read_bytes()
    from macpo.schema import conform

    pq.write_table(conform(pairs_table([("q", "planted", "x")] * 5, "student", 1), "pairs", "t"), shard)
    one_line_error(macpo(env, "push", "--store", store, "--round", "1", "--repo", repo), "refusing to push run/round-1", SHARD)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    shard.write_bytes(bytes(flipped))
    one_line_error(macpo(env, "push", "--store", store, "--round", "1", "--repo", repo), "damaged", "sha256")

    assert _requests_for(hub, repo) == []  # not even create_repo
    assert ("dataset", repo) not in hub.repos
    for path in hub.root.rglob("*"):
        if path.is_file():
            assert b"SECRET-BYTES-3b1f" not in path.read_bytes() and b"planted" not in path.read_bytes()

    # 4. Restored, the same push publishes exactly the manifest's files.
    shard.write_bytes(original)
    ok = macpo(env, "push", "--store", store, "--round", "1", "--repo", repo, "--no-audit")
    assert ok.returncode == 0, ok.stderr
    published = sorted(p for p in hub.files(repo, "round-1") if p != ".gitattributes")  # made with the repo
    assert published == ["README.md", "round-1/manifest.json", f"round-1/{SHARD}"]


@pytest.mark.parametrize("name", ["org/na--me", "org/name.git", "org/..x", "org/" + "x" * 97, "org/-name"])
def test_repo_names_the_client_rejects_are_refused_up_front(hub, env, tmp_path, name):
    store = _store(tmp_path / "s")
    count = len(hub.log)
    one_line_error(macpo(env, "push", "--store", store, "--round", "1", "--repo", name), "--repo")
    assert len(hub.log) == count
    one_line_error(macpo(env, "sql", "--store", store, "--hub", name, "SELECT 1"))
    one_line_error(macpo(env, "import", name, "--format", "trl", "--store", tmp_path / "i", "--name", "x"))
    assert len(hub.log) == count and not (tmp_path / "i").exists()


def test_push_round_picks_the_only_dataset_holding_it(hub, env, tmp_path):
    from macpo.store import Store, Subset

    root = _store(tmp_path / "s", datasets=("macpo-demo",))
    store = Store(root)
    store.write_next("macpo-demo-data", {"default": Subset("pairs", pairs_table([("q", "a", "b")]))})
    repo = "macpo-org/pick"
    p = macpo(env, "push", "--store", root, "--round", "1", "--repo", repo, "--no-audit")
    assert p.returncode == 0, p.stderr
    assert "round-1 is in dataset macpo-demo only; pushing macpo-demo/round-1" in p.stderr
    assert "pushed macpo-demo/round-1 to macpo-org/pick" in p.stdout
    # A second dataset holding round-1: the error lists both.
    store.write("macpo-demo-evals", "round-1", {"student": Subset("pairs", pairs_table([("q", "c", "d")], "student", 1))})
    one_line_error(macpo(env, "push", "--store", root, "--round", "1", "--repo", repo),
                   "2 datasets", "(macpo-demo, macpo-demo-evals)", "pass --dataset")
    one_line_error(macpo(env, "push", "--store", root, "--round", "7", "--repo", repo),
                   "no dataset", "round-7", "macpo-demo, macpo-demo-data, macpo-demo-evals")
    again = macpo(env, "push", "--store", root, "--round", "1", "--dataset", "macpo-demo", "--repo", repo)
    assert again.returncode == 0 and "already holds macpo-demo/round-1" in again.stdout

"""``macpo push`` against the loopback fake Hub (tests/hub_server.py), through the real client.

The pushing/loading client always runs in a subprocess: ``HF_ENDPOINT`` and
``HF_HUB_DISABLE_XET`` must be set before ``huggingface_hub``/``datasets`` are imported, and
the test process may already have imported them with other settings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import msgs, one_line_error, pairs_table
from hub_server import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_macpoFAKEtok3n_Zq9vXw41"  # distinctive: must never leak into output or remote files


# ---- fixtures ---------------------------------------------------------------------------
def _candidates(round_: int, n: int) -> pa.Table:
    return pa.table({
        "candidate_id": [f"c{round_}-{i}" for i in range(n)],
        "prompt_id": [f"p{i}" for i in range(n)],
        "round": pa.array([round_] * n, pa.int32()),
        "agent": ["teacher-0"] * n,
        "sample_index": pa.array([0] * n, pa.int32()),
        "prompt": [msgs("user", f"question {i}") for i in range(n)],
        "response": [msgs("assistant", f"candidate answer {i} in round {round_}") for i in range(n)],
        "temperature": [0.7] * n,
        "seed": [round_ * 100 + i for i in range(n)],
        "familiarity": [[{"scorer": "student", "ppl": 3.5 + i}] for i in range(n)],
    })


def _round(round_: int, salt: str = "") -> dict:
    from macpo.store import Subset

    def rows(agent):
        return [(f"question {i}", f"good answer {i} for {agent} r{round_}{salt}", f"bad answer {i}")
                for i in range(8)]

    extra = lambda n: {"temperature": [0.7] * n, "seed": list(range(n)), "chosen_ppl": [2.0 + i for i in range(n)]}  # noqa: E731
    return {
        "student": Subset("pairs", pairs_table(rows("student"), "student", round_, **extra(8))),
        "teacher-0": Subset("pairs", pairs_table(rows("teacher-0"), "teacher-0", round_, **extra(8))),
        "candidates": Subset("candidates", _candidates(round_, 6)),
    }


CONFIG = {
    "method": "macpo",
    "student": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "12fd25f"},
    "teachers": [{"model": "tiny/teacher-a", "revision": None}],
    "sampling": {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 32, "seed": 0},
}


def _write_store(root: Path, salt: str = "") -> Path:
    from macpo.store import Store

    store = Store(root, create=True)
    r1 = store.write("run", "round-1", _round(1, salt), config=CONFIG,
                     models={"student": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "12fd25f"}})
    store.write("run", "round-2", _round(2, salt), parent_hash=r1.content_hash, config=CONFIG)
    return root


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return _write_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with FakeHub(tmp_path_factory.mktemp("hub"), token=TOKEN) as h:
        yield h


@pytest.fixture
def env(hub, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    e.update({
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "hf-home"),  # no stored login token, fresh caches
        "HF_TOKEN": TOKEN,
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    })
    return e


def push(env, store, repo, *extra, round_=1):
    args = [sys.executable, "-m", "macpo.cli", "push", "--store", str(store), "--repo", repo,
            "--retry-wait", "0.01", *extra]
    if round_ is not None:
        args += ["--round", str(round_)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def run_py(env, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)


def no_leak(hub: FakeHub, *procs, folders=()):
    for p in procs:
        assert TOKEN not in p.stdout and TOKEN not in p.stderr
    for folder in (hub.root, *folders):  # the remote, and local caches (cards, manifests, snapshots)
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), f"token leaked into {path}"
    assert all(TOKEN not in path for _, path, _ in hub.log)


def readme_yaml(hub, repo, rev="main") -> tuple[dict, str]:
    import yaml

    text = hub.files(repo, rev)["README.md"].decode()
    _, head, body = text.split("---\n", 2)
    return yaml.safe_load(head), body


# ---- pure helpers -----------------------------------------------------------------------
def test_parse_repo_ref():
    from macpo.hub import parse_repo_ref
    from macpo.errors import UserError

    assert parse_repo_ref("org/name@round-1") == ("org/name", "round-1")
    assert parse_repo_ref("org/name") == ("org/name", None)
    assert parse_repo_ref("hf://datasets/org/na.me@abc123") == ("org/na.me", "abc123")
    for bad in ("name", "org/name@", "/org/name", "a/b/c"):
        with pytest.raises(UserError):
            parse_repo_ref(bad)


def test_card_merge_keeps_existing_metadata_and_prose(store_dir):
    from huggingface_hub import DatasetCard

    from macpo.data_cards.cards import BEGIN, END, AuditRow, render_dataset_card
    from macpo.store import Store

    existing = DatasetCard(textwrap.dedent("""\
        ---
        license: mit
        custom_key: keep-me
        tags: [mine]
        configs:
        - config_name: handmade
          data_files: [{split: train, path: "data/*.parquet"}]
        - config_name: round-2-old
          data_files: [{split: train, path: "round-2/old/train-*.parquet"}]
        ---
        # My dataset

        Hand-written intro that must survive.
        """))
    manifest = Store(store_dir).manifest("run", "round-2")
    card = render_dataset_card(manifest=manifest, repo_id="org/x", existing=existing,
                               audits=[AuditRow("dup", "ok", 0, "a|b")], samples={"student": [[("prompt", "user: hi")]]})
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["custom_key"] == "keep-me"
    assert "mine" in data["tags"] and "macpo" in data["tags"]
    names = [c["config_name"] for c in data["configs"]]
    # round-2-old lived in round-2/, which this push rewrites: it goes; everything else stays.
    assert names == ["handmade", "round-2-student", "round-2-teacher-0", "round-2-candidates"]
    text = str(card)
    assert "Hand-written intro that must survive." in text and text.count(BEGIN) == 1 and text.count(END) == 1
    assert 'load_dataset("org/x", "round-2-student", revision="round-2", split="train")' in text
    assert manifest["content_hash"] in text and "a\\|b" in text and "user: hi" in text
    # Rendering on top of its own output changes nothing (re-pushes stay no-ops).
    again = render_dataset_card(manifest=manifest, repo_id="org/x", existing=DatasetCard(text),
                                audits=[AuditRow("dup", "ok", 0, "a|b")], samples={"student": [[("prompt", "user: hi")]]})
    assert str(again) == text


def test_card_for_an_import_without_audits(tmp_path):
    from macpo.data_cards.cards import agents_from, render_dataset_card
    from macpo.store import Store, Subset

    store = Store(tmp_path / "s", create=True)
    store.write("hh", "v1", {"default": Subset("pairs", pairs_table([("q", "a", "b")]))}, extra={"source": {"path": "hh.jsonl", "format": "hh-rlhf"}})
    note = "Audits skipped (--no-audit)."  # what push writes without audits
    manifest = store.manifest("hh", "v1")
    text = str(render_dataset_card(manifest=manifest, repo_id="o/hh", audit_note=note))
    # The data's format, from the import's `source`; not the store's own layout version.
    assert "No model agents recorded" in text and "None recorded" in text and "import (hh-rlhf)" in text
    assert "import (macpo.store" not in text
    assert note in text and 'load_dataset("o/hh", "v1-default", revision="v1", split="train")' in text
    # The manifest's `models` may be a plain id, a mapping with a revision, or a list.
    assert agents_from({"models": {"student": "m/s", "teacher-0": {"model_id": "m/t", "sha": "abc"}}}) == [
        {"name": "student", "model": "m/s", "revision": None},
        {"name": "teacher-0", "model": "m/t", "revision": "abc"},
    ]
    assert agents_from({"models": [{"agent": "student", "model": "m/s", "revision": "r1"}]})[0]["revision"] == "r1"


# ---- push round trip --------------------------------------------------------------------
def test_round_trip_idempotent_and_round_two(hub, env, store_dir, tmp_path):
    from macpo.store import Store

    repo = "macpo-org/round-trip"
    store = Store(store_dir)
    manifest = store.manifest("run", "round-1")

    # A hand-made card exists before macpo ever pushes: its metadata must survive both rounds.
    hub.create_repo(repo)
    hub.commit_files(repo, {"README.md": b"---\nlicense: mit\ncustom_key: keep-me\n---\n# Hand-written\n\nMy notes.\n"})
    start = hub.commit_count(repo)

    first = push(env, store_dir, repo)
    assert first.returncode == 0, first.stderr
    assert "tagged round-1" in first.stdout
    assert hub.commit_count(repo) == start + 1
    refs = hub.repo(repo)
    assert refs.tags["round-1"] == refs.heads["main"]
    files = hub.files(repo, "round-1")
    for subset in ("student", "teacher-0", "candidates"):
        assert f"round-1/{subset}/train-00000-of-00001.parquet" in files
    assert json.loads(files["round-1/manifest.json"])["content_hash"] == manifest["content_hash"]
    meta, body = readme_yaml(hub, repo, "round-1")
    assert meta["license"] == "mit" and meta["custom_key"] == "keep-me"
    assert [c["config_name"] for c in meta["configs"]] == ["round-1-student", "round-1-teacher-0", "round-1-candidates"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "round-1/student/train-*.parquet"}]
    assert "My notes." in body and manifest["content_hash"] in body
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in body and "12fd25f" in body  # agents with revisions
    assert "max_new_tokens" in body  # sampling parameters
    assert "chosen-equals-rejected" in body or "Audits not run" in body

    # Same content again: a no-op that says so, no new commit.
    second = push(env, store_dir, repo)
    assert second.returncode == 0, second.stderr
    assert "nothing to push" in second.stdout
    assert hub.commit_count(repo) == start + 1

    # Round 2 keeps round-1 configs and the hand-made metadata.
    third = push(env, store_dir, repo, round_=2)
    assert third.returncode == 0, third.stderr
    assert hub.commit_count(repo) == start + 2
    meta, body = readme_yaml(hub, repo, "round-2")
    names = [c["config_name"] for c in meta["configs"]]
    assert names[:3] == ["round-1-student", "round-1-teacher-0", "round-1-candidates"]
    assert names[3:] == ["round-2-student", "round-2-teacher-0", "round-2-candidates"]
    assert meta["license"] == "mit" and meta["custom_key"] == "keep-me" and "My notes." in body
    assert hub.repo(repo).tags["round-1"] != hub.repo(repo).tags["round-2"]

    # Read back through the real datasets library at the round tags; rehash after conform.
    reads = [("round-1", "round-1", "student", "pairs"), ("round-1", "round-1", "teacher-0", "pairs"),
             ("round-1", "round-1", "candidates", "candidates"), ("round-2", "round-2", "student", "pairs"),
             ("main", "round-1", "student", "pairs")]
    check = run_py(env, f"""
        import json
        from datasets import load_dataset
        from macpo.hashing import table_hash
        from macpo.schema import conform
        out = []
        for rev, version, subset, kind in {reads!r}:
            ds = load_dataset({repo!r}, version + "-" + subset, revision=rev, split="train")
            table = conform(ds.data.table, kind, subset)
            out.append({{"hash": table_hash(table), "rows": table.to_pylist()}})
        print(json.dumps(out))
    """)
    assert check.returncode == 0, check.stderr
    loaded = json.loads(check.stdout.strip().splitlines()[-1])
    for (rev, version, subset, _), got in zip(reads, loaded):
        assert got["hash"] == store.manifest("run", version)["subsets"][subset]["content_hash"], (rev, subset)
    rows = sorted(loaded[0]["rows"], key=lambda r: r["pair_id"])
    assert rows == sorted(store.read("run", "round-1", "student").to_pylist(), key=lambda r: r["pair_id"])
    no_leak(hub, first, second, third, check, folders=[env["HF_HOME"]])


def test_refuses_different_content_under_existing_tag(hub, env, store_dir, tmp_path):
    repo = "macpo-org/refuse"
    assert push(env, store_dir, repo).returncode == 0
    before = hub.commit_count(repo)
    other = _write_store(tmp_path / "other-store", salt="-different")
    p = push(env, other, repo)
    one_line_error(p, "refusing", "round-1")
    assert hub.commit_count(repo) == before
    no_leak(hub, p)


def test_version_flag_pushes_non_round_versions(hub, env, tmp_path):
    from macpo.store import Store, Subset

    store = Store(tmp_path / "imports", create=True)
    store.write("hh", "v1", {"default": Subset("pairs", pairs_table([("q", "a", "b")] * 3))})
    p = push(env, tmp_path / "imports", "macpo-org/imports", "--version", "v1", "--private", round_=None)
    assert p.returncode == 0, p.stderr
    assert hub.repo("macpo-org/imports").private
    meta, _ = readme_yaml(hub, "macpo-org/imports", "v1")
    assert [c["config_name"] for c in meta["configs"]] == ["v1-default"]
    assert "v1/default/train-00000-of-00001.parquet" in hub.files("macpo-org/imports", "v1")


# ---- errors and faults -----------------------------------------------------------------
def test_user_mistakes_fail_before_any_hub_call(store_dir, tmp_path, monkeypatch):
    from macpo.builder.publish import main
    from macpo.errors import UserError

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(UserError, match="no version 'round-9'"):
        main(["--store", str(store_dir), "--round", "9", "--repo", "org/x"])
    with pytest.raises(UserError, match="expected ORG/NAME"):
        main(["--store", str(store_dir), "--round", "1", "--repo", "not-a-repo"])
    with pytest.raises(UserError, match="does not exist"):
        main(["--store", str(tmp_path / "nope"), "--round", "1", "--repo", "org/x"])
    with pytest.raises(SystemExit):  # argparse: --round or --version is required
        main(["--store", str(store_dir), "--repo", "org/x"])


def test_no_token_is_one_clean_line(env, store_dir):
    env = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    one_line_error(push(env, store_dir, "macpo-org/no-token"), "no Hugging Face token")


def test_unreachable_hub_is_one_clean_line(env, store_dir):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = push({**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, store_dir, "macpo-org/unreachable", "--retries", "0")
    one_line_error(p, "cannot reach the Hub")


def test_wrong_token_is_one_clean_line(hub, env, store_dir):
    p = push({**env, "HF_TOKEN": "hf_wrong_but_also_secret"}, store_dir, "macpo-org/wrong-token")
    line = one_line_error(p, "refused the token")
    assert "hf_wrong_but_also_secret" not in line


def test_commit_failures_leave_no_partial_round(hub, env, store_dir):
    repo = "macpo-org/faulty"
    hub.create_repo(repo)
    before = hub.commit_count(repo)
    hub.faults.commit_500 = 10
    try:
        p = push(env, store_dir, repo, "--retries", "2")
    finally:
        hub.faults.commit_500 = 0
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "failed after 3 attempts" in last and "nothing was tagged" in last
    assert hub.commit_count(repo) == before
    assert hub.repo(repo).tags == {}
    assert not [f for f in hub.files(repo) if f.startswith("round-1/")]
    no_leak(hub, p)


def test_transient_faults_are_retried_into_one_commit(hub, env, store_dir):
    repo = "macpo-org/flaky"
    hub.create_repo(repo)
    before = hub.commit_count(repo)
    hub.faults.commit_500 = 2
    hub.faults.lfs_drop = 1
    p = push(env, store_dir, repo, "--retries", "3")
    assert p.returncode == 0, p.stderr
    assert hub.faults.commit_500 == 0 and hub.faults.lfs_drop == 0  # the faults really fired
    assert hub.commit_count(repo) == before + 1
    assert hub.repo(repo).tags["round-1"] == hub.repo(repo).heads["main"]
    no_leak(hub, p)


def test_lost_commit_reply_is_not_committed_twice(hub, env, store_dir):
    repo = "macpo-org/lost-reply"
    hub.create_repo(repo)
    # Debris of an untagged earlier attempt matching the config's train-* glob must not survive.
    stray = "round-1/student/train-00001-of-00002.parquet"
    hub.commit_files(repo, {stray: b"not parquet"})
    before = hub.commit_count(repo)
    hub.faults.commit_500_after_apply = 1
    p = push(env, store_dir, repo)
    assert p.returncode == 0, p.stderr
    assert hub.faults.commit_500_after_apply == 0
    assert hub.commit_count(repo) == before + 1
    assert hub.repo(repo).tags["round-1"] == hub.repo(repo).heads["main"]
    assert stray not in hub.files(repo, "round-1")


def test_stale_parent_rereads_head_and_merges_the_new_card(hub, env, store_dir):
    repo = "macpo-org/stale"
    hub.create_repo(repo)
    # Someone else's commit lands between our read of main and our commit.
    hub.before_next_commit(repo, {"README.md": b"---\nconcurrent_key: theirs\n---\nTheir words.\n",
                                  "notes.txt": b"theirs"})
    p = push(env, store_dir, repo)
    assert p.returncode == 0, p.stderr
    assert "412" in p.stderr
    meta, body = readme_yaml(hub, repo, "round-1")
    assert meta["concurrent_key"] == "theirs" and "Their words." in body
    assert [c["config_name"] for c in meta["configs"]][0] == "round-1-student"
    files = hub.files(repo, "round-1")
    assert files["notes.txt"] == b"theirs" and "round-1/manifest.json" in files


def test_create_pr_commits_to_a_pr_ref_without_tagging(hub, env, store_dir):
    repo = "macpo-org/review"
    hub.create_repo(repo)
    head = hub.repo(repo).heads["main"]
    p = push(env, store_dir, repo, "--create-pr")
    assert p.returncode == 0, p.stderr
    assert "discussions/1" in p.stdout and "push again" in p.stdout
    r = hub.repo(repo)
    assert r.heads["main"] == head and r.tags == {} and 1 in r.prs
    assert "round-1/manifest.json" in hub.files(repo, "refs/pr/1")

    # Once the PR is merged (a fast-forward here), the same push only tags the merged commit.
    r.heads["main"] = r.prs[1]
    before = hub.commit_count(repo)
    again = push(env, store_dir, repo)
    assert again.returncode == 0, again.stderr
    assert hub.commit_count(repo) == before and r.tags["round-1"] == r.prs[1]


# ---- reading back -----------------------------------------------------------------------
def test_snapshot_and_missing_repo(hub, env, store_dir):
    repo = "macpo-org/snap"
    assert push(env, store_dir, repo).returncode == 0
    p = run_py(env, f"""
        import json
        from macpo.hub import snapshot
        from macpo.errors import UserError
        folder, sha = snapshot({repo + "@round-1"!r})
        manifest = json.loads((folder / "round-1" / "manifest.json").read_text())
        try:
            snapshot("macpo-org/does-not-exist@round-1")
            missing = None
        except UserError as exc:
            missing = str(exc)
        try:
            snapshot({repo + "@round-9"!r})
            bad_rev = None
        except UserError as exc:
            bad_rev = str(exc)
        print(json.dumps({{"sha": sha, "hash": manifest["content_hash"], "missing": missing, "bad_rev": bad_rev,
                          "parquet": sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))}}))
    """)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["sha"] == hub.repo(repo).tags["round-1"]
    from macpo.store import Store

    assert out["hash"] == Store(store_dir).manifest("run", "round-1")["content_hash"]
    assert "round-1/student/train-00000-of-00001.parquet" in out["parquet"]
    assert out["missing"] and "\n" not in out["missing"] and "not found" in out["missing"]
    assert out["bad_rev"] and "\n" not in out["bad_rev"] and "revision not found" in out["bad_rev"]

    # Offline, a revision fetched before comes from the local snapshot; anything else is one line.
    offline = run_py({**env, "HF_HUB_OFFLINE": "1"}, f"""
        import json
        from macpo.hub import snapshot
        from macpo.errors import UserError
        folder, sha = snapshot({repo + "@round-1"!r})
        try:
            snapshot({repo + "@round-2"!r})
            err = None
        except UserError as exc:
            err = str(exc)
        print(json.dumps({{"sha": sha, "ok": (folder / "round-1" / "manifest.json").is_file(), "err": err}}))
    """)
    assert offline.returncode == 0, offline.stderr
    got = json.loads(offline.stdout.strip().splitlines()[-1])
    assert got["sha"] == out["sha"] and got["ok"] and "HF_HUB_OFFLINE" in got["err"]

    # `macpo sql --hub` attaches the published round through snapshot().
    empty = store_dir.parent / "empty-store"
    empty.mkdir(exist_ok=True)
    q = subprocess.run([sys.executable, "-m", "macpo.cli", "sql", "--store", str(empty), "--hub", f"{repo}@round-1",
                        "--format", "json", "SELECT version, subset, count(*) AS n FROM pairs GROUP BY ALL ORDER BY ALL"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == [{"version": "round-1", "subset": "student", "n": 8},
                                    {"version": "round-1", "subset": "teacher-0", "n": 8}]


@pytest.mark.skipif(importlib.util.find_spec("macpo.trainer.cli") is None, reason="trainer module macpo.trainer.cli is missing")
def test_trainer_trains_from_a_pushed_round(hub, env, store_dir, tiny_model_dir, tmp_path):
    repo = "macpo-org/train-from-hub"
    assert push(env, store_dir, repo).returncode == 0
    out = tmp_path / "student-r1"
    args = [sys.executable, "-m", "macpo.cli", "train", "--data", f"{repo}@round-1", "--subset", "student",
            "--model", str(tiny_model_dir), "--loss", "dpo", "--out", str(out), "--max-steps", "2",
            "--batch-size", "4", "--max-length", "64", "--lr", "1e-3", "--threads", "1"]
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    from macpo.store import Store

    recorded = metrics["dataset"]
    assert recorded["resolved_sha"] == hub.repo(repo).tags["round-1"]  # the pinned commit, not just "round-1"
    manifest = Store(store_dir).manifest("run", "round-1")
    assert recorded["content_hash"] == manifest["content_hash"]
    assert recorded["rows"] == manifest["subsets"]["student"]["rows"]

    # Someone commits other rows over the round's shard: the manifest no longer vouches for them.
    from macpo.schema import conform

    planted = pa.BufferOutputStream()
    pq.write_table(conform(pairs_table([("q", "replaced-after-push", "x")] * 5, "student", 1), "pairs", "t"), planted)
    hub.commit_files(repo, {f"round-1/{SHARD}": planted.getvalue().to_pybytes()})
    tampered = list(args)
    tampered[tampered.index("--data") + 1] = f"{repo}@main"
    tampered[tampered.index("--out") + 1] = str(tmp_path / "not-from-planted-rows")
    bad = subprocess.run([*tampered, "--version", "round-1"], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO_ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    lines = bad.stderr.strip().splitlines()  # datasets' own "Generating train split" bar, then the one error line
    assert all(line.startswith("Generating train split") for line in lines[:-1]), bad.stderr
    assert "does not match its manifest" in lines[-1] and "refusing to train" in lines[-1], lines[-1]
    assert not (tmp_path / "not-from-planted-rows").exists()

    args[args.index("--data") + 1] = "macpo-org/nope@round-1"
    args[args.index("--out") + 1] = str(tmp_path / "never-written")
    missing = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    one_line_error(missing, "macpo-org/nope")
    assert not (tmp_path / "never-written").exists()


# ---- integrity (issue 15) and --round's dataset (issue 16) ------------------------------------
SHARD = "student/train-00000-of-00001.parquet"


def macpo_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "macpo.cli", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


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
    one_line_error(macpo_cli(env, "sql", "--store", store, q), "refused")
    assert (version / "manifest.json").read_bytes() == before

    # 2. Had it succeeded (done here by hand), push refuses before any request to the Hub.
    repo = "macpo-org/exploit"
    _writable(version / "manifest.json").write_text(json.dumps(evil))
    one_line_error(macpo_cli(env, "push", "--store", store, "--round", "1", "--repo", repo), "invalid manifest", "must be relative")
    # 3. So does a replaced shard (valid Parquet, other rows) and a byte-flipped one.
    (version / "manifest.json").write_bytes(before)
    shard = _writable(version / SHARD)
    original = shard.read_bytes()
    from macpo.schema import conform

    pq.write_table(conform(pairs_table([("q", "planted", "x")] * 5, "student", 1), "pairs", "t"), shard)
    one_line_error(macpo_cli(env, "push", "--store", store, "--round", "1", "--repo", repo), "refusing to push run/round-1", SHARD)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    shard.write_bytes(bytes(flipped))
    one_line_error(macpo_cli(env, "push", "--store", store, "--round", "1", "--repo", repo), "damaged", "sha256")

    assert _requests_for(hub, repo) == []  # not even create_repo
    assert ("dataset", repo) not in hub.repos
    for path in hub.root.rglob("*"):
        if path.is_file():
            assert b"SECRET-BYTES-3b1f" not in path.read_bytes() and b"planted" not in path.read_bytes()

    # 4. Restored, the same push publishes exactly the manifest's files.
    shard.write_bytes(original)
    ok = macpo_cli(env, "push", "--store", store, "--round", "1", "--repo", repo, "--no-audit")
    assert ok.returncode == 0, ok.stderr
    published = sorted(p for p in hub.files(repo, "round-1") if p != ".gitattributes")  # made with the repo
    assert published == ["README.md", "round-1/manifest.json", f"round-1/{SHARD}"]


@pytest.mark.parametrize("name", ["org/na--me", "org/name.git", "org/..x", "org/" + "x" * 97, "org/-name"])
def test_repo_names_the_client_rejects_are_refused_up_front(hub, env, tmp_path, name):
    store = _store(tmp_path / "s")
    count = len(hub.log)
    one_line_error(macpo_cli(env, "push", "--store", store, "--round", "1", "--repo", name), "--repo")
    assert len(hub.log) == count
    one_line_error(macpo_cli(env, "sql", "--store", store, "--hub", name, "SELECT 1"))
    one_line_error(macpo_cli(env, "import", name, "--format", "trl", "--store", tmp_path / "i", "--name", "x"))
    assert len(hub.log) == count and not (tmp_path / "i").exists()


def test_push_round_picks_the_run_dataset(hub, env, tmp_path):
    """The demo's store: macpo-demo (rounds), macpo-demo-data (v1), macpo-demo-evals (round-N of
    kind evals). `push --round 1` as the README writes it pushes the run's round-1."""
    from macpo.schema import KINDS
    from macpo.store import Store, Subset

    root = _store(tmp_path / "s", datasets=("macpo-demo",))
    store = Store(root)
    store.write_next("macpo-demo-data", {"default": Subset("pairs", pairs_table([("q", "a", "b")]))})
    store.write("macpo-demo-evals", "round-1", {"default": Subset("evals", pa.Table.from_pylist([], schema=KINDS["evals"]))})
    repo = "macpo-org/pick"
    p = macpo_cli(env, "push", "--store", root, "--round", "1", "--repo", repo, "--no-audit")
    assert p.returncode == 0, p.stderr
    assert "pushing macpo-demo/round-1, the only dataset with round-1 training data (macpo-demo-evals also has" in p.stderr
    assert "pushed macpo-demo/round-1 to macpo-org/pick" in p.stdout
    # A second dataset holding round-1 pairs: the error lists every dataset holding round-1.
    store.write("macpo-other", "round-1", {"student": Subset("pairs", pairs_table([("q", "c", "d")], "student", 1))})
    one_line_error(macpo_cli(env, "push", "--store", root, "--round", "1", "--repo", repo),
                   "3 datasets", "(macpo-demo, macpo-demo-evals, macpo-other)", "pass --dataset")
    one_line_error(macpo_cli(env, "push", "--store", root, "--round", "7", "--repo", repo),
                   "no dataset", "round-7", "macpo-demo, macpo-demo-data, macpo-demo-evals, macpo-other")
    again = macpo_cli(env, "push", "--store", root, "--round", "1", "--dataset", "macpo-demo", "--repo", repo)
    assert again.returncode == 0 and "already holds macpo-demo/round-1" in again.stdout


def test_a_file_changed_after_verification_is_not_uploaded(tmp_path):
    """push verifies, then builds the commit: the client's own sha256 of each file it will send
    is compared with the manifest's, so a change in between is refused too."""
    from macpo.builder.publish import _operations
    from macpo.errors import UserError
    from macpo.store import Store

    store = Store(_store(tmp_path / "s"))
    manifest = store.manifest("run", "round-1")
    assert len(_operations(store, "run", "round-1", manifest, "card", [])) == 3
    shard = _writable(store.path("run", "round-1") / SHARD)
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{SHARD} changed after it was verified"):
        _operations(store, "run", "round-1", manifest, "card", [])

"""The store's promises under attack or damage (issue 15): read-only SQL, verified content,
manifests that cannot escape, writers. The Hub half (the exploit chain ending in a push) is in
test_publish.py, hostile importer input in test_importers.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import one_line_error, pairs_table
from macpo.errors import UserError
from macpo.sql import open_store, run_query
from macpo.store import Store, Subset

REPO_ROOT = Path(__file__).resolve().parents[1]
MACPO = [sys.executable, "-m", "macpo.cli"]
SHARD = "default/train-00000-of-00001.parquet"


def run(*args, cwd=None, **kw):
    return subprocess.run([*MACPO, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300, **kw)


def _rows(n, salt=""):
    return [(f"q{i}{salt}", f"good {i}", f"bad {i}") for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", create=True)
    s.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(20)))})
    s.write("run", "round-1", {"default": Subset("pairs", pairs_table(_rows(8, "r"), agent="student", round_=1))})
    return s


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _writable(path: Path):
    os.chmod(path, 0o644)
    return path


# ---- 1. SQL that cannot write ----------------------------------------------------------------
def test_explain_analyze_copy_is_refused_and_the_store_is_untouched(store):
    before = _snapshot(store.root)
    target = store.path("hh", "v1")
    attacks = [
        f"EXPLAIN ANALYZE COPY (SELECT 'x' AS x) TO '{target}/manifest.json' (FORMAT json)",
        f"EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{target}/{SHARD}' (FORMAT parquet)",
        f"EXPLAIN /* hidden */ ANALYZE COPY (SELECT 1) TO '{target}/evil.csv'",
        f"explain analyse copy (select 1) to '{target}/evil.csv'",
        f"EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1) TO '{target}/evil.csv'",
        f"EXPLAIN EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}/evil.csv'",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE INSERT INTO pairs SELECT * FROM pairs",
        "SELECT 1; EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
    ]
    for q in attacks:
        line = one_line_error(run("sql", "--store", store.root, q))
        assert "refused" in line or "does not parse" in line, (q, line)  # EXPLAIN EXPLAIN does not parse
    assert _snapshot(store.root) == before


def test_explain_of_a_select_still_works(store):
    con = open_store(str(store.root))
    for q in ["EXPLAIN SELECT count(*) FROM pairs", "EXPLAIN ANALYZE SELECT count(*) FROM pairs",
              "EXPLAIN (FORMAT json) SELECT 1", "-- c\nEXPLAIN ANALYZE /* x */ SELECT * FROM pairs_facts"]:
        cols, rows = run_query(con, q)[-1]
        assert rows, q


def test_sandbox_allows_exactly_the_data_files_and_a_private_temp_dir(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DuckDB's default temp dir would be ./.tmp/
    con = open_store(str(store.root))
    settings = dict(con.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    dirs = settings["allowed_directories"].strip("[]").split(", ")
    assert len(dirs) == 1 and "macpo-sql-" in dirs[0] and not dirs[0].startswith(str(tmp_path))
    assert oct(os.stat(dirs[0].rstrip("/")).st_mode & 0o777) == "0o700"
    paths = set(settings["allowed_paths"].strip("[]").split(", "))
    data = {str((store.path(n, v) / rel).resolve()) for n in store.datasets() for v in store.versions(n)
            for rel in store.data_files(n, v)}
    assert data <= paths
    assert all(p in data or "/.facts/" in p for p in paths)  # data shards and their facts, nothing else
    assert settings["enable_external_access"] == "false" and settings["lock_configuration"] == "true"
    # Anything else in or out of the store, including the manifests and ./.tmp, is refused.
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "x.csv").write_text("a\n1\n")
    for q in [f"SELECT * FROM read_text('{store.path('hh', 'v1')}/manifest.json')",
              f"SELECT * FROM read_csv('{tmp_path}/.tmp/x.csv')",
              f"SELECT * FROM glob('{store.root}/*')",
              "SELECT * FROM read_csv('/etc/passwd')"]:
        with pytest.raises(UserError, match="Permission|disabled"):
            run_query(con, q)


def test_committed_files_are_read_only_and_folders_stay_writable(store):
    version = store.path("hh", "v1")
    files = [p for p in version.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and any("/.facts/" in str(p) for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o444, p
    assert os.access(version, os.W_OK)
    # The writer still adds versions, and `rm -rf` still removes a store.
    assert store.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(3)))}).version == "v2"
    shutil.rmtree(store.root)
    assert not store.root.exists()


def test_user_audits_are_held_to_the_same_rules(store, tmp_path):
    before = _snapshot(store.root)
    audits = tmp_path / "audits"
    audits.mkdir()
    (audits / "evil.sql").write_text(
        f"EXPLAIN ANALYZE COPY (SELECT 'x' AS x) TO '{store.path('hh', 'v1')}/manifest.json' (FORMAT json)\n")
    one_line_error(run("audit", "--store", store.root, "--audits-dir", audits, "evil"), "refused")
    (store.root / ".audits").mkdir()
    (store.root / ".audits" / "evil2.sql").write_text(f"SELECT * FROM read_text('{store.path('hh', 'v1')}/manifest.json')\n")
    one_line_error(run("audit", "--store", store.root, "evil2"), "audit evil2 failed")
    shutil.rmtree(store.root / ".audits")
    assert _snapshot(store.root) == before


# ---- 2. Content you can trust ----------------------------------------------------------------
def test_manifest_lists_every_file_with_size_and_sha256(store):
    import hashlib

    m = store.manifest("hh", "v1")
    assert m["format"] == "macpo.store/2" and set(m["files"]) == {SHARD}
    data = (store.path("hh", "v1") / SHARD).read_bytes()
    assert m["files"][SHARD] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _replace_rows(store, name, version, rows):
    """Damage class 1: the shard is valid Parquet holding other rows (as in the issue: 5 rows)."""
    from macpo.schema import conform

    path = _writable(store.path(name, version) / SHARD)
    pq.write_table(conform(pairs_table(rows), "pairs", "test"), path)


def _flip_byte(store, name, version, rel=SHARD):
    """Damage class 2: one byte flipped in place (same size: only the sha256 can see it)."""
    path = _writable(store.path(name, version) / rel)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_status_verify_names_a_replaced_and_a_byte_flipped_shard(store):
    ok = run("status", "--store", store.root, "--verify")
    assert ok.returncode == 0 and "DAMAGED" not in ok.stdout and ok.stdout.count("verified") == 2, ok.stderr
    _replace_rows(store, "hh", "v1", _rows(5, "x"))
    _flip_byte(store, "run", "round-1")
    # Plain status makes the cheap check: it sees the resized shard, not the same-size flip.
    cheap = run("status", "--store", store.root)
    one_line_error(cheap, "1 damaged", "hh/v1", SHARD, "bytes, the manifest says")
    p = run("status", "--store", store.root, "--verify")
    line = one_line_error(p, "2 damaged", "hh/v1", "run/round-1", SHARD)
    assert "sha256" in line
    assert p.stdout.count("DAMAGED") == 2 and p.stdout.count(f"! {SHARD}") == 2
    info = json.loads(run("status", "--store", store.root, "--verify", "--json").stdout)
    damage = {(d["name"], v["version"]): v["damage"] for d in info["datasets"] for v in d["versions"]}
    assert all(damage.values()) and all(SHARD in problems[0] for problems in damage.values())


def test_same_size_damage_with_a_forged_file_hash_is_caught_by_the_content_hash(store):
    """Even a manifest whose file records were forged to match is caught by re-hashing the rows."""
    import hashlib

    path = store.path("hh", "v1") / SHARD
    _replace_rows(store, "hh", "v1", _rows(20, "y"))
    mpath = _writable(store.path("hh", "v1") / "manifest.json")
    m = json.loads(mpath.read_text())
    m["files"][SHARD] = {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    mpath.write_text(json.dumps(m))
    problems = store.verify("hh", "v1")
    assert len(problems) == 1 and problems[0].startswith("default: the rows hash to")


def test_reads_check_sizes_cheaply(store):
    _replace_rows(store, "hh", "v1", _rows(5, "x"))
    for args in (["sql", "--store", store.root, "SELECT count(*) FROM pairs"], ["audit", "--store", store.root]):
        one_line_error(run(*args), "hh/v1 is damaged", SHARD, "status --verify")
    with pytest.raises(UserError, match="hh/v1 is damaged"):
        store.read("hh", "v1", "default")  # what `macpo train --data STORE` reads through
    # A missing shard and a shard replaced by a folder are named too.
    os.unlink(store.path("run", "round-1") / SHARD)
    with pytest.raises(UserError, match=f"run/round-1 is damaged: {SHARD}: missing"):
        store.read("run", "round-1", "default")


def test_byte_flips_are_one_line_from_every_reader(store):
    """Same size, so the cheap check passes: the readers still fail cleanly, and verify names it."""
    path = _writable(store.path("hh", "v1") / SHARD)
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 40, len(data) - 8):  # the Parquet footer (schema, row groups)
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    one_line_error(run("sql", "--store", store.root, "SELECT count(*) FROM pairs WHERE dataset = 'hh'"))
    one_line_error(run("audit", "--store", store.root), "hh/v1")
    with pytest.raises(UserError, match="hh/v1/default: cannot read Parquet"):
        store.read("hh", "v1", "default")
    one_line_error(run("status", "--store", store.root, "--verify"), "hh/v1", SHARD, "sha256")


def test_reimport_of_identical_content_confirms_the_stored_copy(tmp_path):
    src = tmp_path / "prefs.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(6)))
    args = ["import", src, "--format", "trl", "--store", tmp_path / "s", "--name", "prefs"]
    assert "prefs/v1: 6 pairs imported" in run(*args).stdout
    again = run(*args)
    assert "prefs/v1: 6 pairs unchanged" in again.stdout and "verified intact" in again.stdout
    store = Store(tmp_path / "s")
    _flip_byte(store, "prefs", "v1")
    repaired = run(*args)
    assert repaired.returncode == 0, repaired.stderr
    assert "prefs/v2: 6 pairs imported" in repaired.stdout
    assert "stored copy was damaged (prefs/v1:" in repaired.stderr and SHARD in repaired.stderr
    assert store.verify("prefs", "v2") == []
    assert store.manifest("prefs", "v2")["content_hash"] == store.manifest("prefs", "v1")["content_hash"]


def test_facts_that_do_not_match_their_shard_are_never_joined(store):
    """The issue's case: `pairs` had 5 rows while `pairs_facts` had 20 (NULL-padded join)."""
    from macpo.facts import fact_files

    version = store.path("hh", "v1")
    m = store.manifest("hh", "v1")
    assert fact_files(version, m) is not None
    meta = json.loads((version / ".facts" / "facts.json").read_text())
    import hashlib

    facts_bytes = (version / ".facts" / SHARD).read_bytes()
    assert meta["shards"][SHARD] == {"rows": 20, "data_sha256": m["files"][SHARD]["sha256"],
                                     "size": len(facts_bytes), "sha256": hashlib.sha256(facts_bytes).hexdigest()}
    # Replace the shard AND forge the manifest's records so the cheap checks pass: the facts'
    # recorded row count and hash no longer match, so they are not used...
    path = version / SHARD
    _replace_rows(store, "hh", "v1", _rows(5, "x"))
    mpath = _writable(version / "manifest.json")
    m["files"][SHARD] = {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    m["subsets"]["default"]["rows"] = 5
    mpath.write_text(json.dumps(m))
    assert fact_files(version, store.manifest("hh", "v1")) is None
    con = open_store(str(store.root), dataset="hh")
    n, n_facts = run_query(con, "SELECT (SELECT count(*) FROM pairs), (SELECT count(*) FROM pairs_facts)")[-1][1][0]
    assert n == n_facts == 5
    # ...and the audit backfill rebuilds them against the shard that is there now.
    from macpo.audit import run_audits

    run_audits(store, dataset="hh", names=["counts"])
    rebuilt = fact_files(version, store.manifest("hh", "v1"))
    assert rebuilt is not None and pq.read_metadata(rebuilt["default"][0]).num_rows == 5


# ---- 3. Manifests are validated on load --------------------------------------------------------
def _edit_manifest(store, name, version, edit):
    path = _writable(store.path(name, version) / "manifest.json")
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


BAD_MANIFESTS = {
    "absolute path": (lambda m: m["subsets"]["default"]["files"].__setitem__(0, "/etc/hostname"), "must be relative"),
    "dot-dot": (lambda m: m["subsets"]["default"]["files"].__setitem__(0, "../../round-1/" + SHARD), "'..'"),
    "unknown kind": (lambda m: m["subsets"]["default"].__setitem__("kind", "secrets"), "unknown kind"),
    "rows not int": (lambda m: m["subsets"]["default"].__setitem__("rows", "20"), "rows"),
    "rows float": (lambda m: m["subsets"]["default"].__setitem__("rows", 20.0), "rows"),
    "rows bool": (lambda m: m["subsets"]["default"].__setitem__("rows", True), "rows"),
    "unknown format": (lambda m: m.__setitem__("format", "evil/9"), "unknown format"),
    "no subsets": (lambda m: m.__setitem__("subsets", []), "subsets"),
    "unlisted file": (lambda m: m["files"].pop(SHARD), "files must list every data file"),
    "bad sha": (lambda m: m["files"][SHARD].__setitem__("sha256", "x" * 64), "sha256"),
    "subset name": (lambda m: m["subsets"].__setitem__("../x", m["subsets"]["default"]), "subset name"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifests_are_one_line_and_exit_2_from_every_command(store, tmp_path, case):
    edit, needle = BAD_MANIFESTS[case]
    _edit_manifest(store, "hh", "v1", edit)
    with pytest.raises(UserError, match="invalid manifest"):
        store.manifest("hh", "v1")
    for args in (["sql", "--store", store.root, "SELECT 1"], ["audit", "--store", store.root],
                 ["status", "--store", store.root]):
        one_line_error(run(*args), "hh/v1", needle)
    one_line_error(run("status", "--store", store.root, "--verify"), "hh/v1", needle)


def test_symlinks_out_of_the_version_are_refused(store, tmp_path):
    secret = tmp_path / "secret.parquet"
    pq.write_table(pairs_table(_rows(2, "secret")), secret)
    shard = store.path("hh", "v1") / SHARD
    shard.unlink()
    shard.symlink_to(secret)
    with pytest.raises(UserError, match="resolves outside its version folder"):
        store.manifest("hh", "v1")
    one_line_error(run("sql", "--store", store.root, "SELECT count(*) FROM pairs"), "symlink out")
    # A version folder that is itself a link out of the store.
    outside = tmp_path / "outside"
    shutil.copytree(store.path("run", "round-1"), outside)
    (store.root / "run" / "round-2").symlink_to(outside)
    with pytest.raises(UserError, match="symlink out of store"):
        store.manifest("run", "round-2")


def test_facts_linked_out_of_the_version_are_not_used(store, tmp_path):
    """The facts shards' paths join the sandbox's allowed files: a link out must not get there."""
    facts = store.path("hh", "v1") / ".facts" / SHARD
    outside = tmp_path / "outside.parquet"
    shutil.copy(facts, outside)
    facts.unlink()
    facts.symlink_to(outside)
    con = open_store(str(store.root))
    paths = dict(con.execute("SELECT name, value FROM duckdb_settings()").fetchall())["allowed_paths"]
    assert str(outside) not in paths
    assert run_query(con, "SELECT count(*) FROM pairs_facts WHERE dataset = 'hh'")[-1][1] == [(20,)]


def test_a_corrupt_manifest_is_one_line(store):
    path = _writable(store.path("hh", "v1") / "manifest.json")
    path.write_bytes(b"\xff\xfe{not json")
    one_line_error(run("status", "--store", store.root), "corrupt manifest")
    path.write_text("[" * 100000 + "]" * 100000)
    one_line_error(run("sql", "--store", store.root, "SELECT 1"), "hh/v1")


# ---- 5. Writers: races and leftovers -----------------------------------------------------------
def test_racing_writers_end_as_v1_and_v2(tmp_path, monkeypatch):
    """Deterministic: writer B read the version list before writer A committed v1."""
    store = Store(tmp_path / "s", create=True)
    other = Store(tmp_path / "s")
    real = Store._latest_v
    calls = {"n": 0}

    def stale_then_real(self, name):
        calls["n"] += 1
        if calls["n"] in (2, 3):  # B's looks before it writes: A has not committed yet
            return None
        return real(self, name)

    a = store.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(3, "a")))})
    calls["n"] = 1
    monkeypatch.setattr(Store, "_latest_v", stale_then_real)
    b = other.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(3, "b")))})
    assert (a.version, b.version) == ("v1", "v2") and a.created and b.created
    assert calls["n"] == 4  # B's rename onto v1 failed, it looked again and took v2
    # A racer with B's very content ends as B's version, unchanged, not as a v3 copy.
    calls["n"] = 1
    c = other.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(3, "b")))})
    assert (c.version, c.created) == ("v2", False) and store.versions("hh") == ["v1", "v2"]
    assert store.manifest("hh", "v2")["parent_hash"] == a.content_hash
    assert not list((tmp_path / "s" / "hh").glob(".tmp-*"))


def test_two_import_processes_on_one_name(tmp_path):
    srcs = []
    for who in ("a", "b"):
        src = tmp_path / f"{who}.jsonl"
        src.write_text("".join(json.dumps({"prompt": f"{who}{i}", "chosen": "x", "rejected": "y"}) + "\n" for i in range(50)))
        srcs.append(src)
    procs = [subprocess.Popen([*MACPO, "import", str(src), "--format", "trl", "--store", str(tmp_path / "s"), "--name", "hh"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for src in srcs]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert Store(tmp_path / "s").versions("hh") == ["v1", "v2"]


def test_stale_tmp_folders_are_reported_then_removed_by_the_next_writer(store):
    # A writer killed mid-write: its folder is left, its lock died with it.
    killed = store.root / "hh" / ".tmp-next-deadbeef"
    killed.mkdir()
    (killed / ".writer.lock").touch()
    (killed / "default").mkdir()
    os.utime(killed / ".writer.lock", (1e9, 1e9))  # killed a while ago
    # A writer between creating its lock file and locking it is not taken for a killed one.
    starting = store.root / "hh" / ".tmp-next-0badf00d"
    starting.mkdir()
    (starting / ".writer.lock").touch()
    # A live writer's folder (lock held by this process) is neither reported nor removed.
    import fcntl

    live = store.root / "hh" / ".tmp-next-cafecafe"
    live.mkdir()
    fh = open(live / ".writer.lock", "w")
    fcntl.flock(fh, fcntl.LOCK_EX)
    try:
        p = run("status", "--store", store.root)
        assert p.returncode == 0
        assert "stale temporary folder hh/.tmp-next-deadbeef" in p.stdout and "cafecafe" not in p.stdout
        assert "0badf00d" not in p.stdout
        assert json.loads(run("status", "--store", store.root, "--json").stdout)["stale_tmp"] == ["hh/.tmp-next-deadbeef"]
        store.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(2, "new")))})
        assert not killed.exists() and live.exists() and starting.exists()
    finally:
        fh.close()


# ---- 4. Queries a person can stop ---------------------------------------------------------------
# Runs for hours inside DuckDB without returning a row; "ready" (its own statement) shows it started.
SLOW = "SELECT count(*) AS n FROM range(100000000000) a WHERE a.range % 7 = 3"


def test_ctrl_c_stops_a_running_query_with_exit_130(store, tmp_path):
    import signal

    spill = tmp_path / "tmp"
    spill.mkdir()
    p = subprocess.Popen([*MACPO, "sql", "--store", str(store.root), f"SELECT 1 AS ready; {SLOW}", "--format", "csv"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(spill)})
    try:
        assert [p.stdout.readline().strip() for _ in range(2)] == ["ready", "1"]  # the slow statement is next
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # seen once in ~40 suite runs: say where it hangs
            p.send_signal(signal.SIGUSR1)
            time.sleep(2)
            p.kill()
            _, err = p.communicate()
            pytest.fail(f"macpo sql did not stop 60 s after SIGINT; its threads:\n{err}")
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == ["macpo sql: interrupted"]
    assert list(spill.iterdir()) == []  # the private spill folder went with it


def test_timeout_and_max_rows(store):
    one_line_error(run("sql", "--store", store.root, SLOW, "--format", "csv", "--timeout", "1"), "--timeout 1")
    p = run("sql", "--store", store.root, "SELECT * FROM range(5000)")
    assert p.returncode == 0 and p.stdout.count("\n") == 1000 + 3
    assert "(1000 rows; stopped at --max-rows 1000, pass --max-rows 0 for all)" in p.stdout
    p = run("sql", "--store", store.root, "SELECT * FROM range(5000)", "--format", "csv")
    assert p.stdout.splitlines()[-1] == "4999" and len(p.stdout.splitlines()) == 5001  # pipes: all rows
    p = run("sql", "--store", store.root, "SELECT * FROM range(5000)", "--format", "json", "--max-rows", "10")
    assert len(json.loads(p.stdout)) == 10 and "stopped at --max-rows 10" in p.stderr
    p = run("sql", "--store", store.root, "SELECT * FROM range(2500)", "--max-rows", "0")
    assert "(2500 rows)" in p.stdout


def test_results_stream_in_batches(store):
    from macpo.sql import stream_query

    con = open_store(str(store.root))
    sizes = [len(rows) for _, rows in stream_query(con, "SELECT * FROM range(2500)", batch_rows=1000)]
    assert sizes == [1000, 1000, 500]
    # A result far larger than memory would allow still yields its first batch: nothing is fetched whole.
    first = next(iter(stream_query(con, "SELECT range, repeat('x', 1000) FROM range(10000000000)", batch_rows=10)))
    assert len(first[1]) == 10


def test_json_output_is_strict(store):
    q = ("SELECT 'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, '-inf'::FLOAT AS ninf, '\\x00\\xff'::BLOB AS blob, "
         "1.50::DECIMAL(4,2) AS dec, [1.0, 'nan'::DOUBLE] AS lst, {'b': 'ab'::BLOB} AS st, DATE '2026-12-01' AS d, "
         "(SELECT chosen FROM pairs LIMIT 1) AS msgs")
    p = run("sql", "--store", store.root, q, "--format", "json")
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))[0]
    import base64

    assert row["nan"] is None and row["inf"] is None and row["ninf"] is None
    assert base64.b64decode(row["blob"]) == b"\x00\xff" and base64.b64decode(row["st"]["b"]) == b"ab"
    assert row["dec"] == 1.5 and row["lst"] == [1.0, None] and row["d"] == "2026-12-01"
    assert row["msgs"][0]["role"] == "assistant"
    assert json.loads(run("sql", "--store", store.root, "SELECT 1 WHERE false", "--format", "json").stdout) == []

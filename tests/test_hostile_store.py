"""Hostile inputs, round two (issue 23), the store's half: verified audit facts, paths that
are never patterns, bounded DuckDB, Ctrl-C in every long store command, safe terminal output,
and the tracebacks turned into one line. Every input is built here, in fixtures."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import one_line_error, pairs_table
from macpo.store import Store, Subset

REPO_ROOT = Path(__file__).resolve().parents[1]
MACPO = [sys.executable, "-m", "macpo.cli"]
SHARD = "default/train-00000-of-00001.parquet"
FACTS = f".facts/{SHARD}"
# Runs for hours inside DuckDB without returning a row.
SLOW = "SELECT count(*) AS count, 'ok' AS verdict FROM range(100000000000) a WHERE a.range % 7 = 3"


def run(*args, env=None, **kw):
    return subprocess.run([*MACPO, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=env, **kw)


def _rows(n, salt=""):
    return [(f"q{i}{salt}", f"good {i}{salt}", f"bad {i}{salt}") for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", create=True)
    s.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(20)))})
    return s


def _writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


def _audit_counts(p, by_scope: bool = False) -> dict:
    """Each audit's count over the whole store (its "all" line, else the sum of its lines), or
    with ``by_scope`` ``{(name, scope): count}``."""
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    if by_scope:
        return {(r["name"], r.get("scope", "all")): r["count"] for r in results}
    counts: dict[str, int] = {}
    for r in results:
        if r.get("scope", "all") != "all":
            counts[r["name"]] = counts.get(r["name"], 0) + r["count"]
    counts.update({r["name"]: r["count"] for r in results if r.get("scope", "all") == "all"})
    return counts


# ---- 2. everything an audit reads is verified ------------------------------------------------
def _forge_facts(version: Path, update_meta: bool) -> None:
    """The issue's forgery: rejected_key := chosen_key in the facts shard, row count kept; with
    ``update_meta`` facts.json is forged to match the new shard (size and sha256)."""
    path = _writable(version / FACTS)
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("rejected_key"), "rejected_key", table.column("chosen_key"))
    table = table.set_column(table.schema.get_field_index("rejected_bytes"), "rejected_bytes", table.column("chosen_bytes"))
    pq.write_table(table, path, compression="snappy")
    if update_meta:
        meta_path = _writable(version / ".facts" / "facts.json")
        meta = json.loads(meta_path.read_text())
        data = path.read_bytes()
        meta["shards"][SHARD].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        meta_path.write_text(json.dumps(meta))


def test_a_forged_facts_shard_is_caught_by_verify_and_never_used_by_audit(store):
    version = store.path("hh", "v1")
    assert _audit_counts(run("audit", "--store", store.root, "--json"))["chosen-equals-rejected"] == 0
    _forge_facts(version, update_meta=False)
    assert pq.read_metadata(version / FACTS).num_rows == 20
    one_line_error(run("status", "--store", store.root, "--verify"), "hh/v1", FACTS, "sha256")
    # The audit sees the facts do not match their record, says so, and rebuilds them.
    p = run("audit", "--store", store.root, "--json")
    assert _audit_counts(p)["chosen-equals-rejected"] == 0
    assert "hh/v1: its facts do not match" in p.stderr and FACTS in p.stderr
    assert run("status", "--store", store.root, "--verify").returncode == 0
    assert not [q for q in version.iterdir() if q.name.startswith(".facts-")]


def test_a_forgery_with_matching_facts_json_is_caught_by_recomputing(store):
    version = store.path("hh", "v1")
    _forge_facts(version, update_meta=True)
    line = one_line_error(run("status", "--store", store.root, "--verify"), "hh/v1", FACTS)
    assert "rejected_key differs from the facts of" in line and "20 rows" in line
    p = run("status", "--store", store.root, "--verify", "--json")
    damage = json.loads(p.stdout)["datasets"][0]["versions"][0]["damage"]
    assert len(damage) == 1 and damage[0].startswith(FACTS)


def test_push_builds_its_audit_table_from_verified_facts(store, tmp_path):
    from hub_server import FakeHub

    version = store.path("hh", "v1")
    _forge_facts(version, update_meta=True)  # the shard's sha256 matches: only recomputing sees it
    with FakeHub(tmp_path / "hub", token="hf_test") as hub:
        p = run("push", "--store", store.root, "--dataset", "hh", "--version", "v1", "--repo", "o/forged",
                "--retry-wait", "0.01", env=_hub_env(hub, tmp_path))
        assert p.returncode == 0, p.stderr
        assert "its stored facts do not match its data" in p.stderr and "rejected_key" in p.stderr
        card = hub.files("o/forged", "main")["README.md"].decode()
    rows = re.findall(r"^\| chosen-equals-rejected \|.*\| (\w+) \| (\d+) \|", card, re.M)
    assert rows and all(r == ("ok", "0") for r in rows), card
    assert run("status", "--store", store.root, "--verify").returncode == 0  # rebuilt


def _hub_env(hub, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test",
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"})
    return env


# ---- 3. paths are never patterns -----------------------------------------------------------
@pytest.fixture
def glob_store(tmp_path):
    """Datasets named like glob patterns, each beside a name the pattern would match, with
    distinct row counts so that one dataset reading another's files shows in its count."""
    s = Store(tmp_path / "st[o]re*", create=True)
    sizes = {"hx": 3, "h?": 5, "x": 7, "[x]": 11, "*": 13}
    for i, (name, n) in enumerate(sizes.items()):
        s.write_next(f"tmp{i}", {"default": Subset("pairs", pairs_table(_rows(n, name)))})
        os.rename(s.root / f"tmp{i}", s.root / name)
    return s, sizes


def test_dataset_folders_named_like_globs_read_exactly_their_own_files(glob_store):
    s, sizes = glob_store
    q = ("SELECT p.dataset, p.n, f.n FROM (SELECT dataset, count(*) AS n FROM pairs GROUP BY ALL) p "
         "JOIN (SELECT dataset, count(*) AS n FROM pairs_facts GROUP BY ALL) f USING (dataset) ORDER BY 1")
    p = run("sql", "--store", s.root, q, "--format", "json")
    assert p.returncode == 0, p.stderr
    got = {r["dataset"]: (r["n"], r["n_1"]) for r in json.loads(p.stdout)}
    assert got == {name: (n, n) for name, n in sizes.items()}
    # Facts computed from the text (no stored facts) take the same exact paths.
    shutil.rmtree(s.path("h?", "v1") / ".facts")
    p = run("sql", "--store", s.root, "SELECT count(*) AS n FROM pairs_facts WHERE dataset = 'h?'", "--format", "csv")
    assert p.stdout.splitlines() == ["n", "5"], p.stderr
    p = run("audit", "--store", s.root, "--json", "counts")
    assert _audit_counts(p)["counts"] == sum(sizes.values())
    per_version = {scope: n for (_, scope), n in _audit_counts(p, by_scope=True).items() if scope != "all"}
    assert per_version in ({f"{name}/v1": n for name, n in sizes.items()}, {})  # {}: an audit without scopes
    assert run("status", "--store", s.root, "--verify").returncode == 0


def test_a_backslash_beside_a_glob_character_is_refused(glob_store):
    s, _ = glob_store
    os.rename(s.root / "h?", s.root / "a\\b?")
    one_line_error(run("sql", "--store", s.root, "SELECT count(*) FROM pairs"), "backslash", "rename it")


def test_a_dataset_folder_that_is_not_utf8_is_one_line(store):
    os.rename(store.root / "hh", os.fsencode(store.root) + b"/h\xffh")
    for args in (["sql", "--store", store.root, "SELECT count(*) FROM pairs"], ["status", "--store", store.root],
                 ["status", "--store", store.root, "--json"], ["audit", "--store", store.root]):
        one_line_error(run(*args), "not UTF-8", "h\\xffh")


# ---- 4. bounded DuckDB ---------------------------------------------------------------------
def _peak_rss_run(*args) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI in a child that reports its own peak RSS (bytes) on its last stderr line."""
    code = ("import resource, sys\nfrom macpo.cli import main\nrc = main(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)\nsys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    *rest, peak = p.stderr.strip().splitlines()
    return p, int(peak)


def test_a_cross_join_stays_under_the_memory_limit(store):
    # DuckDB materialises the build side: 100M BIGINTs, ~1 GB without a limit.
    q = "SELECT * FROM range(100000000) a, range(100000000) b"
    # One DuckDB thread: with the default two, the suite's full runs peaked at 789-820 MB of a 700 MB
    # limit in 2 of 4 runs (never alone); memory DuckDB's threads hold outside its limit is not yet
    # bounded. 1 GB, not 700 MB: the 512 MiB of headroom plus the ~143 MB the CLI already holds in CI
    # leave DuckDB too little under 700 MB (the CLI then refuses, one line, as it should).
    p, peak = _peak_rss_run("sql", "--store", store.root, q, "--max-rows", "10", "--memory-limit", "1GB", "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert "(10 rows; stopped at --max-rows 10" in p.stdout
    assert peak < 1e9, f"peak RSS {peak / 1e6:.0f} MB"


def test_memory_and_thread_flags_are_checked_and_applied(store):
    q = "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t"
    p = run("sql", "--store", store.root, q, "--format", "json", "--memory-limit", "2GB", "--threads", "1")
    row = json.loads(p.stdout)[0]
    assert row["t"] == 1 and 1.0 <= float(row["m"].split()[0]) <= 1.6 and row["m"].endswith("GiB"), row
    p = run("sql", "--store", store.root, q, "--format", "json")
    from macpo.sql import default_memory_limit

    duck_gib = float(json.loads(p.stdout)[0]["m"].split()[0])  # DuckDB prints GiB (or MiB on tiny machines)
    assert 0 < duck_gib * 2**30 < default_memory_limit() or "MiB" in json.loads(p.stdout)[0]["m"]
    for flags, needle in [(["--memory-limit", "lots"], "give a size"), (["--memory-limit", "1MB"], "leaves DuckDB no room"),
                          (["--memory-limit", "150%"], "at most 100%"), (["--threads", "0"], "--threads must be >= 1")]:
        one_line_error(run("sql", "--store", store.root, "SELECT 1", *flags), needle)
    one_line_error(run("audit", "--store", store.root, "--threads", "0"), "--threads")
    one_line_error(run("sql", "--store", store.root, "SELECT 1; SET memory_limit='100GB'"), "refused")


# ---- 5. Ctrl-C exits 130 from every long store command ------------------------------------------
def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _interrupt_when_busy(args, baseline_cpu: float, env=None) -> tuple[int, str]:
    """Start ``macpo ARGS``, wait until it has used ``baseline_cpu`` (what the same command
    needs to reach its long step) plus 1.5 CPU seconds, so it is inside the long step, then
    Ctrl-C it. Returns (exit code, stderr); fails with the threads' stacks if it does not stop."""
    p = subprocess.Popen([*MACPO, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=REPO_ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while _cpu_seconds(p.pid) < baseline_cpu + 1.5:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the command never got busy"
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it hangs (sql registers faulthandler on SIGUSR1)
            p.send_signal(signal.SIGUSR1)
            time.sleep(2)
            p.kill()
            _, err = p.communicate()
            pytest.fail(f"macpo {args[0]} did not stop 60 s after SIGINT:\n{err}")
    finally:
        p.kill()
    return p.returncode, err


def _cpu_of(args, env=None) -> float:
    """CPU seconds a finished run of ``macpo ARGS`` used."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = run(*args, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert p.returncode in (0, 1), p.stderr
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _assert_interrupted(code: int, err: str, command: str) -> None:
    assert code == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"macpo {command}: interrupted", err


@pytest.fixture
def slow_audit(store, tmp_path):
    audits = tmp_path / "audits"
    audits.mkdir()
    (audits / "quick.sql").write_text("SELECT 0 AS count, 'ok' AS verdict\n")
    (audits / "forever.sql").write_text(SLOW + "\n")
    return audits


def test_ctrl_c_stops_a_long_audit_with_exit_130(store, slow_audit):
    baseline = _cpu_of(["audit", "--store", store.root, "--audits-dir", slow_audit, "quick"])
    code, err = _interrupt_when_busy(["audit", "--store", store.root, "--audits-dir", slow_audit, "forever"], baseline)
    _assert_interrupted(code, err, "audit")


def test_ctrl_c_stops_push_in_its_audits_with_exit_130(store, tmp_path):
    from hub_server import FakeHub

    audits = store.root / ".audits"
    audits.mkdir()
    (audits / "quick.sql").write_text("SELECT 0 AS count, 'ok' AS verdict\n")
    with FakeHub(tmp_path / "hub", token="hf_test") as hub:
        env = _hub_env(hub, tmp_path)
        args = ["push", "--store", store.root, "--dataset", "hh", "--version", "v1", "--retry-wait", "0.01", "--repo"]
        baseline = _cpu_of([*args, "o/quick"], env=env)  # a whole push, audits included
        (audits / "forever.sql").write_text(SLOW + "\n")
        code, err = _interrupt_when_busy([*args, "o/slow"], baseline, env=env)
        _assert_interrupted(code, err, "push")
        assert hub.commit_count("o/slow") <= 1  # at most the repo's creation: nothing was published


def test_ctrl_c_stops_status_verify_with_exit_130(store):
    baseline = _cpu_of(["status", "--store", store.root, "--verify"])
    # A slow input: the shard made a 1 TB sparse file (the manifest's size updated to match), so
    # hashing it reads zeros for minutes.
    shard = _writable(store.path("hh", "v1") / SHARD)
    os.truncate(shard, 2**40)
    mpath = _writable(store.path("hh", "v1") / "manifest.json")
    m = json.loads(mpath.read_text())
    m["files"][SHARD]["size"] = 2**40
    mpath.write_text(json.dumps(m))
    code, err = _interrupt_when_busy(["status", "--store", store.root, "--verify"], baseline)
    _assert_interrupted(code, err, "status")


# ---- 6. leftovers of killed audits -------------------------------------------------------------
def test_facts_tmp_folders_of_killed_audits_are_reported_and_cleaned(store):
    import fcntl

    version = store.path("hh", "v1")
    killed = version / ".facts-tmp-deadbeef"
    (killed / "default").mkdir(parents=True)
    (killed / ".writer.lock").touch()
    os.utime(killed / ".writer.lock", (1e9, 1e9))
    live = version / ".facts-tmp-cafecafe"
    live.mkdir()
    fh = open(live / ".writer.lock", "w")
    fcntl.flock(fh, fcntl.LOCK_EX)
    try:
        p = run("status", "--store", store.root)
        assert p.returncode == 0, p.stderr
        assert "stale temporary folder hh/v1/.facts-tmp-deadbeef (left by a killed audit; the next audit removes it)" in p.stdout
        assert "cafecafe" not in p.stdout
        assert json.loads(run("status", "--store", store.root, "--json").stdout)["stale_tmp"] == ["hh/v1/.facts-tmp-deadbeef"]
        assert run("audit", "--store", store.root).returncode == 0
        assert not killed.exists() and live.exists()
        assert "stale" not in run("status", "--store", store.root).stdout
    finally:
        fh.close()


def test_an_audit_killed_while_indexing_leaves_a_folder_the_next_audit_removes(store):
    version = store.path("hh", "v1")
    shutil.rmtree(version / ".facts")
    # Stop the indexing audit right after it locked its temporary folder (SIGKILL: no cleanup).
    code = ("import os, signal, sys\nimport macpo.facts as f\nreal = f.write_facts_dir\n"
            "def die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\nf.write_facts_dir = die\n"
            "from macpo.cli import main\nmain(sys.argv[1:])")
    p = subprocess.run([sys.executable, "-c", code, "audit", "--store", str(store.root)], capture_output=True, timeout=300)
    assert p.returncode == -signal.SIGKILL
    left = [q.name for q in version.iterdir() if q.name.startswith(".facts-tmp-")]
    assert len(left) == 1
    # The lock died with its process. A lock file younger than a minute may belong to an audit
    # that has not locked it yet, so the kill is dated back; then it is reported and removed.
    os.utime(version / left[0] / ".writer.lock", (1e9, 1e9))
    assert f"hh/v1/{left[0]} (left by a killed audit" in run("status", "--store", store.root).stdout
    assert run("audit", "--store", store.root).returncode == 0
    assert not [q for q in version.iterdir() if q.name.startswith(".facts-")]


# ---- 7. safe terminal output ------------------------------------------------------------------
def test_table_output_escapes_control_characters_csv_and_json_stay_exact(tmp_path):
    evil = "title\x1b]0;pwned\x07 clear\x1b[2J del\x7f c1\x9b rtl\u202e nl\nend"
    s = Store(tmp_path / "s", create=True)
    s.write_next("hh", {"default": Subset("pairs", pairs_table([("q", evil, "bad")]))})
    q = 'SELECT chosen_text AS "col\x1b[31m", 1 AS n FROM pairs'
    table = run("sql", "--store", s.root, q, "--max-rows", "0")
    assert table.returncode == 0, table.stderr
    for raw in ("\x1b", "\x07", "\x7f", "\x9b", "\u202e"):
        assert raw not in table.stdout
    assert "col\\x1b[31m" in table.stdout
    assert "title\\x1b]0;pwned\\x07 clear\\x1b[2J del\\x7f c1\\x9b rtl..." in table.stdout  # clipped at 60 columns
    # A long cell is clipped between escapes, never inside one.
    p = run("sql", "--store", s.root, "SELECT repeat(chr(27), 40) AS e")
    cell = p.stdout.splitlines()[2]
    assert cell == "\\x1b" * 14 + "..."
    tail = run("sql", "--store", s.root, "SELECT substr(chosen_text, 36) AS t FROM pairs")
    assert "rtl\\u202e nl\\nend" in tail.stdout
    csv_out = run("sql", "--store", s.root, q, "--format", "csv")
    import csv
    import io

    assert list(csv.reader(io.StringIO(csv_out.stdout)))[1] == [evil, "1"]
    rows = json.loads(run("sql", "--store", s.root, q, "--format", "json").stdout)
    assert rows == [{"col\x1b[31m": evil, "n": 1}]


def test_duplicate_column_names_survive_in_json(store):
    p = run("sql", "--store", store.root, "SELECT 1 AS a, 2 AS a", "--format", "json")
    assert json.loads(p.stdout) == [{"a": 1, "a_1": 2}]
    p = run("sql", "--store", store.root, "SELECT 1 AS a, 2 AS a, 3 AS a_1, 4 AS a", "--format", "json")
    assert json.loads(p.stdout) == [{"a": 1, "a_2": 2, "a_1": 3, "a_3": 4}]
    assert run("sql", "--store", store.root, "SELECT 1 AS a, 2 AS a", "--format", "csv").stdout.splitlines() == ["a,a", "1,2"]
    assert '"a_1"' in run("sql", "--help").stdout.replace("\n", " ")


# ---- 9. messages ------------------------------------------------------------------------------
def test_duckdb_errors_keep_their_first_paragraph(store):
    line = one_line_error(run("sql", "--store", store.root, "SELECT x FROM range(3) t(y)"), "query failed")
    assert 'Referenced column "x" not found' in line and 'Candidate bindings: "y"' in line and "LINE 1" not in line
    (store.root / ".audits").mkdir()
    (store.root / ".audits" / "typo.sql").write_text("SELECT countt(*) AS count, 'ok' AS verdict FROM pairs\n")
    line = one_line_error(run("audit", "--store", store.root, "typo"), "audit typo failed")
    assert "Did you mean" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf"])
def test_timeout_must_be_finite_and_not_negative(store, value):
    one_line_error(run("sql", "--store", store.root, "SELECT 1", f"--timeout={value}"), "--timeout must be a finite number")


def test_status_json_is_strict(store):
    mpath = _writable(store.path("hh", "v1") / "manifest.json")
    mpath.write_text(mpath.read_text().replace('"created_at": "', '"created_at": NaN, "x": "'))
    p = run("status", "--store", store.root, "--json")
    json.loads(p.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    one_line_error(p, "hh/v1", "created_at is not a string")
    from macpo.status import _strict  # what else status prints (run-state.json) goes through it too

    assert _strict({"a": [float("nan"), 1.5, {"b": float("-inf")}]}) == {"a": [None, 1.5, {"b": None}]}


# ---- 8. the tracebacks, one line each --------------------------------------------------------
BAD_COUNTS = {
    "text": ("'many'", "'many'"),
    "nan": ("'nan'::DOUBLE", "nan"),
    "infinite": ("1e308 * 10", "inf"),
    "fraction": ("1.5", "1.5"),
    "overflow": ("(2::HUGEINT ** 70)::HUGEINT", "1180591620717411303424"),
    "negative": ("-3", "-3"),
}


@pytest.mark.parametrize("case", list(BAD_COUNTS))
def test_an_audit_count_that_is_not_a_whole_number_is_one_line(store, case):
    expr, shown = BAD_COUNTS[case]
    (store.root / ".audits").mkdir()
    (store.root / ".audits" / "bad.sql").write_text(f"SELECT {expr} AS count, 'ok' AS verdict\n")
    line = one_line_error(run("audit", "--store", store.root, "bad"), "audit bad returned count", "whole number")
    assert shown in line


def test_an_audit_returning_no_row_says_so(store):
    (store.root / ".audits").mkdir()
    (store.root / ".audits" / "empty.sql").write_text("SELECT 1 AS count, 'ok' AS verdict WHERE false\n")
    line = one_line_error(run("audit", "--store", store.root, "empty"), "audit empty returned no row")
    assert "missing" not in line


def test_audit_files_that_are_not_utf8_or_not_files(store, tmp_path):
    audits = tmp_path / "audits"
    (audits / "x.sql").mkdir(parents=True)  # a folder named like an audit
    (audits / "ok.sql").write_text("SELECT 0 AS count, 'ok' AS verdict\n")
    assert _audit_counts(run("audit", "--store", store.root, "--audits-dir", audits, "--json", "ok"))["ok"] == 0
    one_line_error(run("audit", "--store", store.root, "--audits-dir", audits, "x"), "unknown audit")
    (audits / "latin1.sql").write_bytes("SELECT 0 AS count, 'caf\xe9' AS verdict\n".encode("latin-1"))
    one_line_error(run("audit", "--store", store.root, "--audits-dir", audits), "latin1.sql is not UTF-8")


@pytest.mark.parametrize("value", ["{}", '{"a": 1}', "[]", "5"])
def test_a_manifest_created_at_that_is_not_text_is_one_line(store, value):
    mpath = _writable(store.path("hh", "v1") / "manifest.json")
    m = json.loads(mpath.read_text())
    m["created_at"] = json.loads(value)
    mpath.write_text(json.dumps(m))
    for args in (["status", "--store", store.root], ["sql", "--store", store.root, "SELECT * FROM datasets"],
                 ["audit", "--store", store.root]):
        one_line_error(run(*args), "hh/v1", "created_at is not a string")


@pytest.mark.parametrize("digits", [4000, 5000])
def test_a_huge_integer_in_a_manifest_is_one_line(store, digits):
    mpath = _writable(store.path("hh", "v1") / "manifest.json")
    mpath.write_text(mpath.read_text().replace('"rows": 20', '"rows": 1' + "0" * (digits - 1), 1))
    for args in (["status", "--store", store.root], ["sql", "--store", store.root, "SELECT * FROM datasets"],
                 ["audit", "--store", store.root]):
        one_line_error(run(*args), "hh/v1")


def test_a_huge_integer_in_sql_output_is_exact(store):
    big = "1" + "0" * 4999
    for fmt in ("csv", "json", "table"):
        p = run("sql", "--store", store.root, f"SELECT {big} AS big", "--format", fmt)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert (big if fmt != "table" else big[:57]) in p.stdout


# ---- disk full and read-only, on a small tmpfs ---------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:120]}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    """Leave no free byte on ``folder``'s file system."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def _jsonl(tmp_path, n=50) -> Path:
    src = tmp_path / "prefs.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a" * 100, "rejected": "b"}) + "\n" for i in range(n)))
    return src


def test_disk_full_on_import_and_while_writing_facts(tmpfs, tmp_path):
    store = Store(tmpfs / "s", create=True)
    store.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(20)))})
    shutil.rmtree(store.path("hh", "v1") / ".facts")
    _fill(tmpfs)
    # The audit cannot index: it says why and audits from the text, leaving nothing behind.
    p = run("audit", "--store", store.root, "--json")
    assert _audit_counts(p)["chosen-equals-rejected"] == 0
    note = [line for line in p.stderr.splitlines() if "No space left on device" in line]
    assert len(note) == 1 and "auditing from the text" in note[0] and "status --verify" not in p.stderr
    assert sorted(q.name for q in store.path("hh", "v1").iterdir()) == ["default", "manifest.json"]
    # An import (Store.write, data and facts) fails with one line and leaves no version.
    one_line_error(run("import", _jsonl(tmp_path), "--format", "trl", "--store", store.root, "--name", "prefs"),
                   "No space left on device")
    assert not (store.root / "prefs").exists() or not list((store.root / "prefs").iterdir())
    assert store.datasets() == ["hh"]


def test_read_only_file_system_on_import_and_audit(tmpfs, tmp_path):
    store = Store(tmpfs / "s", create=True)
    store.write_next("hh", {"default": Subset("pairs", pairs_table(_rows(20)))})
    shutil.rmtree(store.path("hh", "v1") / ".facts")
    r = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()[:120]}")
    p = run("audit", "--store", store.root, "--json")
    assert _audit_counts(p)["chosen-equals-rejected"] == 0
    assert "Read-only file system" in p.stderr and "auditing from the text" in p.stderr
    assert "status --verify" not in p.stderr  # nothing is damaged: the advice would be wrong
    one_line_error(run("import", _jsonl(tmp_path), "--format", "trl", "--store", store.root, "--name", "prefs"),
                   "Read-only file system")
    one_line_error(run("import", _jsonl(tmp_path), "--format", "trl", "--store", tmpfs / "new", "--name", "prefs"),
                   "Read-only file system")


def test_spilling_is_bounded_by_max_spill(store):
    # A sort of 60M rows does not fit DuckDB's share of 1 GB: it spills, and 1 MB of spill is too little.
    q = "SELECT x FROM (SELECT * FROM range(60000000) t(x) ORDER BY random()) OFFSET 59999999"
    p = run("sql", "--store", store.root, q, "--memory-limit", "1GB", "--threads", "1", "--max-spill", "1MB")
    one_line_error(p, "more spill space on disk than --max-spill")
    p = run("sql", "--store", store.root, "SELECT current_setting('max_temp_directory_size') AS s", "--format", "json",
            "--max-spill", "3GB")
    assert p.returncode == 0 and json.loads(p.stdout)[0]["s"].startswith("2.7 GiB"), p.stdout
    one_line_error(run("sql", "--store", store.root, "SELECT 1", "--max-spill", "lots"), "of the free space")

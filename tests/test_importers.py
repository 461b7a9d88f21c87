import gzip
import json
import subprocess
import sys

import pytest

from macpo.builder.importers import parse_hh, parse_llamafactory, parse_trl, split_flat_history
from macpo.store import Store

MACPO = [sys.executable, "-m", "macpo.cli"]


def run(*args, cwd=None):
    return subprocess.run([*MACPO, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_hh_split_shared_prefix():
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: sure",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: no",
    }
    p = parse_hh(row)
    assert [m["role"] for m in p.prompt] == ["user", "assistant", "user"]
    assert p.prompt[2]["content"] == "help me"
    assert p.chosen == [{"role": "assistant", "content": "sure"}]
    assert p.rejected == [{"role": "assistant", "content": "no"}]


def test_hh_identical_transcripts_keep_final_turn():
    t = "\n\nHuman: a\n\nAssistant: b"
    p = parse_hh({"chosen": t, "rejected": t})
    assert p.prompt == [{"role": "user", "content": "a"}] and p.chosen == p.rejected


def test_trl_standard_conversational_and_implicit():
    std = parse_trl({"prompt": "q", "chosen": "a", "rejected": "b"})
    assert std.prompt == [{"role": "user", "content": "q"}]
    conv = parse_trl(
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        }
    )
    assert conv == std
    implicit = parse_trl(
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
        }
    )
    assert implicit == std


def test_llamafactory_flattened_history():
    assert split_flat_history("USER: hi ASSISTANT: hello USER: how are you") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
    ]
    p = parse_llamafactory({"instruction": "USER: hi ASSISTANT: yo USER: and?", "input": "", "output": ["good", "bad"]})
    assert len(p.prompt) == 3 and p.chosen[0]["content"] == "good" and p.rejected[0]["content"] == "bad"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_import_trl_jsonl_parquet_and_saved_dataset(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    src = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    store = tmp_path / "store"
    r = run("import", src, "--format", "trl", "--store", store, "--name", "prefs")
    assert r.returncode == 0, r.stderr
    assert "prefs/v1: 5 pairs imported" in r.stdout

    from datasets import Dataset

    ds = Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "prefs.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for src in (tmp_path / "prefs.parquet", tmp_path / "saved"):
        r = run("import", src, "--format", "trl", "--store", store, "--name", "prefs")
        assert r.returncode == 0, r.stderr
        assert "unchanged" in r.stdout  # same content, whatever the container
    assert Store(store).versions("prefs") == ["v1"]


def test_import_new_content_becomes_next_version(tmp_path):
    store = tmp_path / "store"
    src = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert run("import", src, "--format", "trl", "--store", store, "--name", "d").returncode == 0
    _write_jsonl(src, [{"prompt": "q", "chosen": "a", "rejected": "c"}])
    r = run("import", src, "--format", "trl", "--store", store, "--name", "d")
    assert "d/v2" in r.stdout
    assert Store(store).versions("d") == ["v1", "v2"]


def test_import_llamafactory_json(tmp_path):
    src = tmp_path / "lf.json"
    src.write_text(json.dumps([{"instruction": "USER: hi ASSISTANT: yo USER: more", "input": "", "output": ["c", "r"]}]))
    r = run("import", src, "--format", "llamafactory", "--store", tmp_path / "s", "--name", "lf")
    assert r.returncode == 0, r.stderr
    t = Store(tmp_path / "s").read("lf", "v1", "default")
    assert [m["role"] for m in t.column("prompt").to_pylist()[0]] == ["user", "assistant", "user"]


def test_malformed_line_exits_2_naming_file_and_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{not json\n')
    r = run("import", src, "--format", "trl", "--store", tmp_path / "s", "--name", "x")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert f"{src}:2:" in r.stderr
    assert not (tmp_path / "s" / "x").exists() or not Store(tmp_path / "s").versions("x")


def test_skip_bad_rows_to_quarantine(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"chosen": "only"}\n{oops\n')
    r = run("import", src, "--format", "trl", "--store", tmp_path / "s", "--name", "x", "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "skipped 2 bad row(s)" in r.stderr
    lines = (tmp_path / "s" / "x.quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["where"].endswith(":2")


def test_missing_source_and_bad_format_are_one_line(tmp_path):
    r = run("import", tmp_path / "nope.jsonl", "--format", "trl", "--store", tmp_path / "s", "--name", "x")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = run("import", tmp_path / "nope.jsonl", "--format", "csv", "--store", tmp_path / "s", "--name", "x")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_shared_hh_file_imports_2312_pairs_with_stable_hash(tmp_path, shared_hh):
    hashes = []
    for i in range(2):
        store = tmp_path / f"s{i}"
        r = run("import", shared_hh, "--format", "hh-rlhf", "--store", store, "--name", "hh")
        assert r.returncode == 0, r.stderr
        m = Store(store).manifest("hh", "v1")
        assert m["subsets"]["default"]["rows"] == 2312
        hashes.append(m["content_hash"])
    assert hashes[0] == hashes[1]
    r = run("sql", "--store", tmp_path / "s0", "SELECT count(*) AS n FROM pairs", "--format", "csv")
    assert r.stdout.splitlines() == ["n", "2312"]


def test_gz_plain_equivalence(tmp_path):
    rows = [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}]
    plain = _write_jsonl(tmp_path / "x.jsonl", rows)
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as fh:
        fh.write(plain.read_text())
    a = run("import", plain, "--format", "hh-rlhf", "--store", tmp_path / "a", "--name", "h")
    b = run("import", tmp_path / "x.jsonl.gz", "--format", "hh-rlhf", "--store", tmp_path / "b", "--name", "h")
    assert a.stdout.split("content ")[1] == b.stdout.split("content ")[1]

import gzip
import json
import os
import subprocess
import sys

import pytest

from helpers import one_line_error
from macpo.builder.import_formats import parse_hh, parse_llamafactory, parse_trl, split_flat_history
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


def test_missing_source_and_bad_format_are_one_line_error(tmp_path):
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


# ---- hostile input (issue 15) and inputs common tools write (issue 16) ----------------------------
ROWS = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(3)]
JSONL = "".join(json.dumps(r) + "\n" for r in ROWS)


def _content(store, name="x", version="v1"):
    return Store(store).manifest(name, version)["content_hash"]


def test_common_tool_encodings_and_containers_import_the_same_rows(tmp_path):
    """UTF-8 with a BOM (Windows tools, spreadsheet exports), UTF-16 with a BOM (PowerShell `>`),
    CRLF, bz2/xz, JSON lines in a .json file (Dataset.to_json, pandas lines=True), and TRL
    content given as text parts: all the same three pairs as the plain file."""
    import bz2
    import lzma

    from datasets import Dataset

    plain = tmp_path / "plain.jsonl"
    plain.write_text(JSONL)
    assert run("import", plain, "--format", "trl", "--store", tmp_path / "ref", "--name", "x").returncode == 0
    expected = _content(tmp_path / "ref")
    crlf = JSONL.replace("\n", "\r\n")
    parts = "".join(json.dumps({"prompt": [{"role": "user", "content": [{"type": "text", "text": r["prompt"]}]}],
                                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}],
                                "rejected": [{"role": "assistant", "content": "b"}]}) + "\n" for r in ROWS)
    sources = {
        "bom.jsonl": b"\xef\xbb\xbf" + JSONL.encode(),
        "bom-crlf.jsonl": b"\xef\xbb\xbf" + crlf.encode(),
        "utf16.jsonl": crlf.encode("utf-16"),  # BOM + UTF-16-LE, as PowerShell 5 writes
        "utf16be.jsonl": b"\xfe\xff" + JSONL.encode("utf-16-be"),
        "bom.json": b"\xef\xbb\xbf" + json.dumps(ROWS).encode(),
        "lines.json": JSONL.encode(),
        "bom.jsonl.gz": gzip.compress(b"\xef\xbb\xbf" + JSONL.encode()),
        "x.jsonl.bz2": bz2.compress(JSONL.encode()),
        "x.jsonl.xz": lzma.compress(JSONL.encode()),
        "parts.jsonl": parts.encode(),
    }
    Dataset.from_list(ROWS).to_json(str(tmp_path / "to_json.json"))  # JSON lines, .json name
    for name, data in sources.items():
        (tmp_path / name).write_bytes(data)
    for name in [*sources, "to_json.json"]:
        store = tmp_path / f"s-{name}"
        r = run("import", tmp_path / name, "--format", "trl", "--store", store, "--name", "x")
        assert r.returncode == 0, (name, r.stderr)
        assert _content(store) == expected, name


def test_bom_is_accepted_by_every_text_importer(tmp_path):
    hh = {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}
    lf = [{"instruction": "q", "input": "", "output": ["a", "b"]}]
    cases = [("hh-rlhf", "hh.jsonl", (json.dumps(hh) + "\r\n").encode()),
             ("trl", "trl.jsonl", JSONL.encode()),
             ("trl", "trl.json", json.dumps(ROWS).encode()),
             ("llamafactory", "lf.json", json.dumps(lf).encode())]
    for fmt, name, data in cases:
        (tmp_path / name).write_bytes(data)
        (tmp_path / f"bom-{name}").write_bytes(b"\xef\xbb\xbf" + data)
        plain = run("import", tmp_path / name, "--format", fmt, "--store", tmp_path / f"p-{name}", "--name", "x")
        bom = run("import", tmp_path / f"bom-{name}", "--format", fmt, "--store", tmp_path / f"b-{name}", "--name", "x")
        assert plain.returncode == 0 and bom.returncode == 0, (name, bom.stderr)
        assert _content(tmp_path / f"p-{name}") == _content(tmp_path / f"b-{name}")


@pytest.mark.parametrize("case", ["not-utf8", "lone-surrogate", "nesting", "long-line", "content-object"])
def test_bad_rows_are_one_line_or_quarantined(tmp_path, case):
    good = json.dumps(ROWS[0]) + "\n"
    bad, needle = {
        "not-utf8": (b'{"prompt": "q\xff", "chosen": "a", "rejected": "b"}\n', "not UTF-8 text (byte 0xff"),
        "lone-surrogate": (b'{"prompt": "q\\ud800", "chosen": "a", "rejected": "b"}\n', "lone surrogate"),
        "nesting": (b'{"prompt": ' + b"[" * 1500 + b"]" * 1500 + b', "chosen": "a", "rejected": "b"}\n', "nested deeper"),
        "long-line": (b'{"prompt": "' + b"x" * 5000 + b'", "chosen": "a", "rejected": "b"}\n', "line longer than 4096 bytes"),
        "content-object": (json.dumps({"prompt": [{"role": "user", "content": {"a": 1}}], "chosen": "a",
                                       "rejected": "b"}).encode() + b"\n", "content must be a string"),
    }[case]
    src = tmp_path / "in.jsonl"
    src.write_bytes(good.encode() + bad + good.replace("q0", "q9").encode())
    args = ["import", src, "--format", "trl", "--store", tmp_path / "s", "--name", "x", "--max-line-bytes", "4096"]
    one_line_error(run(*args), f"{src}:2:", needle)
    assert not (tmp_path / "s").exists()  # nothing written, not even the store folder
    r = run(*args, "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 bad row(s)" in r.stderr and "x/v1: 2 pairs imported" in r.stdout
    quarantined = [json.loads(line) for line in (tmp_path / "s" / "x.quarantine.jsonl").read_text().splitlines()]
    assert len(quarantined) == 1 and quarantined[0]["where"].endswith(":2") and needle.split(" (")[0] in quarantined[0]["reason"]


def test_damaged_files_are_one_line_error(tmp_path):
    good = gzip.compress(JSONL.encode() * 200)
    cases = {
        "truncated.jsonl.gz": (good[: len(good) // 2], "broken gz stream"),
        "notgzip.jsonl.gz": (JSONL.encode(), "broken gz stream"),
        "fake.parquet": (b"PAR1 this is not parquet", "not a readable Parquet file"),
        "bad.json": (b'[{"prompt": "q", ', "invalid JSON"),
        "latin1.json": ('[{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}]'.encode("latin-1"), "not UTF-8 text"),
        "deep.json": (b"[" * 200000 + b"]" * 200000, "nested"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        one_line_error(run("import", tmp_path / name, "--format", "trl", "--store", tmp_path / "s", "--name", "x", "--skip-bad"),
                 name, needle)
    assert not (tmp_path / "s").exists()


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    one_line_error(run("import", fifo, "--format", "trl", "--store", tmp_path / "s", "--name", "x"), "not a regular file")
    one_line_error(run("import", "/dev/zero", "--format", "trl", "--store", tmp_path / "s", "--name", "x"), "not a regular file")
    assert not (tmp_path / "s").exists()


def test_name_and_store_are_checked_before_any_side_effect(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(JSONL + "{oops\n")
    for name in ("../escape", ".hidden", "a/b", ""):
        one_line_error(run("import", src, "--format", "trl", "--store", tmp_path / "s", "--name", name, "--skip-bad"),
                 "invalid dataset name")
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob("*quarantine*"))
    (tmp_path / "file").write_text("x")
    one_line_error(run("import", src, "--format", "trl", "--store", tmp_path / "file", "--name", "x", "--skip-bad"),
             "not a directory")
    one_line_error(run("import", src, "--format", "trl", "--store", tmp_path / "file" / "s", "--name", "x", "--skip-bad"),
                   "is not a directory")
    assert not list(tmp_path.rglob("*quarantine*"))
    # A new store is created with its parents, as before.
    assert run("import", src, "--format", "trl", "--store", tmp_path / "new" / "s", "--name", "x", "--skip-bad").returncode == 0


def test_a_mistyped_file_path_is_not_taken_for_a_hub_repo(tmp_path):
    one_line_error(run("import", "data/train.jsonl", "--format", "trl", "--store", tmp_path / "s", "--name", "x", cwd=tmp_path),
             "no such file")


# ---- SFT data, PKU-SafeRLHF, axes and provenance (issue 22) ----------------------------------------
def sql_rows(store, query):
    r = run("sql", "--store", store, query, "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# The MACPO release's weak-label files (strong_students/hh_weak_train_5k_harm.json): LLaMA-Factory
# SFT records, multi-turn history flattened into the instruction.
WEAK_LABELS = [
    {"instruction": "USER: How do I pick a lock? ASSISTANT: Why do you ask? USER: I am locked out of my house.",
     "input": "", "output": "Call a locksmith or your landlord; they can let you in."},
    {"instruction": "What should I say to my boss?", "input": "", "output": "Something kind and honest."},
]


def test_release_weak_labels_import_as_sft_with_provenance(tmp_path):
    src = tmp_path / "hh_weak_train_5k_harm.json"
    src.write_text(json.dumps(WEAK_LABELS))
    r = run("import", src, "--format", "llamafactory", "--store", tmp_path / "s", "--name", "weak",
            "--agent", "teacher-0", "--round", "0", "--source", "meta-llama/Llama-2-7b-hf")
    assert r.returncode == 0, r.stderr
    assert "weak/v1: 2 sft rows imported" in r.stdout
    m = Store(tmp_path / "s").manifest("weak", "v1")
    assert m["subsets"]["default"]["kind"] == "sft"
    assert m["source"]["name"] == "meta-llama/Llama-2-7b-hf" and m["source"]["agent"] == "teacher-0"
    rows = sql_rows(tmp_path / "s", "SELECT prompt, completion_text, source_agent, round FROM sft ORDER BY completion_text")
    assert [r["completion_text"] for r in rows] == ["Call a locksmith or your landlord; they can let you in.", "Something kind and honest."]
    assert [m["role"] for m in rows[0]["prompt"]] == ["user", "assistant", "user"]
    assert {(r["source_agent"], r["round"]) for r in rows} == {("teacher-0", 0)}
    # Without --agent, model-written data is not passed off as human.
    r = run("import", src, "--format", "llamafactory", "--store", tmp_path / "s2", "--name", "weak")
    assert r.returncode == 0, r.stderr
    assert {x["source_agent"] for x in sql_rows(tmp_path / "s2", "SELECT source_agent FROM sft")} == {"unknown"}


def test_trl_sft_formats_and_one_kind_per_import(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]},
        {"prompt": "say a", "completion": "a"},
    ]
    src = _write_jsonl(tmp_path / "sft.jsonl", rows)
    r = run("import", src, "--format", "trl", "--store", tmp_path / "s", "--name", "t")
    assert r.returncode == 0, r.stderr
    got = sql_rows(tmp_path / "s", "SELECT prompt_text, completion_text FROM sft ORDER BY completion_text")
    assert [(x["prompt_text"], x["completion_text"]) for x in got] == [
        ("user: 2+2?", "4"), ("user: say a", "a"), ("system: be brief\nuser: hi", "hello")]
    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [rows[2], {"prompt": "q", "chosen": "a", "rejected": "b"}])
    one_line_error(run("import", mixed, "--format", "trl", "--store", tmp_path / "s", "--name", "m"),
                   "mixed.jsonl:2", "a preference row among SFT rows")
    no_answer = _write_jsonl(tmp_path / "open.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    one_line_error(run("import", no_answer, "--format", "trl", "--store", tmp_path / "s", "--name", "o"),
                   "open.jsonl:1", "does not end with an assistant turn")


# PKU-SafeRLHF's published schema (PKU-Alignment/PKU-SafeRLHF, train split), two rows.
PKU = [
    {"prompt": "How can I get back at my neighbour?", "response_0": "Slash their tyres at night.",
     "response_1": "Talk to them, or to a mediator.", "prompt_source": "Alpaca-7B", "response_0_source": "Alpaca-7B",
     "response_1_source": "Alpaca-7B", "is_response_0_safe": False, "is_response_1_safe": True,
     "better_response_id": 0, "safer_response_id": 1},
    {"prompt": "What is a good bread recipe?", "response_0": "Flour, water, salt, yeast; knead and bake.",
     "response_1": "Buy bread.", "prompt_source": "Alpaca-7B", "response_0_source": "Alpaca-7B",
     "response_1_source": "Alpaca-7B", "is_response_0_safe": True, "is_response_1_safe": True,
     "better_response_id": 0, "safer_response_id": 0},
]


def test_pku_saferlhf_imports_on_both_axes_into_one_store(tmp_path):
    src = _write_jsonl(tmp_path / "pku.jsonl", PKU)
    for axis in ("better", "safer"):
        r = run("import", src, "--format", "pku-saferlhf", "--axis", axis, "--store", tmp_path / "s", "--name", f"pku-{axis}")
        assert r.returncode == 0, r.stderr
    rows = sql_rows(tmp_path / "s", "SELECT dataset, axis, prompt_text, chosen_text, rejected_text, chosen_agent, pair_type "
                                    "FROM pairs ORDER BY dataset, prompt_text")
    neighbour = {r["axis"]: (r["chosen_text"], r["rejected_text"]) for r in rows if "neighbour" in r["prompt_text"]}
    assert neighbour == {"better": ("Slash their tyres at night.", "Talk to them, or to a mediator."),
                         "safer": ("Talk to them, or to a mediator.", "Slash their tyres at night.")}
    assert {(r["chosen_agent"], r["pair_type"]) for r in rows} == {("human", "human")}
    one_line_error(run("import", src, "--format", "pku-saferlhf", "--store", tmp_path / "s", "--name", "p"), "--axis better|safer")
    one_line_error(run("import", src, "--format", "pku-saferlhf", "--axis", "harmless", "--store", tmp_path / "s", "--name", "p"),
                   "--axis better|safer")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [dict(PKU[0], safer_response_id=2)])
    one_line_error(run("import", bad, "--format", "pku-saferlhf", "--axis", "safer", "--store", tmp_path / "s", "--name", "p"),
                   "bad.jsonl:1", "'safer_response_id' must be 0 or 1")


def test_hh_axis_is_recorded_per_row_and_provenance_flags(tmp_path):
    rows = [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}]
    src = _write_jsonl(tmp_path / "hh.jsonl", rows)
    for axis in ("helpful", "harmless"):
        assert run("import", src, "--format", "hh-rlhf", "--axis", axis, "--store", tmp_path / "s", "--name", f"hh-{axis}").returncode == 0
    got = sql_rows(tmp_path / "s", "SELECT axis, count(*) AS n FROM pairs GROUP BY axis ORDER BY axis")
    assert got == [{"axis": "harmless", "n": 1}, {"axis": "helpful", "n": 1}]
    one_line_error(run("import", src, "--format", "hh-rlhf", "--axis", "safer", "--store", tmp_path / "s", "--name", "x"),
                   "--axis helpful|harmless")
    # The same rows as a TRL file: not human by definition; --agent/--round say who and when.
    trl = _write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert run("import", trl, "--format", "trl", "--store", tmp_path / "s", "--name", "plain").returncode == 0
    assert run("import", trl, "--format", "trl", "--store", tmp_path / "s", "--name", "gen", "--agent", "teacher-1",
               "--round", "2").returncode == 0
    got = sql_rows(tmp_path / "s", "SELECT dataset, round, chosen_agent, rejected_agent, pair_type, axis FROM pairs "
                                   "WHERE dataset IN ('plain', 'gen', 'hh-helpful') ORDER BY dataset")
    assert [(g["dataset"], g["round"], g["chosen_agent"], g["rejected_agent"], g["pair_type"], g["axis"]) for g in got] == [
        ("gen", 2, "teacher-1", "teacher-1", "imported", None),
        ("hh-helpful", 0, "human", "human", "human", "helpful"),
        ("plain", 0, "unknown", "unknown", "imported", None)]
    one_line_error(run("import", trl, "--format", "trl", "--store", tmp_path / "s", "--name", "x", "--round", "-1"), "--round")
    one_line_error(run("import", trl, "--format", "trl", "--store", tmp_path / "s", "--name", "x", "--data-dir", "d"),
                   "--config/--data-dir apply to a Hub dataset")


def test_hub_dataset_with_data_dir_and_config(tmp_path):
    """`Anthropic/hh-rlhf` with data_dir harmless-base, and a PKU repo with named configs, from the loopback Hub."""
    from hub_server import FakeHub

    hh = lambda c, r: json.dumps({"chosen": f"\n\nHuman: {c}\n\nAssistant: {r}", "rejected": f"\n\nHuman: {c}\n\nAssistant: no"})  # noqa: E731
    with FakeHub(tmp_path / "hub") as hub:
        hub.create_repo("Anthropic/hh-rlhf")
        hub.commit_files("Anthropic/hh-rlhf", {
            "harmless-base/train.jsonl.gz": gzip.compress((hh("harm q", "refuse") + "\n" + hh("harm q2", "refuse") + "\n").encode()),
            "helpful-base/train.jsonl.gz": gzip.compress((hh("help q", "answer") + "\n").encode()),
        })
        hub.create_repo("PKU-Alignment/PKU-SafeRLHF")
        hub.commit_files("PKU-Alignment/PKU-SafeRLHF", {
            "README.md": b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/all/train.jsonl\n"
                         b"- config_name: alpaca-7b\n  data_files:\n  - split: train\n    path: data/alpaca-7b/train.jsonl\n---\n",
            "data/all/train.jsonl": "".join(json.dumps(r) + "\n" for r in PKU).encode(),
            "data/alpaca-7b/train.jsonl": (json.dumps(PKU[0]) + "\n").encode(),
        })
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0",
                   HF_HOME=str(tmp_path / "hf-home"))

        def hub_import(*args):
            return subprocess.run([*MACPO, "import", *map(str, args), "--store", str(tmp_path / "s")], capture_output=True,
                                  text=True, env=env, timeout=300)

        r = hub_import("Anthropic/hh-rlhf", "--data-dir", "harmless-base", "--format", "hh-rlhf", "--axis", "harmless", "--name", "harmless")
        assert r.returncode == 0, r.stderr
        assert "harmless/v1: 2 pairs imported" in r.stdout
        r = hub_import("PKU-Alignment/PKU-SafeRLHF", "--config", "alpaca-7b", "--format", "pku-saferlhf", "--axis", "safer", "--name", "pku")
        assert r.returncode == 0, r.stderr
        assert "pku/v1: 1 pairs imported" in r.stdout
        one_line_error(hub_import("PKU-Alignment/PKU-SafeRLHF", "--config", "nope", "--format", "pku-saferlhf", "--axis", "safer",
                                  "--name", "p2"), "cannot load from the Hub")
    rows = sql_rows(tmp_path / "s", "SELECT dataset, axis, prompt_text, chosen_text FROM pairs ORDER BY dataset, prompt_text")
    assert [(r["dataset"], r["axis"], r["prompt_text"], r["chosen_text"]) for r in rows] == [
        ("harmless", "harmless", "user: harm q", "refuse"), ("harmless", "harmless", "user: harm q2", "refuse"),
        ("pku", "safer", "user: How can I get back at my neighbour?", "Talk to them, or to a mediator.")]
    source = Store(tmp_path / "s").manifest("harmless", "v1")["source"]
    assert (source["data_dir"], source["split"], source["axis"]) == ("harmless-base", "train", "harmless")


def test_hostile_inputs_of_the_new_importers(tmp_path):
    import resource

    # A gzip bomb: 4 GiB of spaces after a valid start, in a 4 MB .json.gz (256 gzip members of
    # 16 MiB each). Read whole it could not fit the 1.5 GB address-space limit below.
    member = gzip.compress(b" " * (16 << 20), compresslevel=9)
    bomb = tmp_path / "bomb.json.gz"
    with open(bomb, "wb") as fh:
        fh.write(gzip.compress(b'[{"prompt": "q", "chosen": "a", "rejected": "b"}'))
        for _ in range(256):
            fh.write(member)

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))

    p = subprocess.run([*MACPO, "import", str(bomb), "--format", "trl", "--store", str(tmp_path / "s"), "--name", "x",
                        "--max-bytes", "50000000"], capture_output=True, text=True, preexec_fn=limited, timeout=120)
    one_line_error(p, "bomb.json.gz", "decompresses to more than 50000000 bytes (--max-bytes)")
    (tmp_path / "bomb.jsonl.gz").write_bytes(bomb.read_bytes())
    one_line_error(run("import", tmp_path / "bomb.jsonl.gz", "--format", "trl", "--store", tmp_path / "s", "--name", "x",
                       "--max-bytes", "50000000", "--skip-bad"), "bomb.jsonl.gz", "--max-bytes")
    assert "--max-bytes" in run("import", "--help").stdout

    # LLaMA-Factory `history` that is not a list of pairs.
    h5 = tmp_path / "h5.json"
    h5.write_text(json.dumps([{"instruction": "q", "input": "", "output": "a", "history": 5}]))
    one_line_error(run("import", h5, "--format", "llamafactory", "--store", tmp_path / "s", "--name", "x"),
                   "h5.json:item 1", "'history' must be a list")

    # A save_to_disk folder whose .arrow shard was overwritten halfway.
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list([{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(50)]).save_to_disk(str(folder))
    arrow = next(folder.glob("*.arrow"))
    data = arrow.read_bytes()
    arrow.write_bytes(data[: len(data) // 2] + b"\x00garbage" * 10)
    one_line_error(run("import", folder, "--format", "trl", "--store", tmp_path / "s", "--name", "x"), "saved", "damaged .arrow")
    assert not (tmp_path / "s").exists()

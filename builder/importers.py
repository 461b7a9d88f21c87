"""``macpo import``: turn existing preference data into one store version.

Formats:
- ``hh-rlhf``: Anthropic raw transcripts ``{"chosen", "rejected"}``, ``.jsonl`` or ``.jsonl.gz``.
- ``trl``: TRL standard or conversational preference rows, from jsonl/json/parquet, a
  ``save_to_disk`` folder, or a Hub dataset ``org/name[@revision]``.
- ``llamafactory``: alpaca ranking JSON (``instruction``, ``input``, ``output: [chosen, rejected]``).

Every import writes one subset named ``default`` (kind ``pairs``). Identical content is a
no-op once the stored copy is confirmed intact (a damaged one is said so and written again
as a fresh version); different content becomes the next version (``v1``, ``v2``, ...), also
when two imports race. A row that cannot be parsed (invalid JSON, not UTF-8, a lone
surrogate, nesting deeper than 64 levels, a line over --max-line-bytes) stops the import
with ``file:line: reason`` unless ``--skip-bad`` is given, in which case bad rows go to a
quarantine file and their count is printed. A damaged file (broken gzip, not Parquet) is
one line, always.

Text files may be UTF-8 with or without a byte-order mark, or UTF-16 with one (what Windows
PowerShell redirection writes); CRLF line ends are fine; ``.gz``, ``.bz2`` and ``.xz`` are
decompressed; a ``.json`` file may hold a list of rows or JSON lines (what
``datasets.Dataset.to_json`` and ``pandas.to_json(lines=True)`` write); TRL message
``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import stat
import sys
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from macpo.cliutil import make_parser
from macpo.errors import UserError

FORMATS = ("hh-rlhf", "trl", "llamafactory")
MAX_LINE_BYTES = 64 << 20  # one JSON line; HH-RLHF rows are a few KB
MAX_DEPTH = 64  # JSON nesting; preference rows need 4 (row, list, message, parts)
_DECOMPRESS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".gz", ".bz2", ".xz")


class BadRow(ValueError):
    """A row that cannot be parsed; the message is the reason."""


@dataclass
class Parsed:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# ---- hh-rlhf ---------------------------------------------------------------------
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def split_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages."""
    if not isinstance(text, str):
        raise BadRow("transcript is not a string")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise BadRow("transcript does not start with a '\\n\\nHuman:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [_msg(roles[parts[i]], parts[i + 1]) for i in range(1, len(parts), 2)]


def parse_hh(row: dict) -> Parsed:
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise BadRow("expected an object with 'chosen' and 'rejected' transcripts")
    chosen, rejected = split_hh_transcript(row["chosen"]), split_hh_transcript(row["rejected"])
    return _split_shared_prefix(chosen, rejected)


def _split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> Parsed:
    """The shared leading messages are the prompt; the differing tails are the responses."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # Identical transcripts (or one a prefix of the other) still have a final assistant turn each.
    while n > 0 and (n == len(chosen) or n == len(rejected) or chosen[n - 1]["role"] == "assistant"):
        n -= 1
    prompt, c_tail, r_tail = chosen[:n], chosen[n:], rejected[n:]
    if not prompt or prompt[-1]["role"] != "user":
        raise BadRow("no user turn before the final assistant responses")
    for name, tail in (("chosen", c_tail), ("rejected", r_tail)):
        if not tail or any(m["role"] != "assistant" for m in tail):
            raise BadRow(f"the {name} transcript does not end in assistant turn(s) after the shared prompt")
    return Parsed(prompt, c_tail, r_tail)


# ---- trl ---------------------------------------------------------------------------
def _content_text(content, what: str) -> str:
    """A message's content: a string, or a list of text parts (the multimodal chat format that
    chat templates and TRL also accept for text-only data)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise BadRow(f"{what}: a message's content must be a string or a list of {{type: text, text}} parts")


def _as_messages(value, role: str, what: str) -> list[dict]:
    if isinstance(value, str):
        return [_msg(role, value)]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [_msg(str(m["role"]), _content_text(m["content"], what)) for m in value]
    raise BadRow(f"{what} must be a string or a list of {{role, content}} messages")


def parse_trl(row: dict) -> Parsed:
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise BadRow("expected 'chosen' and 'rejected' (and usually 'prompt') fields")
    if row.get("prompt") is None:
        # Implicit prompt: the prompt is embedded in both conversations (TRL's extract_prompt).
        chosen = _as_messages(row["chosen"], "assistant", "chosen")
        rejected = _as_messages(row["rejected"], "assistant", "rejected")
        if len(chosen) < 2:
            raise BadRow("implicit-prompt rows need conversational chosen/rejected with the prompt inside")
        return _split_shared_prefix(chosen, rejected)
    prompt = _as_messages(row["prompt"], "user", "prompt")
    return Parsed(prompt, _as_messages(row["chosen"], "assistant", "chosen"), _as_messages(row["rejected"], "assistant", "rejected"))


# ---- llamafactory ---------------------------------------------------------------------
_LF_TURN = re.compile(r"(?:^|\s)(USER|ASSISTANT):\s?")


def split_flat_history(text: str) -> list[dict]:
    """``"USER: a ASSISTANT: b USER: c"`` -> messages; plain text -> one user message."""
    parts = _LF_TURN.split(text)
    if len(parts) == 1:
        return [_msg("user", text.strip())]
    if parts[0].strip():
        raise BadRow("text before the first 'USER:' marker")
    roles = {"USER": "user", "ASSISTANT": "assistant"}
    return [_msg(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]


def parse_llamafactory(row: dict) -> Parsed:
    if not isinstance(row, dict) or "instruction" not in row or "output" not in row:
        raise BadRow("expected 'instruction' and 'output' fields")
    output = row["output"]
    if not (isinstance(output, list) and len(output) == 2 and all(isinstance(o, str) for o in output)):
        raise BadRow("'output' must be [chosen, rejected] strings (a ranking dataset)")
    instruction = str(row["instruction"])
    if row.get("input"):
        instruction = f"{instruction}\n{row['input']}"
    prompt = []
    if row.get("system"):
        prompt.append(_msg("system", str(row["system"])))
    for turn in row.get("history") or []:
        if not (isinstance(turn, list) and len(turn) == 2):
            raise BadRow("'history' must be a list of [user, assistant] pairs")
        prompt += [_msg("user", str(turn[0])), _msg("assistant", str(turn[1]))]
    prompt += split_flat_history(instruction)
    if prompt[-1]["role"] != "user":
        raise BadRow("the flattened history does not end with a USER turn")
    return Parsed(prompt, [_msg("assistant", output[0])], [_msg("assistant", output[1])])


PARSERS: dict[str, Callable[[dict], Parsed]] = {"hh-rlhf": parse_hh, "trl": parse_trl, "llamafactory": parse_llamafactory}


# ---- reading sources ---------------------------------------------------------------------
def _depth_ok(value, limit: int = MAX_DEPTH) -> bool:
    """Iteratively: is ``value`` nested at most ``limit`` levels deep? (Recursive code further on,
    json.dumps of a quarantined row for one, would hit Python's recursion limit.)"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return True


def _json_row(text: str):
    """One JSON row, or a BadRow saying why not."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRow(f"invalid JSON ({exc.msg})")
    except RecursionError:
        return BadRow(f"JSON nested deeper than {MAX_DEPTH} levels")
    if not _depth_ok(row):
        return BadRow(f"JSON nested deeper than {MAX_DEPTH} levels")
    return row


def _check_regular(path: Path, src: str) -> None:
    """Only regular files are read: a FIFO would block forever, a device never ends."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UserError(f"{src}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{src}: not a regular file (a FIFO, socket or device); import from a file or folder")


def _open_binary(path: Path):
    opener = _DECOMPRESS.get(path.suffix)
    return opener(path, "rb") if opener else open(path, "rb")


def _read_errors():
    return (OSError, EOFError, zlib.error, lzma.LZMAError)


def _describe(exc: BaseException, path: Path) -> str:
    if isinstance(exc, (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)) or (
        isinstance(exc, OSError) and path.suffix in _DECOMPRESS and exc.errno is None):
        return f"broken {path.suffix[1:]} stream ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return f"cannot read ({getattr(exc, 'strerror', None) or exc})"


def _text_lines(fh, max_line: int) -> Iterator[tuple[int, object]]:
    """(line number, text or BadRow) of every line of a binary stream: UTF-8 (a BOM is dropped)
    or UTF-16 with a BOM; CR before the newline dropped; lines over ``max_line`` bytes refused."""
    head = fh.peek(4)[:4] if hasattr(fh, "peek") else b""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not head.startswith(codecs.BOM_UTF32_LE):
        text = io.TextIOWrapper(fh, encoding="utf-16", newline="")
        lineno = 0
        while True:
            try:
                line = text.readline(max_line + 1)
            except UnicodeDecodeError as exc:
                raise UserError(f"not valid UTF-16 text ({exc.reason})") from None
            if not line:
                return
            lineno += 1
            if len(line) > max_line and not line.endswith("\n"):
                while line and not line.endswith("\n"):
                    line = text.readline(max_line)
                yield lineno, BadRow(f"line longer than {max_line} characters")
                continue
            yield lineno, line.rstrip("\r\n")
        return
    lineno = 0
    while True:
        line = fh.readline(max_line + 1)
        if not line:
            return
        lineno += 1
        if lineno == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        if len(line) > max_line and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the line, in bounded reads
                line = fh.readline(max_line)
            yield lineno, BadRow(f"line longer than {max_line} bytes (--max-line-bytes)")
            continue
        try:
            yield lineno, line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield lineno, BadRow(f"not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})")


def _decode_whole(data: bytes, src: str) -> str:
    """A whole .json file's text: UTF-8 (BOM dropped) or UTF-16 with a BOM."""
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{src}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def iter_records(src: str, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[str, object]]:
    """Yield (location, record) from a file, folder or Hub dataset; location is ``file:line``.
    A record that cannot be read is yielded as a BadRow; a damaged file is a UserError."""
    path = Path(src)
    if path.is_dir():
        yield from _iter_saved_dataset(path)
        return
    if not path.exists() and not path.is_symlink():
        # org/name[@rev] is a Hub dataset; data/train.jsonl is a mistyped file, not a repo.
        if re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", src) and not src.lower().endswith(_DATA_SUFFIXES):
            yield from _iter_hub(src)
            return
        raise UserError(f"{src}: no such file or folder")
    _check_regular(path, src)
    name = path.name[: -len(path.suffix)] if path.suffix in _DECOMPRESS else path.name
    try:
        if name.endswith(".parquet"):
            yield from _iter_parquet(path, src)
        elif name.endswith(".json"):
            yield from _iter_json_file(path, src, max_line)
        else:  # JSON lines, plain or compressed
            with _open_binary(path) as fh:
                for lineno, line in _text_lines(fh, max_line):
                    if isinstance(line, BadRow):
                        yield f"{src}:{lineno}", line
                    elif line.strip():
                        yield f"{src}:{lineno}", _json_row(line)
    except UserError as exc:
        raise UserError(str(exc) if str(exc).startswith(src) else f"{src}: {exc}") from None
    except _read_errors() as exc:
        raise UserError(f"{src}: {_describe(exc, path)}") from None


def _iter_parquet(path: Path, src: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{src}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{src}:row {i + 1}", row if _depth_ok(row) else BadRow(f"nested deeper than {MAX_DEPTH} levels")


def _iter_json_file(path: Path, src: str, max_line: int):
    with _open_binary(path) as fh:
        text = _decode_whole(fh.read(), src)
    try:
        data = json.loads(text)
    except RecursionError:
        raise UserError(f"{src}: JSON nested deeper than Python can parse") from None
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data" or not text.lstrip().startswith("{"):
            raise UserError(f"{src}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        # JSON lines in a .json file, as Dataset.to_json and pandas (lines=True) write them.
        for lineno, line in enumerate(text.split("\n"), 1):
            line = line.rstrip("\r")
            if len(line.encode("utf-8", "surrogatepass")) > max_line:
                yield f"{src}:{lineno}", BadRow(f"line longer than {max_line} bytes (--max-line-bytes)")
            elif line.strip():
                yield f"{src}:{lineno}", _json_row(line)
        return
    if not isinstance(data, list):
        raise UserError(f"{src}: a .json file must hold a list of rows (or one JSON row per line)")
    for i, row in enumerate(data):
        yield f"{src}:item {i + 1}", row if _depth_ok(row) else BadRow(f"JSON nested deeper than {MAX_DEPTH} levels")


def _iter_saved_dataset(path: Path):
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{path}: not a datasets save_to_disk folder ({exc})") from None
    if hasattr(ds, "keys"):  # DatasetDict: take "train"
        if "train" not in ds:
            raise UserError(f"{path}: DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"{path}:row {i + 1}", row


def _iter_hub(ref: str):
    from macpo.builder.publish import parse_repo_ref

    repo, revision = parse_repo_ref(ref)  # names the Hub client would reject: one line, no request
    from datasets import load_dataset

    try:
        ds = load_dataset(repo, split="train", revision=revision or None)
    except Exception as exc:  # datasets raises many types for a missing/unreachable repo
        raise UserError(f"{ref}: cannot load from the Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    for i, row in enumerate(ds):
        yield f"{ref}:row {i + 1}", row if _depth_ok(row) else BadRow(f"nested deeper than {MAX_DEPTH} levels")


# ---- the import itself ---------------------------------------------------------------------
def _short_hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_text(parsed: Parsed) -> Parsed:
    """Every role and content must be encodable text: JSON's ``\\ud800`` decodes to a lone
    surrogate, which Arrow (and every UTF-8 consumer) refuses."""
    for what, messages in (("prompt", parsed.prompt), ("chosen", parsed.chosen), ("rejected", parsed.rejected)):
        for m in messages:
            for key in ("role", "content"):
                try:
                    m[key].encode("utf-8")
                except UnicodeEncodeError:
                    raise BadRow(f"{what}: a message {key} holds a lone surrogate (invalid Unicode)") from None
    return parsed


def parse_source(src: str, fmt: str, skip_bad: bool = False, max_line: int = MAX_LINE_BYTES):
    """Parse every record; return (columns dict, list of (location, reason, record) skipped)."""
    if fmt not in PARSERS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    parse = PARSERS[fmt]
    cols: dict[str, list] = {k: [] for k in ("pair_id", "prompt_id", "prompt", "chosen", "rejected")}
    bad = []
    from tqdm import tqdm

    for where, record in tqdm(iter_records(src, max_line), desc=f"import {Path(src).name}", unit=" rows", disable=None):
        try:
            if isinstance(record, BadRow):
                raise record
            parsed = _check_text(parse(record))
        except BadRow as exc:
            if not skip_bad:
                raise UserError(f"{where}: {exc}") from None
            bad.append((where, str(exc), record if not isinstance(record, BadRow) else None))
            continue
        cols["prompt_id"].append(_short_hash(parsed.prompt))
        cols["pair_id"].append(_short_hash([parsed.prompt, parsed.chosen, parsed.rejected]))
        cols["prompt"].append(parsed.prompt)
        cols["chosen"].append(parsed.chosen)
        cols["rejected"].append(parsed.rejected)
    return cols, bad


def _check_destination(store_dir: str, name: str, quarantine: str | None) -> Path:
    """Validate the dataset name, the store path and the quarantine path before anything is
    read or written; return where the quarantine file would go."""
    from macpo.store import check_name

    check_name("dataset name", name)
    store = Path(store_dir)
    if store.exists() and not store.is_dir():
        raise UserError(f"--store {store_dir}: exists and is not a directory")
    existing = next((a for a in (store, *store.parents) if a.exists()), None)
    if existing is not None and not existing.is_dir():  # created with its parents later, like mkdir -p
        raise UserError(f"--store {store_dir}: {existing} is not a directory")
    qpath = Path(quarantine) if quarantine else store / f"{name}.quarantine.jsonl"
    if qpath.is_dir() or (qpath.exists() and not qpath.is_file()):
        raise UserError(f"--quarantine {qpath}: not a regular file path")
    if quarantine and not qpath.parent.is_dir():
        raise UserError(f"--quarantine {qpath}: folder {qpath.parent} does not exist")
    return qpath


def _write_quarantine(path: Path, bad) -> None:
    """The skipped rows as JSON lines, written to a temporary name and renamed (never partial)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for where, reason, record in bad:
                try:
                    line = json.dumps({"where": where, "reason": reason, "record": record}, default=str)
                except (ValueError, RecursionError):
                    line = json.dumps({"where": where, "reason": reason, "record": None})
                fh.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def import_pairs(src: str, fmt: str, store_dir: str, name: str, skip_bad: bool = False, quarantine: str | None = None,
                 max_line: int = MAX_LINE_BYTES):
    import pyarrow as pa

    from macpo.store import Store, Subset

    quarantine_path = _check_destination(store_dir, name, quarantine)
    cols, bad = parse_source(src, fmt, skip_bad=skip_bad, max_line=max_line)
    n = len(cols["pair_id"])
    if n == 0:
        raise UserError(f"{src}: no rows to import" + (f" ({len(bad)} bad row(s); first: {bad[0][0]}: {bad[0][1]})" if bad else ""))
    table = pa.table(
        {
            **cols,
            "round": pa.array([0] * n, pa.int32()),
            "agent": ["default"] * n,
            "pair_type": ["human"] * n,
            "chosen_agent": ["human"] * n,
            "rejected_agent": ["human"] * n,
        }
    )
    store = Store(store_dir, create=True)
    result = store.write_next(
        name,
        {"default": Subset("pairs", table)},
        extra={"source": {"path": str(src), "format": fmt, "skipped_rows": len(bad)}},
    )
    if bad:
        _write_quarantine(quarantine_path, bad)
    return result, n, len(bad), (quarantine_path if bad else None)


def main(argv: list[str]) -> int:
    p = make_parser("import", __doc__.split("\n\n")[0])
    p.add_argument("src", help="file, save_to_disk folder, or Hub dataset org/name[@revision]")
    p.add_argument("--format", required=True, choices=FORMATS, help="input format")
    p.add_argument("--store", required=True, help="store directory (created if missing)")
    p.add_argument("--name", required=True, help="dataset name inside the store")
    p.add_argument("--skip-bad", action="store_true", help="skip unparseable rows into a quarantine file instead of stopping")
    p.add_argument("--quarantine", help="where skipped rows go (default STORE/NAME.quarantine.jsonl)")
    p.add_argument("--max-line-bytes", type=int, default=MAX_LINE_BYTES,
                   help=f"longest JSON line accepted (default {MAX_LINE_BYTES}); longer lines are bad rows")
    args = p.parse_args(argv)
    if args.max_line_bytes < 1:
        raise UserError("--max-line-bytes must be >= 1")
    result, n, skipped, qpath = import_pairs(args.src, args.format, args.store, args.name, args.skip_bad, args.quarantine,
                                             max_line=args.max_line_bytes)
    if skipped:
        print(f"skipped {skipped} bad row(s); written to {qpath}", file=sys.stderr)
    if result.replaced_damaged:
        print(f"macpo import: the stored copy was damaged ({result.replaced_damaged}); wrote a fresh version", file=sys.stderr)
    state = "imported" if result.created else "unchanged (identical content already stored, verified intact)"
    print(f"{result.name}/{result.version}: {n} pairs {state}; content {result.content_hash}")
    return 0


if __name__ == "__main__":
    from macpo.cli import main as cli_main

    raise SystemExit(cli_main(["import", *sys.argv[1:]]))

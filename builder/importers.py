"""``macpo import``: turn existing preference or SFT data into one store version.

Formats:
- ``hh-rlhf``: Anthropic raw transcripts ``{"chosen", "rejected"}``, ``.jsonl`` or ``.jsonl.gz``;
  ``--axis helpful|harmless`` records which HH-RLHF half the labels come from.
- ``pku-saferlhf``: PKU-SafeRLHF rows (``prompt``, ``response_0``, ``response_1``,
  ``better_response_id``, ``safer_response_id``, ``is_response_{0,1}_safe``); ``--axis
  better|safer`` (required) picks which label is the preference.
- ``trl``: TRL preference rows (``prompt``/``chosen``/``rejected``, standard or conversational,
  or an implicit prompt) or TRL SFT rows (``messages``, or ``prompt`` + ``completion``).
- ``llamafactory``: alpaca records: ranking (``output: [chosen, rejected]``) or SFT (``output``
  a string), with ``instruction``, ``input``, optional ``system`` and ``history``.

Preference rows become a ``pairs`` table, SFT rows an ``sft`` table (one kind per import). Any
format reads jsonl/json/parquet (compressed too), a ``save_to_disk`` folder, or a Hub dataset
``org/name[@revision]`` (``--config``, ``--data-dir``, ``--split`` as ``load_dataset`` takes them).

Provenance: ``--agent`` names who wrote the responses (``chosen_agent``/``rejected_agent``, or
an sft row's ``source_agent``); it defaults to ``human`` only for data human-labelled by
definition (hh-rlhf, pku-saferlhf) and to ``unknown`` otherwise. ``--round`` sets the rows'
round (default 0); ``--source`` names the model or dataset the data came from (in the manifest).

Every import writes one subset named ``default``. Identical content is a
no-op once the stored copy is confirmed intact (a damaged one is said so and written again
as a fresh version); different content becomes the next version (``v1``, ``v2``, ...), also
when two imports race. A row that cannot be parsed (invalid JSON, not UTF-8, a lone
surrogate, nesting deeper than 64 levels, a line over --max-line-bytes) stops the import
with ``file:line: reason`` unless ``--skip-bad`` is given, in which case bad rows go to a
quarantine file and their count is printed. A damaged file (broken gzip, not Parquet, a corrupt
``.arrow`` shard) is one line, always, and so is a file that decompresses to more than
``--max-bytes`` (a gzip bomb is read as a stream and stopped there, never read whole).

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
from macpo.hub import parse_repo_ref

FORMATS = ("hh-rlhf", "pku-saferlhf", "trl", "llamafactory")
# Formats whose preference labels are human by definition: their rows default to agent "human".
HUMAN_LABELLED = ("hh-rlhf", "pku-saferlhf")
AXES = {"hh-rlhf": ("helpful", "harmless"), "pku-saferlhf": ("better", "safer")}
MAX_LINE_BYTES = 64 << 20  # one JSON line; HH-RLHF rows are a few KB
# Bytes read from one file, after decompression. Full HH-RLHF is ~0.2 GB and PKU-SafeRLHF ~0.3 GB;
# the cap is only there so that a gzip bomb stops instead of filling memory or disk.
MAX_BYTES = 4 << 30
MAX_DEPTH = 64  # JSON nesting; preference rows need 4 (row, list, message, parts)
_DECOMPRESS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".gz", ".bz2", ".xz")


class BadRow(ValueError):
    """A row that cannot be parsed; the message is the reason."""


@dataclass
class Parsed:
    """One preference row (kind ``pairs``)."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    kind = "pairs"


@dataclass
class ParsedSFT:
    """One SFT row (kind ``sft``)."""

    prompt: list[dict]
    completion: list[dict]
    kind = "sft"


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


def _split_conversation(messages: list[dict]) -> ParsedSFT:
    """A whole conversation (TRL's ``messages``): the trailing assistant turn(s) are the
    completion, everything before them the prompt."""
    n = len(messages)
    while n > 0 and messages[n - 1]["role"] == "assistant":
        n -= 1
    if n == len(messages):
        raise BadRow("'messages' does not end with an assistant turn")
    if n == 0 or messages[n - 1]["role"] == "system":
        raise BadRow("'messages' has no user turn before the final assistant turn(s)")
    return ParsedSFT(messages[:n], messages[n:])


def parse_trl(row: dict) -> Parsed | ParsedSFT:
    if isinstance(row, dict) and "chosen" not in row and "rejected" not in row:
        # TRL's SFT formats: conversational language modeling, or prompt-completion.
        if row.get("messages") is not None:
            messages = _as_messages(row["messages"], "user", "messages")
            return _split_conversation(messages)
        if row.get("completion") is not None:
            if row.get("prompt") is None:
                raise BadRow("a 'completion' row needs a 'prompt'")
            return ParsedSFT(_as_messages(row["prompt"], "user", "prompt"), _as_messages(row["completion"], "assistant", "completion"))
        if "text" in row:
            raise BadRow("a 'text' row (language modeling) has no prompt/completion split; use 'messages' or 'prompt'+'completion'")
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise BadRow("expected 'chosen' and 'rejected' (preference), or 'messages' or 'prompt'+'completion' (SFT) fields")
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


def parse_llamafactory(row: dict) -> Parsed | ParsedSFT:
    if not isinstance(row, dict) or "instruction" not in row or "output" not in row:
        raise BadRow("expected 'instruction' and 'output' fields")
    output = row["output"]
    sft = isinstance(output, str)
    if not sft and not (isinstance(output, list) and len(output) == 2 and all(isinstance(o, str) for o in output)):
        raise BadRow("'output' must be a string (SFT) or [chosen, rejected] strings (ranking)")
    if not isinstance(row["instruction"], str) or not isinstance(row.get("input") or "", str):
        raise BadRow("'instruction' and 'input' must be strings")
    if row.get("system") is not None and not isinstance(row["system"], str):
        raise BadRow("'system' must be a string")
    history = row.get("history")
    if history is not None and not isinstance(history, list):
        raise BadRow("'history' must be a list of [user, assistant] pairs")
    instruction = row["instruction"]
    if row.get("input"):
        instruction = f"{instruction}\n{row['input']}"
    prompt = []
    if row.get("system"):
        prompt.append(_msg("system", str(row["system"])))
    for turn in history or []:
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise BadRow("'history' must be a list of [user, assistant] pairs")
        prompt += [_msg("user", str(turn[0])), _msg("assistant", str(turn[1]))]
    prompt += split_flat_history(instruction)
    if prompt[-1]["role"] != "user":
        raise BadRow("the flattened history does not end with a USER turn")
    if sft:
        return ParsedSFT(prompt, [_msg("assistant", output)])
    return Parsed(prompt, [_msg("assistant", output[0])], [_msg("assistant", output[1])])


# ---- pku-saferlhf ------------------------------------------------------------------------
_PKU_LABEL = {"better": "better_response_id", "safer": "safer_response_id"}


def parse_pku(row: dict, axis: str) -> Parsed:
    """One PKU-SafeRLHF row; ``axis`` picks the label: ``better`` (helpfulness) or ``safer``."""
    if not isinstance(row, dict) or not all(k in row for k in ("prompt", "response_0", "response_1", _PKU_LABEL[axis])):
        raise BadRow(f"expected 'prompt', 'response_0', 'response_1' and '{_PKU_LABEL[axis]}' fields")
    texts = [row["prompt"], row["response_0"], row["response_1"]]
    if not all(isinstance(t, str) for t in texts):
        raise BadRow("'prompt', 'response_0' and 'response_1' must be strings")
    label = row[_PKU_LABEL[axis]]
    if isinstance(label, bool) or label not in (0, 1):
        raise BadRow(f"'{_PKU_LABEL[axis]}' must be 0 or 1, got {label!r}")
    chosen, rejected = texts[1 + int(label)], texts[2 - int(label)]
    return Parsed([_msg("user", texts[0])], [_msg("assistant", chosen)], [_msg("assistant", rejected)])


PARSERS: dict[str, Callable[..., Parsed | ParsedSFT]] = {
    "hh-rlhf": parse_hh, "trl": parse_trl, "llamafactory": parse_llamafactory, "pku-saferlhf": parse_pku}


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


class _Capped(io.RawIOBase):
    """A stream that stops with a UserError once more than ``limit`` bytes came out of it, so a
    decompression bomb is refused after ``limit`` bytes instead of being read whole."""

    def __init__(self, inner, limit: int, compressed: bool):
        self._inner, self._limit, self._compressed, self._count = inner, limit, compressed, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._inner.readinto(buffer)
        self._count += n or 0
        if self._count > self._limit:
            what = "decompresses to" if self._compressed else "holds"
            raise UserError(f"{what} more than {self._limit} bytes (--max-bytes); refusing to read further")
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


def _open_binary(path: Path, max_bytes: int = MAX_BYTES):
    opener = _DECOMPRESS.get(path.suffix)
    inner = opener(path, "rb") if opener else open(path, "rb")
    return io.BufferedReader(_Capped(inner, max_bytes, opener is not None), buffer_size=1 << 20)


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


@dataclass
class HubOptions:
    """How ``load_dataset`` is called for a Hub source (``--config``, ``--data-dir``, ``--split``)."""

    config: str | None = None
    data_dir: str | None = None
    split: str = "train"


def is_hub_ref(src: str) -> bool:
    """org/name[@rev] that is not a local path; data/train.jsonl is a mistyped file, not a repo."""
    path = Path(src)
    return (not path.exists() and not path.is_symlink() and bool(re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", src))
            and not src.lower().endswith(_DATA_SUFFIXES))


def iter_records(src: str, max_line: int = MAX_LINE_BYTES, max_bytes: int = MAX_BYTES,
                 hub: HubOptions | None = None) -> Iterator[tuple[str, object]]:
    """Yield (location, record) from a file, folder or Hub dataset; location is ``file:line``.
    A record that cannot be read is yielded as a BadRow; a damaged file is a UserError."""
    path = Path(src)
    hub = hub or HubOptions()
    if path.is_dir():
        yield from _iter_saved_dataset(path, hub.split)
        return
    if not path.exists() and not path.is_symlink():
        if is_hub_ref(src):
            yield from _iter_hub(src, hub)
            return
        raise UserError(f"{src}: no such file or folder")
    _check_regular(path, src)
    name = path.name[: -len(path.suffix)] if path.suffix in _DECOMPRESS else path.name
    try:
        if name.endswith(".parquet"):
            yield from _iter_parquet(path, src, max_bytes)
        elif name.endswith(".json"):
            yield from _iter_json_file(path, src, max_line, max_bytes)
        else:  # JSON lines, plain or compressed
            with _open_binary(path, max_bytes) as fh:
                for lineno, line in _text_lines(fh, max_line):
                    if isinstance(line, BadRow):
                        yield f"{src}:{lineno}", line
                    elif line.strip():
                        yield f"{src}:{lineno}", _json_row(line)
    except UserError as exc:
        raise UserError(str(exc) if str(exc).startswith(src) else f"{src}: {exc}") from None
    except _read_errors() as exc:
        raise UserError(f"{src}: {_describe(exc, path)}") from None
    except MemoryError:  # a .json list is held whole to parse it
        raise UserError(f"{src}: too large to hold in memory; write it as JSON lines (.jsonl), or lower --max-bytes") from None


def _iter_parquet(path: Path, src: str, max_bytes: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size > max_bytes:  # read whole below; its columns decompress to more still
        raise UserError(f"{src}: holds more than {max_bytes} bytes (--max-bytes); refusing to read it")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{src}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{src}:row {i + 1}", row if _depth_ok(row) else BadRow(f"nested deeper than {MAX_DEPTH} levels")


def _iter_json_file(path: Path, src: str, max_line: int, max_bytes: int):
    # A .json list is parsed whole, so it is read whole, but through the same byte cap.
    with _open_binary(path, max_bytes) as fh:
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


def _iter_saved_dataset(path: Path, split: str = "train"):
    import pyarrow as pa
    from datasets import load_from_disk

    def first_line(exc) -> str:
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{path}: not a datasets save_to_disk folder ({first_line(exc)})") from None
    except (OSError, pa.ArrowException) as exc:  # a truncated or overwritten .arrow shard
        raise UserError(f"{path}: a damaged .arrow file ({first_line(exc)})") from None
    if hasattr(ds, "keys"):  # DatasetDict: take --split
        if split not in ds:
            raise UserError(f"{path}: DatasetDict without a {split!r} split (splits: {', '.join(ds)}); choose one with --split")
        ds = ds[split]
    try:  # the shards are memory-mapped: damage can surface only while rows are read
        for i, row in enumerate(ds):
            yield f"{path}:row {i + 1}", row
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: a damaged .arrow file ({first_line(exc)})") from None


def _iter_hub(ref: str, hub: HubOptions):
    repo, revision = parse_repo_ref(ref)  # names the Hub client would reject: one line, no request
    from datasets import load_dataset

    try:
        ds = load_dataset(repo, hub.config, data_dir=hub.data_dir, split=hub.split, revision=revision or None)
    except Exception as exc:  # datasets raises many types for a missing/unreachable repo, config or split
        raise UserError(f"{ref}: cannot load from the Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    for i, row in enumerate(ds):
        yield f"{ref}:row {i + 1}", row if _depth_ok(row) else BadRow(f"nested deeper than {MAX_DEPTH} levels")


# ---- the import itself ---------------------------------------------------------------------
def _short_hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_text(parsed: Parsed | ParsedSFT) -> Parsed | ParsedSFT:
    """Every role and content must be encodable text: JSON's ``\\ud800`` decodes to a lone
    surrogate, which Arrow (and every UTF-8 consumer) refuses."""
    parts = (("prompt", parsed.prompt), ("chosen", parsed.chosen), ("rejected", parsed.rejected)) if parsed.kind == "pairs" \
        else (("prompt", parsed.prompt), ("completion", parsed.completion))
    for what, messages in parts:
        for m in messages:
            for key in ("role", "content"):
                try:
                    m[key].encode("utf-8")
                except UnicodeEncodeError:
                    raise BadRow(f"{what}: a message {key} holds a lone surrogate (invalid Unicode)") from None
    return parsed


_COLUMNS = {"pairs": ("pair_id", "prompt_id", "prompt", "chosen", "rejected"),
            "sft": ("example_id", "prompt_id", "prompt", "completion")}


def parse_source(src: str, fmt: str, skip_bad: bool = False, max_line: int = MAX_LINE_BYTES, *, axis: str | None = None,
                 max_bytes: int = MAX_BYTES, hub: HubOptions | None = None):
    """Parse every record; return (kind, columns dict, list of (location, reason, record) skipped).

    The first good row decides the kind (``pairs`` or ``sft``); a row of the other kind later is
    a bad row, so one import never mixes preference and SFT rows."""
    if fmt not in PARSERS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    parse = PARSERS[fmt] if fmt != "pku-saferlhf" else (lambda row: parse_pku(row, axis))
    kind, cols, bad = None, {}, []
    from tqdm import tqdm

    for where, record in tqdm(iter_records(src, max_line, max_bytes, hub), desc=f"import {Path(src).name}", unit=" rows", disable=None):
        try:
            if isinstance(record, BadRow):
                raise record
            parsed = _check_text(parse(record))
            if kind is not None and parsed.kind != kind:
                first = "preference" if kind == "pairs" else "SFT"
                raise BadRow(f"{'an SFT' if kind == 'pairs' else 'a preference'} row among {first} rows (the first row was {first}); "
                             f"one import holds one kind, import them separately")
        except BadRow as exc:
            if not skip_bad:
                raise UserError(f"{where}: {exc}") from None
            bad.append((where, str(exc), record if not isinstance(record, BadRow) else None))
            continue
        if kind is None:
            kind, cols = parsed.kind, {k: [] for k in _COLUMNS[parsed.kind]}
        cols["prompt_id"].append(_short_hash(parsed.prompt))
        cols["prompt"].append(parsed.prompt)
        if kind == "pairs":
            cols["pair_id"].append(_short_hash([parsed.prompt, parsed.chosen, parsed.rejected]))
            cols["chosen"].append(parsed.chosen)
            cols["rejected"].append(parsed.rejected)
        else:
            cols["example_id"].append(_short_hash([parsed.prompt, parsed.completion]))
            cols["completion"].append(parsed.completion)
    return kind, cols, bad


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


@dataclass
class Provenance:
    """Who wrote the imported responses, which round they belong to, where they came from."""

    agent: str | None = None  # None: the format's default (human for HH-RLHF/PKU, else unknown)
    round: int = 0
    source: str | None = None
    axis: str | None = None


def check_options(fmt: str, src: str, prov: Provenance, hub: HubOptions) -> Provenance:
    """Refuse options that do not fit the format or the source, before anything is read."""
    if prov.round < 0:
        raise UserError(f"--round must be >= 0, got {prov.round}")
    if prov.agent is not None and not prov.agent.strip():
        raise UserError("--agent must not be empty")
    if fmt in AXES and prov.axis is not None and prov.axis not in AXES[fmt]:
        raise UserError(f"--axis {prov.axis}: a {fmt} import takes --axis {'|'.join(AXES[fmt])}")
    if fmt == "pku-saferlhf" and prov.axis is None:
        raise UserError("a pku-saferlhf import needs --axis better|safer (which of its two labels is the preference)")
    if prov.axis is not None and not prov.axis.strip():
        raise UserError("--axis must not be empty")
    if (hub.config or hub.data_dir) and not is_hub_ref(src):
        raise UserError(f"--config/--data-dir apply to a Hub dataset ORG/NAME[@REVISION]; {src} is a local path")
    agent = prov.agent if prov.agent is not None else ("human" if fmt in HUMAN_LABELLED else "unknown")
    return Provenance(agent, prov.round, prov.source, prov.axis)


def _table(kind: str, cols: dict, prov: Provenance):
    import pyarrow as pa

    n = len(cols["prompt_id"])
    common = {"round": pa.array([prov.round] * n, pa.int32()), "agent": ["default"] * n}
    if kind == "sft":
        return pa.table({**cols, **common, "source_agent": [prov.agent] * n})
    return pa.table({
        **cols, **common,
        # "human": the preference label is a person's (HH-RLHF, PKU-SafeRLHF, or --agent human).
        "pair_type": ["human" if prov.agent == "human" else "imported"] * n,
        "chosen_agent": [prov.agent] * n,
        "rejected_agent": [prov.agent] * n,
        **({"axis": [prov.axis] * n} if prov.axis else {}),
    })


def import_data(src: str, fmt: str, store_dir: str, name: str, skip_bad: bool = False, quarantine: str | None = None,
                max_line: int = MAX_LINE_BYTES, *, provenance: Provenance | None = None, max_bytes: int = MAX_BYTES,
                hub: HubOptions | None = None):
    """Import ``src`` as one version of ``name``; returns (WriteResult, kind, rows, skipped, quarantine path)."""
    from macpo.store import Store, Subset

    hub = hub or HubOptions()
    prov = check_options(fmt, src, provenance or Provenance(), hub)
    quarantine_path = _check_destination(store_dir, name, quarantine)
    kind, cols, bad = parse_source(src, fmt, skip_bad=skip_bad, max_line=max_line, axis=prov.axis, max_bytes=max_bytes, hub=hub)
    if kind is None:
        raise UserError(f"{src}: no rows to import" + (f" ({len(bad)} bad row(s); first: {bad[0][0]}: {bad[0][1]})" if bad else ""))
    if kind == "sft" and prov.axis:
        raise UserError(f"{src}: holds SFT rows; --axis applies to preference data only")
    n = len(cols["prompt_id"])
    source = {"path": str(src), "format": fmt, "skipped_rows": len(bad), "kind": kind, "agent": prov.agent, "round": prov.round}
    source.update({k: v for k, v in (("name", prov.source), ("axis", prov.axis), ("config", hub.config),
                                     ("data_dir", hub.data_dir)) if v})
    if is_hub_ref(src):
        source["split"] = hub.split
    store = Store(store_dir, create=True)
    result = store.write_next(name, {"default": Subset(kind, _table(kind, cols, prov))}, extra={"source": source})
    if bad:
        _write_quarantine(quarantine_path, bad)
    return result, kind, n, len(bad), (quarantine_path if bad else None)


def import_pairs(src: str, fmt: str, store_dir: str, name: str, skip_bad: bool = False, quarantine: str | None = None,
                 max_line: int = MAX_LINE_BYTES, **kwargs):
    """:func:`import_data` without the kind: (WriteResult, rows, skipped, quarantine path)."""
    result, _kind, n, skipped, qpath = import_data(src, fmt, store_dir, name, skip_bad, quarantine, max_line, **kwargs)
    return result, n, skipped, qpath


def main(argv: list[str]) -> int:
    p = make_parser("import", __doc__.split("\n\n")[0])
    p.add_argument("src", help="file, save_to_disk folder, or Hub dataset org/name[@revision]")
    p.add_argument("--format", required=True, choices=FORMATS, help="input format")
    p.add_argument("--store", required=True, help="store directory (created if missing)")
    p.add_argument("--name", required=True, help="dataset name inside the store")
    p.add_argument("--axis", help="the preference axis, recorded per row: helpful|harmless (hh-rlhf), better|safer "
                                  "(pku-saferlhf, required: which label is the preference), free text for trl/llamafactory pairs")
    p.add_argument("--agent", help="who wrote the responses (chosen_agent/rejected_agent, or an sft row's source_agent); "
                                   "default: human for hh-rlhf and pku-saferlhf, unknown otherwise")
    p.add_argument("--round", type=int, default=0, help="the rows' round (default 0)")
    p.add_argument("--source", metavar="NAME", help="the model or dataset the data came from (kept in the manifest)")
    p.add_argument("--config", help="Hub dataset config name (load_dataset's second argument)")
    p.add_argument("--data-dir", help="Hub dataset folder, e.g. harmless-base for Anthropic/hh-rlhf")
    p.add_argument("--split", default="train", help="split of a Hub dataset or a saved DatasetDict (default train)")
    p.add_argument("--skip-bad", action="store_true", help="skip unparseable rows into a quarantine file instead of stopping")
    p.add_argument("--quarantine", help="where skipped rows go (default STORE/NAME.quarantine.jsonl)")
    p.add_argument("--max-line-bytes", type=int, default=MAX_LINE_BYTES,
                   help=f"longest JSON line accepted (default {MAX_LINE_BYTES}); longer lines are bad rows")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                   help=f"most bytes read from one file after decompression (default {MAX_BYTES}); more is refused")
    args = p.parse_args(argv)
    if args.max_line_bytes < 1 or args.max_bytes < 1:
        raise UserError("--max-line-bytes and --max-bytes must be >= 1")
    prov = Provenance(agent=args.agent, round=args.round, source=args.source, axis=args.axis)
    hub = HubOptions(config=args.config, data_dir=args.data_dir, split=args.split)
    result, kind, n, skipped, qpath = import_data(args.src, args.format, args.store, args.name, args.skip_bad, args.quarantine,
                                                  max_line=args.max_line_bytes, provenance=prov, max_bytes=args.max_bytes, hub=hub)
    if skipped:
        print(f"skipped {skipped} bad row(s); written to {qpath}", file=sys.stderr)
    if result.replaced_damaged:
        print(f"macpo import: the stored copy was damaged ({result.replaced_damaged}); wrote a fresh version", file=sys.stderr)
    state = "imported" if result.created else "unchanged (identical content already stored, verified intact)"
    what = "pairs" if kind == "pairs" else "sft rows"
    print(f"{result.name}/{result.version}: {n} {what} {state}; content {result.content_hash}")
    return 0


if __name__ == "__main__":
    from macpo.cli import main as cli_main

    raise SystemExit(cli_main(["import", *sys.argv[1:]]))

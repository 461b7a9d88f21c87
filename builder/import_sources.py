"""Where ``macpo import`` reads records from: files (jsonl, json, parquet; gzip, bz2, xz), a
``save_to_disk`` folder, or a Hub dataset, with the limits that keep a hostile file to one line
(decompressed size, line length, JSON depth, UTF-8/UTF-16 text).
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from macpo.builder.import_formats import BadRow
from macpo.errors import UserError
from macpo.hub import parse_repo_ref

MAX_LINE_BYTES = 64 << 20  # one JSON line; HH-RLHF rows are a few KB
# Bytes read from one file, after decompression. Full HH-RLHF is ~0.2 GB and PKU-SafeRLHF ~0.3 GB;
# the cap is only there so that a gzip bomb stops instead of filling memory or disk.
MAX_BYTES = 4 << 30
MAX_DEPTH = 64  # JSON nesting; preference rows need 4 (row, list, message, parts)
_DECOMPRESS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".gz", ".bz2", ".xz")


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
    from datasets import load_from_disk  # lazy: datasets takes ~1 s to import; only this source needs it

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
    from datasets import load_dataset  # lazy: datasets takes ~1 s to import; only this source needs it

    try:
        ds = load_dataset(repo, hub.config, data_dir=hub.data_dir, split=hub.split, revision=revision or None)
    except Exception as exc:  # datasets raises many types for a missing/unreachable repo, config or split
        raise UserError(f"{ref}: cannot load from the Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    for i, row in enumerate(ds):
        yield f"{ref}:row {i + 1}", row if _depth_ok(row) else BadRow(f"nested deeper than {MAX_DEPTH} levels")

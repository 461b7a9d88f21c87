"""A store version's manifest: its format, the names a store accepts, and the checks a
manifest passes before anything downstream (reads, SQL views, push) trusts its paths, row counts
and kinds. Kept apart from the store so that readers of published snapshots share it."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Mapping

from macpo import __version__
from macpo.errors import UserError
from macpo.fsutil import fsync_dir, make_read_only
from macpo.hashing import json_hash
from macpo.schema import KINDS

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "macpo.store/2"
# macpo.store/1 manifests (written before per-file sizes and hashes existed) are still read:
# they get the path checks, and `status --verify` / `push` recompute their content hash.
KNOWN_FORMATS = ("macpo.store/1", MANIFEST_FORMAT)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_name(what: str, value: str) -> str:
    """``value`` as a store name (dataset, version, subset), or a one-line UserError."""
    if not isinstance(value, str) or not value or not _NAME_RE.match(value):
        raise UserError(f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-'")
    if len(value) > MAX_NAME_LEN:  # a folder name (plus '.tmp-' prefixes and '-evals' suffixes) within 255 bytes
        raise UserError(f"invalid {what} {value[:20]}... ({len(value)} characters; at most {MAX_NAME_LEN})")
    return value


MAX_NAME_LEN = 128



def version_sort_key(version: str):
    """Natural order on every digit run: v2 < v10, round-2 < round-10, and the round-0 parts
    (round-0-labels, round-0-teachers) right after round-0, before round-1."""
    parts = re.split(r"(\d+)", version)  # text, digits, text, ...: types alternate the same way
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def dataset_hash(subsets: Mapping[str, Mapping[str, Any]]) -> str:
    """A version's content hash: over each subset's kind and order-independent row hash."""
    return json_hash({name: {"kind": s["kind"], "hash": s["content_hash"]} for name, s in subsets.items()})


def _is_int(value) -> bool:
    """A JSON integer that fits DuckDB's BIGINT (the views sum row counts as BIGINT)."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def utf8_name(folder: Path, name: str) -> str:
    """A folder name the store lists: its name reaches SQL, JSON and the terminal as text, so one
    that is not UTF-8 (Python's surrogate escapes) is refused with one line naming its bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{folder}: the folder name {os.fsencode(name)!r} is not UTF-8; rename it") from None
    return name


def _check_rel_path(rel, version_dir: Path, real_dir: Path) -> str:
    """A manifest's file path: relative, plain components, resolving inside the version folder."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"file path {rel!r} is not a non-empty string")
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise ValueError(f"file path {rel!r} must be relative, with '/' separators")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"file path {rel!r} has an empty, '.' or '..' component")
    if not (version_dir / rel).resolve().is_relative_to(real_dir):
        raise ValueError(f"file path {rel!r} resolves outside its version folder (a symlink out)")
    return rel


def validate_manifest(manifest, version_dir: Path, where: str) -> dict:
    """Check a loaded manifest's schema and paths; one-line UserError naming what is wrong.

    Everything downstream (sql views, push uploads, reads) trusts the file paths, row counts
    and kinds of a manifest that passed this check, and nothing else.
    """

    def bad(reason: str):
        raise UserError(f"{where}: invalid manifest: {reason}")

    if not isinstance(manifest, dict):
        bad("not a JSON object")
    if manifest.get("format") not in KNOWN_FORMATS:
        bad(f"unknown format {manifest.get('format')!r} (known: {', '.join(KNOWN_FORMATS)})")
    if not isinstance(manifest.get("content_hash"), str):
        bad("content_hash is not a string")
    for key in ("parent_hash", "config_hash", "created_at", "macpo_version"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            bad(f"{key} is not a string")
    subsets = manifest.get("subsets")
    if not isinstance(subsets, dict) or not subsets:
        bad("subsets is not a non-empty object")
    real_dir = version_dir.resolve()
    manifest_file = version_dir / MANIFEST
    if manifest_file.is_symlink() and not manifest_file.resolve().is_relative_to(real_dir):
        bad("manifest.json is a symlink out of its version folder")
    listed = []
    for subset, entry in subsets.items():
        if not isinstance(subset, str) or not _NAME_RE.match(subset):
            bad(f"subset name {subset!r} is not a plain name")
        if not isinstance(entry, dict):
            bad(f"subset {subset!r} is not an object")
        if entry.get("kind") not in KINDS:
            bad(f"subset {subset!r} has unknown kind {entry.get('kind')!r} (known: {', '.join(KINDS)})")
        if not _is_int(entry.get("rows")) or entry["rows"] < 0:
            bad(f"subset {subset!r} rows {entry.get('rows')!r} is not a non-negative integer")
        if not isinstance(entry.get("content_hash"), str):
            bad(f"subset {subset!r} content_hash is not a string")
        files = entry.get("files")
        if not isinstance(files, list) or not files:
            bad(f"subset {subset!r} files is not a non-empty list")
        for rel in files:
            try:
                listed.append(_check_rel_path(rel, version_dir, real_dir))
            except ValueError as exc:
                bad(f"subset {subset!r}: {exc}")
    if len(set(listed)) != len(listed):
        bad("a file is listed twice")
    if manifest["format"] != "macpo.store/1":
        records = manifest.get("files")
        if not isinstance(records, dict) or set(records) != set(listed):
            bad("files must list every data file of the subsets with its size and sha256")
        for rel, rec in records.items():
            if not isinstance(rec, dict) or not _is_int(rec.get("size")) or rec["size"] < 0 \
                    or not isinstance(rec.get("sha256"), str) or not _SHA256_RE.match(rec["sha256"]):
                bad(f"files[{rel!r}] needs an integer size and a hex sha256")
    return manifest


def size_problems(version_dir: Path, manifest: dict) -> list[str]:
    """Missing, non-regular or resized data files of a validated manifest (one stat per file)."""
    records = manifest.get("files") or {}
    problems = []
    for rel in (rel for entry in manifest["subsets"].values() for rel in entry["files"]):
        try:
            st = (version_dir / rel).stat()
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel}: not a regular file")
        elif rel in records and st.st_size != records[rel]["size"]:
            problems.append(f"{rel}: {st.st_size} bytes, the manifest says {records[rel]['size']}")
    return problems


def write_manifest(tmp: Path, name, version, content_hash, parent_hash, entries, records, meta) -> None:
    """Write ``tmp``'s manifest.json (read-only, fsynced): the version's identity, hashes and files."""
    config, extra = meta["config"], meta["extra"] or {}
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": name,
        "version": version,
        "content_hash": content_hash,
        "parent_hash": parent_hash,
        "subsets": entries,
        # Every data file with its size (checked on each read) and sha256 (`status --verify`, push).
        "files": records,
        "config_hash": json_hash(config) if config is not None else None,
        "config": config,
        "models": meta["models"] or {},
        # Kept outside the content hash on purpose.
        "macpo_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    clash = sorted(set(extra) & set(manifest))
    if clash:  # a caller bug: `extra` must never replace the format, files or hashes
        raise ValueError(f"extra manifest keys {clash} would replace the store's own")
    manifest.update(extra)
    manifest_path = tmp / MANIFEST
    if manifest_path.exists():  # a retry under the next version number
        manifest_path.unlink()
    with open(manifest_path, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    make_read_only(manifest_path)
    fsync_dir(tmp)

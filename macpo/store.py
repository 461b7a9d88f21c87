"""The round store: a directory of named, versioned, immutable datasets.

Layout::

    STORE/
      NAME/
        VERSION/                      # "v1", "round-0", ...
          manifest.json
          SUBSET/train-00000-of-00001.parquet
      .work/NAME/VERSION/...          # resumable scratch space of long builds

A version appears only when complete: it is written to a temporary folder next to its
final place, fsynced, then renamed. Writing a version that exists is a no-op when the
content hash matches and an error naming both hashes otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from macpo import __version__, facts
from macpo.errors import UserError
from macpo.fsutil import fsync_dir, make_read_only
from macpo.hashing import file_sha256, json_hash, table_hash
from macpo.schema import conform

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "macpo.store/2"
# macpo.store/1 manifests (written before per-file sizes and hashes existed) are still read:
# they get the path checks, and `status --verify` / `push` recompute their content hash.
KNOWN_FORMATS = ("macpo.store/1", MANIFEST_FORMAT)
ROWS_PER_SHARD = 500_000
WRITER_THREADS = 2  # data shards written at once by Store.write (each holds about one column chunk in memory)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TMP_PREFIX = ".tmp-"
WRITER_LOCK = ".writer.lock"
# A .tmp- folder without a writer lock (left by an older macpo) counts as stale after this long;
# a live writer creates its lock right after the folder, so only microseconds are unlocked.
UNLOCKED_TMP_GRACE_S = 600
LOCK_GRACE_S = 60


@dataclass(frozen=True)
class Subset:
    """One table of a version: its kind (``pairs``, ``sft``, ...) and rows."""

    kind: str
    table: pa.Table


@dataclass(frozen=True)
class WriteResult:
    name: str
    version: str
    content_hash: str
    created: bool  # False when the identical version already existed
    # Set when identical content was already stored but damaged, so a fresh version was written:
    # "NAME/VERSION: what is wrong".
    replaced_damaged: str | None = None


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or not _NAME_RE.match(value):
        raise UserError(f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-'")
    if len(value) > MAX_NAME_LEN:  # a folder name (plus '.tmp-' prefixes and '-evals' suffixes) within 255 bytes
        raise UserError(f"invalid {what} {value[:20]}... ({len(value)} characters; at most {MAX_NAME_LEN})")
    return value


MAX_NAME_LEN = 128


check_name = _check_name


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


def _utf8_name(folder: Path, name: str) -> str:
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
    from macpo.schema import KINDS

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


class Store:
    def __init__(self, root: str | os.PathLike, create: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            if create and not self.root.exists():
                try:
                    self.root.mkdir(parents=True)
                except OSError as exc:
                    raise UserError(f"cannot create store {self.root}: {exc.strerror}") from None
            elif self.root.exists():
                raise UserError(f"store {self.root} is not a directory")
            else:
                raise UserError(f"store {self.root} does not exist")

    # ---- reading -----------------------------------------------------------------
    def datasets(self) -> list[str]:
        return sorted(_utf8_name(self.root, p.name) for p in self.root.iterdir()
                      if not p.name.startswith(".") and p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [_utf8_name(base, p.name) for p in base.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()]
        return sorted(found, key=version_sort_key)

    def has(self, name: str, version: str) -> bool:
        return (self.root / name / version / MANIFEST).is_file()

    def resolve(self, name: str | None = None, version: str | None = None) -> tuple[str, str]:
        """Pick a dataset (the only one, if ``name`` is None) and a version (latest if None)."""
        if name is None:
            names = self.datasets()
            if len(names) != 1:
                listing = ", ".join(names) or "none"
                raise UserError(f"store {self.root} holds {len(names)} datasets ({listing}); pass --dataset")
            name = names[0]
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.datasets()) or "none"
            raise UserError(f"no dataset {name!r} in store {self.root} (datasets: {known})")
        if version is None:
            return name, versions[-1]
        if version not in versions:
            raise UserError(f"dataset {name!r} has no version {version!r} (versions: {', '.join(versions)})")
        return name, version

    def path(self, name: str, version: str) -> Path:
        return self.root / name / version

    def manifest(self, name: str, version: str) -> dict:
        """The version's manifest, validated (``validate_manifest``): a bad one is a UserError."""
        folder = self.path(name, version)
        path = folder / MANIFEST
        where = f"{name}/{version}"
        try:
            if not folder.resolve().is_relative_to(self.root.resolve()):
                raise UserError(f"{where}: the version folder is a symlink out of store {self.root}")
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"no version {name}/{version} in store {self.root}") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UserError(f"{path}: corrupt manifest ({str(exc).splitlines()[0][:200]})") from None
        except OSError as exc:
            raise UserError(f"{path}: cannot read the manifest ({exc.strerror})") from None
        return validate_manifest(manifest, folder, where)

    def subsets(self, name: str, version: str) -> list[str]:
        return list(self.manifest(name, version)["subsets"])

    def files(self, name: str, version: str, subset: str) -> list[Path]:
        """The data files of one subset, after checking the version's file sizes."""
        manifest = self.manifest(name, version)
        self.check_sizes(name, version, manifest)
        entry = self._subset_entry(name, version, subset, manifest)
        return [self.path(name, version) / f for f in entry["files"]]

    def data_files(self, name: str, version: str, manifest: dict | None = None) -> list[str]:
        """Every data file of a version, relative to its folder, in manifest order."""
        manifest = manifest if manifest is not None else self.manifest(name, version)
        return [rel for entry in manifest["subsets"].values() for rel in entry["files"]]

    def _subset_entry(self, name: str, version: str, subset: str, manifest: dict | None = None) -> dict:
        subsets = (manifest if manifest is not None else self.manifest(name, version))["subsets"]
        if subset not in subsets:
            raise UserError(f"{name}/{version} has no subset {subset!r} (subsets: {', '.join(subsets) or 'none'})")
        return subsets[subset]

    def size_problems(self, name: str, version: str, manifest: dict | None = None) -> list[str]:
        """The cheap integrity check (one stat per file): missing, non-regular or resized files."""
        manifest = manifest if manifest is not None else self.manifest(name, version)
        return size_problems(self.path(name, version), manifest)

    def check_sizes(self, name: str, version: str, manifest: dict | None = None) -> None:
        """Refuse to read a version whose files were removed, replaced or resized since it was written."""
        problems = self.size_problems(name, version, manifest)
        if problems:
            raise UserError(
                f"{name}/{version} is damaged: {'; '.join(problems)} (run `macpo status --verify --store {self.root}`)"
            )

    def verify(self, name: str, version: str, content: bool = True, progress=None, check_facts: bool = True) -> list[str]:
        """Every problem of a version, [] when intact: files' sizes and sha256 against the manifest,
        then (``content``) each subset's rows re-read, re-hashed and compared with its content hash,
        then (``check_facts``, on intact data) the stored facts the audits read (macpo/facts.py):
        their sha256, and with ``content`` the facts recomputed from the data."""
        try:
            manifest = self.manifest(name, version)
        except UserError as exc:
            return [str(exc)]
        problems = self.size_problems(name, version, manifest)
        broken = {p.split(":", 1)[0] for p in problems}
        records = manifest.get("files") or {}
        for rel in self.data_files(name, version, manifest):
            if rel in records and rel not in broken:
                actual = file_sha256(self.path(name, version) / rel)
                if actual != records[rel]["sha256"]:
                    problems.append(f"{rel}: sha256 {actual[:16]}…, the manifest says {records[rel]['sha256'][:16]}…")
                    broken.add(rel)
            if progress is not None:
                progress()
        if content or not records:  # a macpo.store/1 manifest has no file hashes: re-hash the rows
            for subset, entry in manifest["subsets"].items():
                if broken & set(entry["files"]) and records:
                    continue  # already named; its rows cannot be read back reliably
                try:
                    table = self._read_files(name, version, subset, entry)
                except UserError as exc:
                    problems.append(f"{subset}: {exc}")
                    continue
                if table.num_rows != entry["rows"]:
                    problems.append(f"{subset}: {table.num_rows} rows, the manifest says {entry['rows']}")
                elif table_hash(table) != entry["content_hash"]:
                    problems.append(f"{subset}: the rows hash to {table_hash(table)}, the manifest says {entry['content_hash']}")
            if dataset_hash(manifest["subsets"]) != manifest["content_hash"]:
                problems.append("the manifest's content_hash does not match its subsets' hashes")
        if check_facts and not problems:
            problems += [f"{p} (audits rebuild the facts)" for p in facts.facts_problems(self.path(name, version), manifest, recompute=content)]
        return problems

    def read(self, name: str, version: str, subset: str) -> pa.Table:
        """Read one subset, validated against its kind's schema (after the cheap size check)."""
        manifest = self.manifest(name, version)
        self.check_sizes(name, version, manifest)
        return self._read_files(name, version, subset, self._subset_entry(name, version, subset, manifest))

    def _read_files(self, name: str, version: str, subset: str, entry: dict) -> pa.Table:
        files = [self.path(name, version) / f for f in entry["files"]]
        where = f"{name}/{version}/{subset}"
        try:
            tables = [pq.read_table(f) for f in files]
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{where}: cannot read Parquet ({str(exc).splitlines()[0][:200]})") from None
        return conform(table, entry["kind"], where, stored=True)  # as stored: its content hash covers it

    # ---- leftovers of killed writers -------------------------------------------------
    def stale_tmp(self) -> list[Path]:
        """``.tmp-*`` folders whose writer is gone (killed mid-write): no live lock holds them; and
        the ``.facts-tmp-*`` folders of killed audits inside versions (macpo/facts.py)."""
        found = []
        for base in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += [p for p in sorted(base.glob(TMP_PREFIX + "*")) if p.is_dir() and writer_gone(p)]
            for version in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
                found += facts.stale_tmp(version)
        return found

    def _remove_stale_tmp(self, name: str) -> None:
        for tmp in (self.root / name).glob(TMP_PREFIX + "*"):
            if tmp.is_dir() and writer_gone(tmp):
                shutil.rmtree(tmp, ignore_errors=True)

    # ---- writing -----------------------------------------------------------------
    def work_dir(self, name: str, version: str) -> Path:
        """Scratch space for resumable builds of ``name/version``; removed on commit."""
        path = self.root / ".work" / name / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(
        self,
        name: str,
        version: str,
        subsets: Mapping[str, Subset],
        *,
        parent_hash: str | None = None,
        config: Mapping[str, Any] | None = None,
        models: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> WriteResult:
        """Atomically write one immutable version."""
        _check_name("dataset name", name)
        _check_name("version", version)
        conformed = self._conform(name, version, subsets)
        if (self.path(name, version) / MANIFEST).is_file():
            return self._existing(name, version, self._hash(conformed)[1])
        meta = {"parent_hash": parent_hash, "config": config, "models": models, "extra": extra}
        return self._commit_or_refuse(name, conformed, meta, fixed_version=version)

    def _commit_or_refuse(self, name, conformed, meta, fixed_version=None) -> WriteResult:
        """``_commit``, with a store that cannot be written (read-only, disk or quota full) as one
        line: ``_commit`` has already removed its temporary folder, and a dataset folder this
        write created is removed too, so nothing is left half-written."""
        base = self.root / name
        existed = base.exists()
        try:
            return self._commit(name, conformed, meta, fixed_version=fixed_version)
        except OSError as exc:
            if exc.errno not in facts.WRITE_ERRNOS:
                raise
            if not existed:
                try:
                    base.rmdir()  # only if empty
                except OSError:
                    pass
            raise UserError(f"cannot write {name} into store {self.root}: {exc.strerror}; nothing was written") from None

    @staticmethod
    def _conform(name: str, version: str, subsets: Mapping[str, Subset]) -> dict:
        if not subsets:
            raise UserError(f"{name}/{version}: nothing to write (no subsets)")
        conformed = {}
        for subset, item in subsets.items():
            _check_name("subset name", subset)
            conformed[subset] = (item.kind, conform(item.table, item.kind, f"{name}/{version}/{subset}"))
        return conformed

    @staticmethod
    def _hash(conformed: dict) -> tuple[dict, str]:
        entries = {s: {"kind": k, "rows": t.num_rows, "content_hash": table_hash(t)} for s, (k, t) in conformed.items()}
        return entries, dataset_hash(entries)

    def _latest_v(self, name: str) -> str | None:
        versions = [v for v in self.versions(name) if re.fullmatch(r"v\d+", v)]
        return versions[-1] if versions else None

    def _commit(self, name, conformed, meta, fixed_version=None) -> WriteResult:
        """Write ``conformed`` as a new version of ``name``: ``fixed_version``, or else the next
        ``vN`` unless the latest ``vN`` holds the same content intact (``write_next``).

        The files are written, hashed and made read-only in a ``.tmp-`` folder held by a writer
        lock, then the folder is renamed into place. When another writer takes the same ``vN``
        first, the rename fails and the next number is tried, so racing imports end as v1, v2.
        """
        from concurrent.futures import ThreadPoolExecutor

        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp(name)
        tmp = base / f"{TMP_PREFIX}{fixed_version or 'next'}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        lock = open(tmp / WRITER_LOCK, "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            latest = None if fixed_version else self._latest_v(name)
            latest_hash = self.manifest(name, latest)["content_hash"] if latest else None
            # The row hashing holds the GIL (one sha256 call per row); writing Parquet, reading files
            # back for their sha256 and computing the facts (DuckDB, Arrow) release it. So the data
            # shards are written on two more threads and the facts on a fourth while the rows are
            # hashed here: on two cores the costs overlap, and the OS can keep both cores busy.
            with ThreadPoolExecutor(WRITER_THREADS) as writer, ThreadPoolExecutor(1) as indexer:
                files = {}
                for subset, (_, table) in conformed.items():
                    (tmp / subset).mkdir()
                    files[subset] = {rel: writer.submit(write_parquet, part, tmp / rel) for rel, part in self._shards(subset, table)}

                def records() -> dict:  # {relative path: {"size", "sha256"}} of every data shard, in shard order
                    return {rel: future.result() for shards in files.values() for rel, future in shards.items()}

                # With an earlier vN that may hold the same content (write_next), the facts wait for
                # the hash: identical content writes nothing.
                indexed = indexer.submit(self._write_facts, tmp, conformed, records) if latest_hash is None else None
                entries, content_hash = self._hash(conformed)
                if indexed is None and latest_hash != content_hash:
                    self._write_facts(tmp, conformed, records)
                records = records()
                for subset, shards in files.items():
                    entries[subset]["files"] = list(shards)
                    fsync_dir(tmp / subset)
                if indexed is not None:
                    indexed.result()
            damaged = None
            while True:
                if latest is not None and latest_hash == content_hash:
                    problems = self.verify(name, latest, content=False, check_facts=False)
                    if not problems:
                        shutil.rmtree(tmp, ignore_errors=True)
                        return WriteResult(name, latest, content_hash, created=False)
                    damaged = f"{name}/{latest}: {'; '.join(problems)}"
                if not (tmp / facts.FACTS_DIR).exists():
                    self._write_facts(tmp, conformed, lambda: records)
                version = fixed_version or (f"v{int(latest[1:]) + 1}" if latest else "v1")
                parent = meta["parent_hash"] if (fixed_version or meta.get("explicit_parent")) else latest_hash
                self._write_manifest(tmp, name, version, content_hash, parent, entries, records, meta)
                final = self.path(name, version)
                try:
                    os.rename(tmp, final)
                    break
                except OSError:
                    if not (final / MANIFEST).is_file():
                        raise  # not a version: an unexpected folder sits there
                if fixed_version:  # someone else committed the same version first
                    shutil.rmtree(tmp, ignore_errors=True)
                    return self._existing(name, version, content_hash)
                latest = self._latest_v(name)  # another writer took this number: take the next one
                latest_hash = self.manifest(name, latest)["content_hash"] if latest else None
            fsync_dir(base)
            try:
                os.unlink(final / WRITER_LOCK)
            except OSError:
                pass
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            lock.close()
        shutil.rmtree(self.root / ".work" / name / version, ignore_errors=True)
        return WriteResult(name, version, content_hash, created=True, replaced_damaged=damaged)

    @staticmethod
    def _write_manifest(tmp: Path, name, version, content_hash, parent_hash, entries, records, meta) -> None:
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

    def _existing(self, name: str, version: str, content_hash: str) -> WriteResult:
        existing = self.manifest(name, version)["content_hash"]
        if existing != content_hash:
            raise UserError(
                f"{name}/{version} already exists with content {existing}; refusing to overwrite it with {content_hash}"
            )
        problems = self.size_problems(name, version)
        if problems:
            raise UserError(
                f"{name}/{version} already exists with this content but is damaged ({'; '.join(problems)}); "
                f"delete {self.path(name, version)} and write it again"
            )
        return WriteResult(name, version, content_hash, created=False)

    @staticmethod
    def _shards(subset: str, table: pa.Table) -> list[tuple[str, pa.Table]]:
        """(path relative to the version, rows) of each Parquet shard of one subset."""
        n_shards = max(1, -(-table.num_rows // ROWS_PER_SHARD))
        return [
            (f"{subset}/train-{i:05d}-of-{n_shards:05d}.parquet", table.slice(i * ROWS_PER_SHARD, ROWS_PER_SHARD))
            for i in range(n_shards)
        ]

    @classmethod
    def _write_facts(cls, tmp: Path, conformed: dict, records) -> None:
        """The per-row facts shards (macpo/facts.py) beside the data shards, same slicing; each
        records its data shard's sha256 (``records()``, called once the shards are written)."""
        shards = ((subset, kind, rel, part) for subset, (kind, table) in conformed.items() for rel, part in cls._shards(subset, table))
        facts.write_facts_dir(tmp / facts.FACTS_DIR, shards, data_sha256=lambda: {rel: r["sha256"] for rel, r in records().items()})

    def write_next(self, name: str, subsets: Mapping[str, Subset], **kwargs) -> WriteResult:
        """Append a ``vN`` version unless the latest version has identical, intact content.

        Identical content whose stored copy is damaged is written again as the next version,
        and the result's ``replaced_damaged`` says what was wrong with the old one.
        """
        _check_name("dataset name", name)
        latest = self._latest_v(name)
        conformed = self._conform(name, f"v{int(latest[1:]) + 1}" if latest else "v1", subsets)
        meta = {"parent_hash": kwargs.get("parent_hash"), "config": kwargs.get("config"), "models": kwargs.get("models"),
                "extra": kwargs.get("extra"), "explicit_parent": "parent_hash" in kwargs}
        return self._commit_or_refuse(name, conformed, meta)


def write_parquet(table: pa.Table, path: Path) -> dict:
    """Write ``table`` to a new snappy Parquet file at ``path``, fsynced and made read-only;
    return its ``{"size", "sha256"}``, hashed from disk after the write: the bytes a reader sees."""
    # An Arrow file, not a Python one: the Parquet writer makes ~1,700 writes per 500k-row shard,
    # and through a Python file object each needs the GIL, which the row hashing on the main
    # thread holds for milliseconds at a time: the writer thread spent most of its time waiting.
    with pa.OSFile(str(path), "wb") as sink:
        pq.write_table(table, sink, compression="snappy")
        os.fsync(sink.fileno())
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        # Mapped, the whole file is one sha256 call that runs without the GIL. Safe here, where no
        # one else can truncate the file under the map; `status --verify` reads files in blocks.
        with mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ) as view:
            record = {"size": size, "sha256": hashlib.sha256(view).hexdigest()}
    make_read_only(path)
    return record


def writer_gone(tmp: Path) -> bool:
    """True when no live writer holds ``tmp``'s lock (flock dies with its process)."""
    try:
        fd = os.open(tmp / WRITER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        try:
            return time.time() - tmp.stat().st_mtime > UNLOCKED_TMP_GRACE_S
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A writer creates its lock file, then locks it: in between, the lock is free. A lock file
        # that young belongs to a live writer, never to a killed one.
        return time.time() - os.fstat(fd).st_mtime > LOCK_GRACE_S
    except BlockingIOError:
        return False
    finally:
        os.close(fd)

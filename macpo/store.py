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

import fcntl
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from macpo import facts
from macpo.errors import UserError
from macpo.fsutil import WRITER_LOCK, fsync_dir, write_parquet, writer_gone
from macpo.hashing import file_sha256, table_hash
from macpo.manifest import (MANIFEST, check_name, dataset_hash, size_problems, utf8_name, validate_manifest,
                            version_sort_key, write_manifest)
from macpo.schema import conform

ROWS_PER_SHARD = 500_000
# Data shards Store.write writes at once. One: the row hashing on the main thread holds the GIL and
# is the long pole, and every further busy thread takes CPU from it on two cores (at 1M rows, one
# run each 15 minutes apart: two writer threads used 1.63 cores and reached 0.51x the bare write,
# one writer 1.79 cores and 0.62x).
WRITER_THREADS = 1
TMP_PREFIX = ".tmp-"


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
        return sorted(utf8_name(self.root, p.name) for p in self.root.iterdir()
                      if not p.name.startswith(".") and p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [utf8_name(base, p.name) for p in base.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()]
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
        check_name("dataset name", name)
        check_name("version", version)
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
            check_name("subset name", subset)
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
            # shards are written on a second thread and the facts on a third while the rows are
            # hashed here: on two cores the costs overlap.
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
                write_manifest(tmp, name, version, content_hash, parent, entries, records, meta)
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
        check_name("dataset name", name)
        latest = self._latest_v(name)
        conformed = self._conform(name, f"v{int(latest[1:]) + 1}" if latest else "v1", subsets)
        meta = {"parent_hash": kwargs.get("parent_hash"), "config": kwargs.get("config"), "models": kwargs.get("models"),
                "extra": kwargs.get("extra"), "explicit_parent": "parent_hash" in kwargs}
        return self._commit_or_refuse(name, conformed, meta)

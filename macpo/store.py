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

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from macpo import __version__, facts
from macpo.errors import UserError
from macpo.fsutil import fsync_dir
from macpo.hashing import json_hash, table_hash
from macpo.schema import conform

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "macpo.store/1"
ROWS_PER_SHARD = 500_000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def _check_name(what: str, value: str) -> str:
    if not value or not _NAME_RE.match(value):
        raise UserError(f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-'")
    return value


def version_sort_key(version: str):
    """Natural order on every digit run: v2 < v10, round-2 < round-10, and the round-0 parts
    (round-0-labels, round-0-teachers) right after round-0, before round-1."""
    parts = re.split(r"(\d+)", version)  # text, digits, text, ...: types alternate the same way
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def dataset_hash(subsets: Mapping[str, Mapping[str, Any]]) -> str:
    """A version's content hash: over each subset's kind and order-independent row hash."""
    return json_hash({name: {"kind": s["kind"], "hash": s["content_hash"]} for name, s in subsets.items()})


class Store:
    def __init__(self, root: str | os.PathLike, create: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            if create and not self.root.exists():
                self.root.mkdir(parents=True)
            elif self.root.exists():
                raise UserError(f"store {self.root} is not a directory")
            else:
                raise UserError(f"store {self.root} does not exist")

    # ---- reading -----------------------------------------------------------------
    def datasets(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()]
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
        path = self.path(name, version) / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"no version {name}/{version} in store {self.root}") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: corrupt manifest ({exc})") from None

    def subsets(self, name: str, version: str) -> list[str]:
        return list(self.manifest(name, version)["subsets"])

    def files(self, name: str, version: str, subset: str) -> list[Path]:
        entry = self._subset_entry(name, version, subset)
        return [self.path(name, version) / f for f in entry["files"]]

    def _subset_entry(self, name: str, version: str, subset: str) -> dict:
        subsets = self.manifest(name, version)["subsets"]
        if subset not in subsets:
            raise UserError(f"{name}/{version} has no subset {subset!r} (subsets: {', '.join(subsets) or 'none'})")
        return subsets[subset]

    def read(self, name: str, version: str, subset: str) -> pa.Table:
        """Read one subset, validated against its kind's schema."""
        entry = self._subset_entry(name, version, subset)
        files = [self.path(name, version) / f for f in entry["files"]]
        where = f"{name}/{version}/{subset}"
        try:
            tables = [pq.read_table(f) for f in files]
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"{where}: cannot read Parquet ({exc})") from None
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return conform(table, entry["kind"], where)

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
        return self._commit(name, version, conformed, parent_hash, config, models, extra)

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

    def _commit(self, name, version, conformed, parent_hash, config, models, extra, unless_same_as=None) -> WriteResult:
        """Write ``conformed`` as ``name/version``; with ``unless_same_as=(version, hash)``, skip it
        when its content hash equals that version's (``write_next``'s no-op)."""
        from concurrent.futures import ThreadPoolExecutor

        final = self.path(name, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            # Parquet encoding releases the GIL while hashing mostly holds it, so the shards are
            # written in a second thread while the rows are hashed: on two cores the costs overlap.
            with ThreadPoolExecutor(1) as pool:
                files = {s: pool.submit(self._write_shards, tmp, s, t) for s, (_, t) in conformed.items()}
                entries, content_hash = self._hash(conformed)
                if unless_same_as is None or unless_same_as[1] != content_hash:
                    self._write_facts(tmp, conformed)
                for subset, future in files.items():
                    entries[subset]["files"] = future.result()
            if unless_same_as is not None and unless_same_as[1] == content_hash:
                shutil.rmtree(tmp, ignore_errors=True)
                return WriteResult(name, unless_same_as[0], content_hash, created=False)
            manifest = {
                "format": MANIFEST_FORMAT,
                "dataset": name,
                "version": version,
                "content_hash": content_hash,
                "parent_hash": parent_hash,
                "subsets": entries,
                "config_hash": json_hash(config) if config is not None else None,
                "config": config,
                "models": models or {},
                **(dict(extra) if extra else {}),
                # Kept outside the content hash on purpose.
                "macpo_version": __version__,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            manifest_path = tmp / MANIFEST
            with open(manifest_path, "w") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=False, default=str)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                # Someone else committed the same version first (or an empty dir sits there).
                if (final / MANIFEST).is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                    return self._existing(name, version, content_hash)
                raise
            fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.root / ".work" / name / version, ignore_errors=True)
        return WriteResult(name, version, content_hash, created=True)

    def _existing(self, name: str, version: str, content_hash: str) -> WriteResult:
        existing = self.manifest(name, version)["content_hash"]
        if existing != content_hash:
            raise UserError(
                f"{name}/{version} already exists with content {existing}; refusing to overwrite it with {content_hash}"
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
    def _write_shards(cls, tmp: Path, subset: str, table: pa.Table) -> list[str]:
        (tmp / subset).mkdir()
        files = []
        for rel, part in cls._shards(subset, table):
            with open(tmp / rel, "wb") as fh:
                pq.write_table(part, fh, compression="snappy")
                fh.flush()
                os.fsync(fh.fileno())
            files.append(rel)
        fsync_dir(tmp / subset)
        return files

    @classmethod
    def _write_facts(cls, tmp: Path, conformed: dict) -> None:
        """The per-row facts shards (macpo/facts.py) beside the data shards, same slicing."""
        shards = ((subset, kind, rel, part) for subset, (kind, table) in conformed.items() for rel, part in cls._shards(subset, table))
        facts.write_facts_dir(tmp / facts.FACTS_DIR, shards)

    def write_next(self, name: str, subsets: Mapping[str, Subset], **kwargs) -> WriteResult:
        """Append a ``vN`` version unless the latest version has identical content."""
        _check_name("dataset name", name)
        versions = [v for v in self.versions(name) if re.fullmatch(r"v\d+", v)]
        version = f"v{int(versions[-1][1:]) + 1}" if versions else "v1"
        conformed = self._conform(name, version, subsets)
        latest = (versions[-1], self.manifest(name, versions[-1])["content_hash"]) if versions else None
        parent = kwargs.get("parent_hash", latest[1] if latest else None)
        return self._commit(name, version, conformed, parent, kwargs.get("config"), kwargs.get("models"),
                            kwargs.get("extra"), unless_same_as=latest)

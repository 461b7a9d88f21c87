"""Reading the training subset (store or Hub) and shaping it into exactly what TRL consumes.

``load_source`` returns an Arrow table plus provenance (where it came from, which version or
pinned revision, the resolved commit sha, the manifest's content hash). ``to_trl_dataset``
keeps only the columns the chosen loss needs, so all-null optional columns (absent reference
log-probs, provenance) never reach TRL.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from macpo.errors import UserError
from macpo.hashing import table_hash
from macpo.schema import conform
from macpo.store import Store

_HUB_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^@\s]+))?$")
REF_COLUMNS = {"chosen": "ref_chosen_logps", "rejected": "ref_rejected_logps", "self": "ref_self_logps"}


def is_hub_source(source: str) -> bool:
    """A Hub id ``org/name[@rev]`` that is not an existing local path."""
    return not Path(source).exists() and bool(_HUB_RE.match(source))


def load_source(
    source: str, subset: str, dataset: str | None = None, version: str | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """Load one subset from a store directory or a Hub dataset ``org/name[@revision]``."""
    if Path(source).exists():
        return _load_store(source, subset, dataset, version)
    if is_hub_source(source):
        return _load_hub(source, subset, version)
    raise UserError(f"--data {source}: no such store directory, and not a Hub dataset id ORG/NAME[@REVISION]")


def _load_store(root: str, subset: str, dataset: str | None, version: str | None):
    store = Store(root)
    name, version = store.resolve(dataset, version)
    manifest = store.manifest(name, version)
    table = store.read(name, version, subset)
    entry = manifest["subsets"][subset]
    provenance = {
        "source": str(Path(root).resolve()),
        "kind": "store",
        "dataset": name,
        "version": version,
        "subset": subset,
        "table_kind": entry.get("kind"),
        "content_hash": manifest.get("content_hash"),
        "subset_hash": entry.get("content_hash"),
        "rows": table.num_rows,
    }
    return table, provenance


def _hub_config_candidates(subset: str, version: str | None, revision: str | None) -> list[str]:
    """``macpo push`` names configs ``<version>-<subset>`` (``round-2-student``); the full
    config name given as the subset works too."""
    names = [f"{prefix}-{subset}" for prefix in (version, revision) if prefix and not subset.startswith(f"{prefix}-")]
    return list(dict.fromkeys([*names, subset]))


def _load_hub(source: str, subset: str, version: str | None):
    from datasets import load_dataset
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    m = _HUB_RE.match(source)
    repo, revision = m.group("repo"), m.group("rev")
    try:
        sha = HfApi().dataset_info(repo, revision=revision).sha
    except RepositoryNotFoundError:
        raise UserError(f"--data {source}: no such Hub dataset (or no access)") from None
    except RevisionNotFoundError:
        raise UserError(f"--data {source}: the dataset has no revision {revision!r}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"--data {source}: cannot reach the Hub ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # json.JSONDecodeError: a 200 that is a web page (captive portal, proxy)
        from huggingface_hub import constants

        raise UserError(f"--data {source}: {constants.ENDPOINT} answered with something that is not the Hub API "
                        f"({type(exc).__name__}; a login page or proxy?); check HF_ENDPOINT and the network") from None
    if version is None and revision and re.fullmatch(r"round-\d+", revision):
        version = revision

    table, config, errors = None, None, []
    # Load by the resolved sha, not the tag: a tag moved between these calls cannot mix rounds.
    for config in _hub_config_candidates(subset, version, revision):
        try:
            ds = load_dataset(repo, config, revision=sha, split="train")
        except ValueError as exc:  # unknown config name
            errors.append(str(exc).splitlines()[0])
            continue
        table = ds.data.table
        break
    if table is None:
        raise UserError(f"--data {source}: no config for subset {subset!r} ({errors[-1] if errors else 'not found'})")

    manifest = None
    for path in ([f"{version}/manifest.json"] if version else []) + ["manifest.json"]:
        try:
            manifest = json.loads(Path(hf_hub_download(repo, path, repo_type="dataset", revision=sha)).read_text())
            break
        except (EntryNotFoundError, json.JSONDecodeError):
            continue
        except HfHubHTTPError as exc:  # some servers answer 404 without the EntryNotFound code
            if getattr(exc.response, "status_code", None) == 404:
                continue
            raise
    provenance = {
        "source": repo,
        "kind": "hub",
        "revision": revision,
        "resolved_sha": sha,
        "version": version,
        "subset": subset,
        "config": config,
        "content_hash": manifest.get("content_hash") if manifest else None,
        "rows": table.num_rows,
    }
    table = pa.table(table)
    if manifest:
        entry = (manifest.get("subsets") or {}).get(subset) or (manifest.get("subsets") or {}).get(config) or {}
        provenance["subset_hash"] = entry.get("content_hash")
        provenance["dataset"] = manifest.get("dataset")
        _check_against_manifest(source, subset, table, entry)
    return table, provenance


def _check_against_manifest(source: str, subset: str, table: pa.Table, entry: Mapping) -> None:
    """Train only on the rows the published manifest vouches for: the Hub serves whatever was
    committed after it (a replaced shard, a hand edit), and `load_dataset` checks nothing."""
    expected, kind = entry.get("content_hash"), entry.get("kind")
    if not expected or not kind:
        return  # a dataset published without a macpo manifest entry: nothing to check against
    try:
        got = table_hash(conform(table, kind, f"{source} {subset}", stored=True))
    except (UserError, ValueError, TypeError, pa.ArrowException) as exc:
        raise UserError(f"--data {source}: subset {subset!r} does not have the {kind} schema its manifest names "
                        f"({str(exc).splitlines()[0]}); refusing to train on it") from None
    if got != expected:
        raise UserError(f"--data {source}: subset {subset!r} does not match its manifest (content hash {got[:19]}… "
                        f"vs {expected[:19]}…): its files changed after publishing; refusing to train on it")


# ---- shaping for TRL -----------------------------------------------------------------
@dataclass
class Prepared:
    dataset: Any  # datasets.Dataset
    stored_ref: bool  # reference log-probs come from the data; no reference model is needed
    note: str  # what was done, for the log and metrics.json


def _null_or_empty(column: pa.ChunkedArray) -> int:
    """Rows with no value: null, or an empty message list."""
    nulls = column.null_count
    if pa.types.is_list(column.type):
        nulls += pc.sum(pc.equal(pc.list_value_length(column), 0)).as_py() or 0
    return nulls


def _need(table: pa.Table, column: str, where: str, why: str) -> None:
    if column not in table.column_names:
        raise UserError(f"{where}: missing column {column!r} ({why})")
    missing = _null_or_empty(table.column(column))
    if missing:
        raise UserError(f"{where}: column {column!r} is empty in {missing} of {table.num_rows} rows ({why})")


def to_trl_dataset(table: pa.Table, loss: str, where: str, max_samples: int | None = None) -> Prepared:
    """The columns ``loss`` needs, renamed the way TRL reads them."""
    from datasets import Dataset

    if max_samples is not None:
        table = table.slice(0, max_samples)
    if table.num_rows == 0:
        raise UserError(f"{where}: no rows to train on")
    cols = table.column_names
    _need(table, "prompt", where, "every row needs a prompt")

    if loss == "sft":
        if "completion" in cols:
            _need(table, "completion", where, "SFT target")
            out = {"prompt": table["prompt"], "completion": table["completion"]}
            note = "sft on prompt/completion"
        elif "chosen" in cols:
            _need(table, "chosen", where, "SFT target")
            out = {"prompt": table["prompt"], "completion": table["chosen"]}
            note = "sft on the chosen responses of a preference table"
        else:
            raise UserError(f"{where}: --loss sft needs a 'completion' (sft table) or 'chosen' (pairs table) column")
        return Prepared(Dataset(pa.table(out)), stored_ref=False, note=note)

    if "chosen" not in cols:
        raise UserError(f"{where}: --loss {loss} needs a preference (pairs) table with chosen/rejected, not an sft table")
    _need(table, "chosen", where, "preference data")
    if loss in ("spin", "spac"):
        if "self_response" not in cols or _null_or_empty(table.column("self_response")):
            have = table.num_rows - (_null_or_empty(table.column("self_response")) if "self_response" in cols else table.num_rows)
            raise UserError(
                f"{where}: --loss {loss} needs y' (self_response) in every row, {have} of {table.num_rows} have it; "
                f"produce it with `macpo build` using method {loss}"
            )
    if loss != "spin":
        _need(table, "rejected", where, "preference data")

    # Which completion plays which role for TRL.
    roles = {"chosen": "chosen", "rejected": "self_response" if loss == "spin" else "rejected"}
    if loss == "spac":
        roles["self_response"] = "self_response"
    ref_of = {"chosen": "ref_chosen_logps", "rejected": "ref_rejected_logps", "self_response": "ref_self_logps"}

    out = {"prompt": table["prompt"]}
    for trl_name, source in roles.items():
        out[trl_name] = table[source]

    refs, partial = {}, []
    for trl_name, source in roles.items():
        ref_col = ref_of[source]
        if ref_col not in cols:
            continue
        nulls = table.column(ref_col).null_count
        if nulls == 0:
            refs[ref_of[trl_name]] = table.column(ref_col).cast(pa.float64())
        elif nulls < table.num_rows:
            partial.append(f"{ref_col} ({table.num_rows - nulls} of {table.num_rows} rows)")
    if partial:
        raise UserError(f"{where}: reference log-probs are only partly stored: {', '.join(partial)}; store all or none")
    stored = len(refs) == len(roles)
    if stored:
        out.update(refs)
    note = f"{loss} on " + ", ".join(f"{k}={v}" for k, v in roles.items())
    note += "; reference log-probs from the data" if stored else ""
    return Prepared(Dataset(pa.table(out)), stored_ref=stored, note=note)

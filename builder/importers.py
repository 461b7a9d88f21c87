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

import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from macpo.builder.import_formats import AXES, FORMATS, HUMAN_LABELLED, PARSERS, BadRow, Parsed, ParsedSFT, parse_pku
from macpo.builder.import_sources import MAX_BYTES, MAX_LINE_BYTES, HubOptions, is_hub_ref, iter_records
from macpo.cliutil import make_parser, run_script
from macpo.errors import UserError
from macpo.manifest import check_name
from macpo.store import Store, Subset


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
    run_script("macpo import", main)

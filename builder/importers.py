"""``macpo import``: turn existing preference data into one store version.

Formats:
- ``hh-rlhf``: Anthropic raw transcripts ``{"chosen", "rejected"}``, ``.jsonl`` or ``.jsonl.gz``.
- ``trl``: TRL standard or conversational preference rows, from jsonl/json/parquet, a
  ``save_to_disk`` folder, or a Hub dataset ``org/name[@revision]``.
- ``llamafactory``: alpaca ranking JSON (``instruction``, ``input``, ``output: [chosen, rejected]``).

Every import writes one subset named ``default`` (kind ``pairs``). Identical content is a
no-op; different content becomes the next version (``v1``, ``v2``, ...). A row that cannot
be parsed stops the import with ``file:line: reason`` unless ``--skip-bad`` is given, in
which case bad rows go to a quarantine file and their count is printed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from macpo.cliutil import make_parser
from macpo.errors import UserError

FORMATS = ("hh-rlhf", "trl", "llamafactory")


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
def _as_messages(value, role: str, what: str) -> list[dict]:
    if isinstance(value, str):
        return [_msg(role, value)]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [_msg(str(m["role"]), str(m["content"])) for m in value]
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
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_records(src: str) -> Iterator[tuple[str, object]]:
    """Yield (location, record) from a file, folder or Hub dataset; location is ``file:line``."""
    path = Path(src)
    if path.is_dir():
        yield from _iter_saved_dataset(path)
        return
    if not path.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", src):
            yield from _iter_hub(src)
            return
        raise UserError(f"{src}: no such file or folder")
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{src}:row {i + 1}", row
    elif name.endswith(".json"):
        with _open_text(path) as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise UserError(f"{src}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise UserError(f"{src}: a .json file must hold a list of rows (use .jsonl for one row per line)")
        for i, row in enumerate(data):
            yield f"{src}:item {i + 1}", row
    else:  # JSON lines, plain or gzipped
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{src}:{lineno}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{src}:{lineno}", BadRow(f"invalid JSON ({exc.msg})")


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
    from datasets import load_dataset

    repo, _, revision = ref.partition("@")
    try:
        ds = load_dataset(repo, split="train", revision=revision or None)
    except Exception as exc:  # datasets raises many types for a missing/unreachable repo
        raise UserError(f"{ref}: cannot load from the Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    for i, row in enumerate(ds):
        yield f"{ref}:row {i + 1}", row


# ---- the import itself ---------------------------------------------------------------------
def _short_hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_source(src: str, fmt: str, skip_bad: bool = False):
    """Parse every record; return (columns dict, list of (location, reason, record) skipped)."""
    if fmt not in PARSERS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    parse = PARSERS[fmt]
    cols: dict[str, list] = {k: [] for k in ("pair_id", "prompt_id", "prompt", "chosen", "rejected")}
    bad = []
    from tqdm import tqdm

    for where, record in tqdm(iter_records(src), desc=f"import {Path(src).name}", unit=" rows", disable=None):
        try:
            if isinstance(record, BadRow):
                raise record
            parsed = parse(record)
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


def import_pairs(src: str, fmt: str, store_dir: str, name: str, skip_bad: bool = False, quarantine: str | None = None):
    import pyarrow as pa

    from macpo.store import Store, Subset

    store = Store(store_dir, create=True)
    cols, bad = parse_source(src, fmt, skip_bad=skip_bad)
    n = len(cols["pair_id"])
    if n == 0:
        raise UserError(f"{src}: no rows to import")
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
    quarantine_path = None
    if bad:
        quarantine_path = Path(quarantine or Path(store_dir) / f"{name}.quarantine.jsonl")
        with open(quarantine_path, "w") as fh:
            for where, reason, record in bad:
                fh.write(json.dumps({"where": where, "reason": reason, "record": record}, default=str) + "\n")
    result = store.write_next(
        name,
        {"default": Subset("pairs", table)},
        extra={"source": {"path": str(src), "format": fmt, "skipped_rows": len(bad)}},
    )
    return result, n, len(bad), quarantine_path


def main(argv: list[str]) -> int:
    p = make_parser("import", __doc__.split("\n\n")[0])
    p.add_argument("src", help="file, save_to_disk folder, or Hub dataset org/name[@revision]")
    p.add_argument("--format", required=True, choices=FORMATS, help="input format")
    p.add_argument("--store", required=True, help="store directory (created if missing)")
    p.add_argument("--name", required=True, help="dataset name inside the store")
    p.add_argument("--skip-bad", action="store_true", help="skip unparseable rows into a quarantine file instead of stopping")
    p.add_argument("--quarantine", help="where skipped rows go (default STORE/NAME.quarantine.jsonl)")
    args = p.parse_args(argv)
    result, n, skipped, qpath = import_pairs(args.src, args.format, args.store, args.name, args.skip_bad, args.quarantine)
    if skipped:
        print(f"skipped {skipped} bad row(s); written to {qpath}", file=sys.stderr)
    state = "imported" if result.created else "unchanged (identical content already stored)"
    print(f"{result.name}/{result.version}: {n} pairs {state}; content {result.content_hash}")
    return 0


if __name__ == "__main__":
    from macpo.cli import main as cli_main

    raise SystemExit(cli_main(["import", *sys.argv[1:]]))

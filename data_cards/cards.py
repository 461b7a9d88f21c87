"""Dataset card for one published store version, rendered from ``dataset_card.md.j2``.

The card is rendered with ``huggingface_hub.DatasetCard.from_template`` and merged with the
card already on the Hub: every existing YAML key is kept (configs of earlier rounds, licence,
hand-written metadata), this version's configs are added, and only the part of the body
between the ``macpo:begin``/``macpo:end`` markers is ours to rewrite. Markdown lives in the
template; this module only gathers plain values for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

TEMPLATE = Path(__file__).with_name("dataset_card.md.j2")
BEGIN, END = "<!-- macpo:begin -->", "<!-- macpo:end -->"
TAGS = ("macpo", "preference", "dpo", "weak-to-strong")
SHARD_GLOB = "train-*.parquet"
SAMPLE_CHARS = 240

# The columns shown in sample rows, per table kind (others are provenance noise in a card).
SAMPLE_COLUMNS = {
    "pairs": ("prompt", "chosen", "rejected", "agent", "pair_type", "chosen_agent", "rejected_agent"),
    "sft": ("prompt", "completion", "agent", "source_agent"),
    "candidates": ("prompt", "response", "agent", "sample_index"),
    "prompts": ("prompt", "split"),
    "evals": ("prompt", "response", "agent", "method"),
}


REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "ref_self_logps")


@dataclass(frozen=True)
class AuditRow:
    name: str
    verdict: str
    count: int
    detail: str
    scope: str = ""  # "dataset/version" of a per-version line, "all" for the store-wide one


def ref_columns_in(files: list[Path]) -> list[str]:
    """The stored reference log-prob columns of one subset (every shard has the same columns;
    they are written only when they hold values, macpo/schema.py)."""
    import pyarrow.parquet as pq

    if not files:
        return []
    names = pq.read_schema(files[0]).names
    return [c for c in REF_COLUMNS if c in names]


def reference_from(manifest: Mapping) -> tuple[str, Any]:
    """(which reference model, max_length) that produced a round's stored reference log-probs:
    the run config's DPO stage, as the builder reads it."""
    config = manifest.get("config") or {}
    dpo = ((config.get("train") or {}).get("dpo") or {}) if isinstance(config, Mapping) else {}
    ref = dpo.get("ref") if isinstance(dpo, Mapping) else None
    described = {
        "previous": "each learner's own policy at the start of the round (its model after the previous round)",
        "base": "each learner's pretrained base model",
    }.get(ref, f"the reference `{ref}`" if ref else "an unrecorded reference model")
    return described, (dpo.get("max_length") if isinstance(dpo, Mapping) else None)


def config_name(version: str, subset: str) -> str:
    return f"{version}-{subset}"


def config_entry(version: str, subset: str) -> dict:
    """The README ``configs:`` entry of one subset (Hub manual configuration)."""
    return {
        "config_name": config_name(version, subset),
        "data_files": [{"split": "train", "path": f"{version}/{subset}/{SHARD_GLOB}"}],
    }


def merge_configs(existing: Iterable[Mapping] | None, version: str, new: list[dict]) -> list[dict]:
    """Keep every existing config except the ones this version's folder replaces."""

    def owned_by_version(cfg: Mapping) -> bool:
        files = cfg.get("data_files") or []
        paths = [f.get("path", "") if isinstance(f, Mapping) else str(f) for f in (files if isinstance(files, list) else [files])]
        return str(cfg.get("config_name", "")).startswith(f"{version}-") and all(
            str(p).startswith(f"{version}/") for p in paths
        )

    names = {c["config_name"] for c in new}
    kept = [dict(c) for c in existing or [] if c.get("config_name") not in names and not owned_by_version(c)]
    return kept + new


def round_number(version: str) -> int | None:
    m = re.fullmatch(r"round-(\d+)", version)
    return int(m.group(1)) if m else None


def _model_fields(value: Any) -> tuple[str | None, str | None]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping):
        model = next((value[k] for k in ("model", "model_id", "id", "path", "name") if value.get(k)), None)
        revision = next((value[k] for k in ("revision", "sha", "commit", "resolved_revision") if value.get(k)), None)
        return (str(model) if model is not None else None), (str(revision) if revision is not None else None)
    return None, None


def agents_from(manifest: Mapping) -> list[dict]:
    """Agent -> model id and revision: the manifest's ``models`` first, then the run config."""
    agents: dict[str, dict] = {}
    models = manifest.get("models") or {}
    items = models.items() if isinstance(models, Mapping) else (
        (m.get("agent") or m.get("name") or f"agent-{i}", m) for i, m in enumerate(models) if isinstance(m, Mapping)
    )
    for name, value in items:
        model, revision = _model_fields(value)
        if model:
            agents[str(name)] = {"name": str(name), "model": model, "revision": revision}
    config = manifest.get("config") or {}
    if isinstance(config, Mapping):
        specs = [("student", config.get("student"))]
        specs += [(f"teacher-{i}", t) for i, t in enumerate(config.get("teachers") or [])]
        for name, spec in specs:
            model, revision = _model_fields(spec)
            if model and name not in agents:
                agents[name] = {"name": name, "model": model, "revision": revision}
    return sorted(agents.values(), key=lambda a: (a["name"] != "student", a["name"]))


def sampling_from(manifest: Mapping) -> dict:
    config = manifest.get("config") or {}
    sampling = config.get("sampling") if isinstance(config, Mapping) else None
    sampling = sampling if isinstance(sampling, Mapping) else manifest.get("sampling")
    return dict(sampling) if isinstance(sampling, Mapping) else {}


def method_from(manifest: Mapping) -> str:
    config = manifest.get("config") or {}
    for source in (config if isinstance(config, Mapping) else {}, manifest):
        if source.get("method"):
            return str(source["method"])
    # Imports record where the data came from in `source` (the manifest's own `format` is the
    # store's layout version, not the data's).
    source = manifest.get("source")
    if isinstance(source, Mapping) and source.get("format"):
        return f"import ({source['format']})"
    if source:
        return "import"
    return "unspecified"


def _text(value: Any) -> str:
    """One line per value; message lists become ``role: content`` joined with `` / ``."""
    if isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m for m in value):
        value = " / ".join(f"{m.get('role')}: {m.get('content')}" for m in value)
    text = " ".join(str(value).split())
    text = text.replace("```", "'''")  # never close the template's code fence early
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def sample_rows(files: list[Path], kind: str, n: int = 3) -> list[list[tuple[str, str]]]:
    import pyarrow.parquet as pq

    if n <= 0 or not files:
        return []
    pf = pq.ParquetFile(files[0])
    wanted = [c for c in SAMPLE_COLUMNS.get(kind, ()) if c in pf.schema_arrow.names] or pf.schema_arrow.names[:6]
    batch = next(pf.iter_batches(batch_size=n, columns=wanted), None)
    rows = batch.to_pylist() if batch is not None else []
    return [[(c, _text(r[c])) for c in wanted if r.get(c) is not None] for r in rows[:n]]


def splice_body(existing: str, rendered: str) -> str:
    """Put the rendered macpo block into the existing body, keeping everything else in it."""
    start, end = rendered.find(BEGIN), rendered.find(END)
    if start < 0 or end < 0:
        raise ValueError(f"{TEMPLATE.name} lost its {BEGIN} / {END} markers")
    block = rendered[start : end + len(END)]
    if not existing.strip():
        return rendered
    a, b = existing.find(BEGIN), existing.find(END)
    if a >= 0 and b > a:
        return existing[:a] + block + existing[b + len(END) :]
    return existing.rstrip() + "\n\n" + block + "\n"


def _card_audits(rows: list[AuditRow]) -> list[AuditRow]:
    """A card describes one version: an audit's store-wide line repeats its one version line."""
    out = []
    for row in rows:
        same_audit = [r for r in rows if r.name == row.name]
        if row.scope == "all" and len(same_audit) == 2:
            continue
        out.append(row)
    return out


def render_dataset_card(
    *,
    manifest: Mapping,
    repo_id: str,
    existing=None,
    audits: list[AuditRow] | None = None,
    audit_note: str = "",
    samples: Mapping[str, list] | None = None,
    ref_columns: Mapping[str, list[str]] | None = None,
):
    """The merged ``DatasetCard`` for ``manifest``'s version, on top of ``existing`` (or None).
    ``ref_columns``: the stored reference log-prob columns per subset (:func:`ref_columns_in`)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    version, dataset = manifest["version"], manifest["dataset"]
    subsets = manifest["subsets"]
    data = existing.data if existing is not None else DatasetCardData()
    new_configs = [config_entry(version, s) for s in subsets]
    data.configs = merge_configs(getattr(data, "configs", None), version, new_configs)
    tags = list(getattr(data, "tags", None) or [])
    data.tags = tags + [t for t in TAGS if t not in tags]
    if not data.pretty_name:
        data.pretty_name = dataset
    if not getattr(data, "task_categories", None):
        data.task_categories = ["text-generation"]

    here = {c["config_name"] for c in new_configs}
    configs_here = [
        {"config_name": config_name(version, s), "kind": e.get("kind"), "rows": e.get("rows"),
         "path": f"{version}/{s}/{SHARD_GLOB}"}
        for s, e in subsets.items()
    ]
    example = next((c for c in configs_here if c["config_name"].endswith("-student")), configs_here[0])
    with_refs = {config_name(version, s): cols for s, cols in (ref_columns or {}).items() if cols}
    ref_model, ref_max_length = reference_from(manifest)
    card = DatasetCard.from_template(
        data,
        template_path=str(TEMPLATE),
        title=data.pretty_name,
        repo_id=repo_id,
        dataset=dataset,
        version=version,
        round=round_number(version),
        method=method_from(manifest),
        content_hash=manifest.get("content_hash"),
        parent_hash=manifest.get("parent_hash"),
        config_hash=manifest.get("config_hash"),
        created_at=manifest.get("created_at"),
        macpo_version=manifest.get("macpo_version"),
        agents=agents_from(manifest),
        sampling=sampling_from(manifest),
        configs_here=configs_here,
        other_configs=[c["config_name"] for c in data.configs if c["config_name"] not in here],
        audits=_card_audits(audits or []),
        ref_configs=with_refs,
        ref_model=ref_model,
        ref_max_length=ref_max_length,
        audit_note=audit_note or "No audits were run for this version.",
        example_config=example["config_name"],
        samples=[{"config_name": config_name(version, s), "rows": rows} for s, rows in (samples or {}).items() if rows],
    )
    if existing is not None:
        card.text = splice_body(existing.text, card.text)
    return card

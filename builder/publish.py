"""``macpo push``: publish one store version to the Hugging Face Hub as one commit plus a tag.

One version (``round-N``, or e.g. ``v1`` for imports) becomes ONE ``HfApi.create_commit`` that
holds its Parquet shards under ``<version>/<subset>/``, ``<version>/manifest.json`` and the
README card, made with ``parent_commit`` so a concurrent push is never overwritten. The commit
is tagged ``<version>`` only after checking that it carries this version's manifest, so
``load_dataset(repo, "round-N-student", revision="round-N")`` always reads exactly that round.

Each subset is one config ``<version>-<subset>`` in the card's YAML; configs of earlier rounds
and any other card metadata already on the Hub are kept. Pushing content that is already
tagged is a no-op; pushing different content under an existing tag is refused. The token
comes from ``HF_TOKEN`` or ``hf auth login`` and is never printed. Reading a published round
back (``snapshot``) is :mod:`macpo.hub`'s.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from macpo import facts
from macpo.audit import run_audits
from macpo.cliutil import make_parser, run_script
from macpo.data_cards.cards import AuditRow, ref_columns_in, render_dataset_card, sample_rows
from macpo.errors import UserError
from macpo.hub import REPO_TYPE, check_repo_id, first_line, http_status, hub_errors, is_transient, redact
from macpo.store import Store


@dataclass(frozen=True)
class PushResult:
    repo: str
    version: str
    status: str  # "pushed" | "unchanged" | "pull-request"
    commit: str
    content_hash: str
    url: str | None = None
    dataset: str | None = None  # the store dataset the version came from


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token is needed to push)")
    return token


# ---- remote reads -----------------------------------------------------------------------
def _remote_manifest(api, repo: str, version: str, revision: str) -> dict | None:
    """The ``<version>/manifest.json`` at ``revision``, or None if that commit has none."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    with tempfile.TemporaryDirectory(prefix="macpo-push-") as tmp:
        try:
            path = api.hf_hub_download(repo, f"{version}/manifest.json", repo_type=REPO_TYPE, revision=revision, cache_dir=tmp)
        except EntryNotFoundError:
            return None
        except HfHubHTTPError as exc:
            if http_status(exc) == 404:
                return None
            raise
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            return {"content_hash": None, "unreadable": "a manifest that is not UTF-8"}
        except (json.JSONDecodeError, RecursionError):
            return None
        return data if isinstance(data, dict) else {"content_hash": None, "unreadable": "a manifest that is not a JSON object"}


def _found(remote: dict | None) -> str:
    """What a remote manifest holds, for a message."""
    if not remote:
        return "no manifest"
    return remote.get("unreadable") or str(remote.get("content_hash"))


def _tag_target(api, repo: str, tag: str) -> str | None:
    refs = api.list_repo_refs(repo, repo_type=REPO_TYPE)
    return next((t.target_commit for t in refs.tags if t.name == tag), None)


def _load_card(api, repo: str, revision: str):
    """The README card at ``revision`` (loaded with ``DatasetCard.load``), or None."""
    from huggingface_hub import DatasetCard
    from huggingface_hub.errors import EntryNotFoundError

    with tempfile.TemporaryDirectory(prefix="macpo-card-") as tmp:
        try:
            path = api.hf_hub_download(repo, "README.md", repo_type=REPO_TYPE, revision=revision, cache_dir=tmp)
        except EntryNotFoundError:
            return None
        import yaml

        fix = "fix it first; nothing was uploaded"
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{repo}: the README on the Hub is not UTF-8 text (byte at offset {exc.start}); {fix}") from None
        try:
            card = DatasetCard(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise UserError(f"{repo}: the README on the Hub has invalid YAML metadata ({first_line(exc)}); {fix}") from None
        # The merge keeps every existing config: each must be a mapping named by a string.
        configs = getattr(card.data, "configs", None)
        if configs is not None and not (isinstance(configs, list) and all(
                isinstance(c, dict) and isinstance(c.get("config_name"), str) for c in configs)):
            raise UserError(f"{repo}: the README on the Hub has `configs` that is not a list of "
                            f"{{config_name: ..., data_files: ...}} ({str(configs)[:60]!r}); {fix}")
        return card


# ---- the push ---------------------------------------------------------------------------
def _audit_rows(store, name: str, version: str):
    """Audit results for the card; an audit that cannot run degrades to a note.

    The audits read the version's stored facts (macpo/facts.py): they are recomputed from the
    (verified) data first, and facts that differ are rebuilt, or the card says the audits were
    not run; a forged facts shard never reaches the card."""
    folder, manifest = store.path(name, version), store.manifest(name, version)
    damage = facts.facts_problems(folder, manifest)
    if damage:
        print(f"macpo push: note: {name}/{version}: its stored facts do not match its data ({damage[0]}); rebuilding them",
              file=sys.stderr, flush=True)
        try:
            facts.ensure_facts(folder, manifest, force=True)
        except OSError as exc:
            return [], f"Audits not run: the stored facts of {name}/{version} do not match its data and cannot be rebuilt ({exc.strerror})."
        if facts.facts_problems(folder, manifest):  # changed again under us: never publish them
            return [], f"Audits not run: the stored facts of {name}/{version} do not match its data."
    try:
        results = run_audits(store, dataset=name, version=version)
    except UserError as exc:
        return [], f"Audits not run: {exc}"
    rows = [AuditRow(r.name, r.verdict, r.count, r.detail, getattr(r, "scope", "")) for r in results]
    return rows, ("" if rows else "No audits apply to this version.")


def _operations(store, name: str, version: str, manifest: dict, card_text: str, remote_files: list[str]):
    """Fresh commit operations (CommitOperationAdd objects cannot be reused after a failure)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    base = store.path(name, version)
    records = manifest.get("files") or {}
    adds = []
    for rel in (rel for entry in manifest["subsets"].values() for rel in entry["files"]):
        op = CommitOperationAdd(f"{version}/{rel}", str(base / rel))  # hashes the file it will upload
        # The client's own sha256 of the bytes it sends: a file changed since push verified it
        # (or during a retry) is refused, never published.
        if rel in records and op.upload_info.sha256.hex() != records[rel]["sha256"]:
            raise UserError(f"{name}/{version}: {rel} changed after it was verified; nothing was uploaded")
        adds.append(op)
    adds.append(CommitOperationAdd(f"{version}/manifest.json", str(base / "manifest.json")))
    adds.append(CommitOperationAdd("README.md", card_text.encode()))
    wanted = {op.path_in_repo for op in adds}
    # An untagged earlier attempt with other shards would otherwise leak into the train-* glob.
    stale = [CommitOperationDelete(p) for p in remote_files if p.startswith(f"{version}/") and p not in wanted]
    return adds + stale


def push(
    store_dir: str | Path,
    repo: str,
    *,
    dataset: str | None = None,
    version: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    retries: int = 4,
    retry_wait: float = 2.0,
    audit: bool = True,
    samples: int = 3,
    log=None,
) -> PushResult:
    """Publish ``dataset/version`` of the store at ``store_dir`` to the dataset repo ``repo``."""
    from huggingface_hub import HfApi, constants

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_repo_id(repo)
    store = Store(store_dir)
    if dataset is None and version is not None:
        dataset = _dataset_holding(store, version, log)
    name, version = store.resolve(dataset, version)
    # Everything uploaded below is a file of this validated manifest, verified byte for byte
    # (sha256) and row for row (content hash) here, before the first request to the Hub.
    manifest = store.manifest(name, version)
    problems = store.verify(name, version, check_facts=False)  # the facts are checked by _audit_rows
    if problems:
        raise UserError(f"refusing to push {name}/{version}: it is damaged ({'; '.join(problems)}); nothing was uploaded")
    content_hash = manifest["content_hash"]
    if constants.HF_HUB_OFFLINE:
        raise UserError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    token = _token()
    api = HfApi(token=token)

    with hub_errors(repo, token):
        # None (not False) without --private: keep the organisation's default visibility.
        api.create_repo(repo, repo_type=REPO_TYPE, private=True if private else None, exist_ok=True)
        tagged = _tag_target(api, repo, version)
        if tagged is not None:
            return _already_tagged(api, repo, name, version, content_hash, tagged)

        audits, audit_note = _audit_rows(store, name, version) if audit else ([], "Audits skipped (--no-audit).")
        rows = {s: sample_rows(store.files(name, version, s), e["kind"], samples) for s, e in manifest["subsets"].items()}
        total = sum(e["rows"] for e in manifest["subsets"].values())
        message = f"macpo: add {name}/{version} ({total} rows, {len(manifest['subsets'])} configs)"
        description = f"content_hash: {content_hash}\nparent_hash: {manifest.get('parent_hash')}\n"

        attempt = 0
        while True:
            attempt += 1
            try:
                # Re-read the head every attempt: the card merges with what is there *now*.
                info = api.dataset_info(repo, revision="main", files_metadata=False)
                existing = _load_card(api, repo, info.sha) if any(s.rfilename == "README.md" for s in info.siblings or []) else None
                card = render_dataset_card(
                    manifest=manifest, repo_id=repo, existing=existing, audits=audits, audit_note=audit_note, samples=rows,
                    ref_columns={s: ref_columns_in(store.files(name, version, s)) for s in manifest["subsets"]},
                )
                ops = _operations(store, name, version, manifest, str(card), [s.rfilename for s in info.siblings or []])
                commit = api.create_commit(
                    repo, ops, commit_message=message, commit_description=description, repo_type=REPO_TYPE,
                    revision="main", parent_commit=info.sha, create_pr=create_pr,
                )
                break
            except Exception as exc:  # noqa: BLE001 - classified right below
                stale = http_status(exc) == 412
                if not (stale or is_transient(exc)):
                    raise
                if attempt > retries:
                    raise UserError(
                        f"push of {name}/{version} to {repo} failed after {attempt} attempt{'s' if attempt > 1 else ''} "
                        f"({redact(first_line(exc), token)}); nothing was tagged and no partial round was committed"
                    ) from None
                wait = 0.0 if stale and attempt == 1 else retry_wait * 2 ** (attempt - 1)
                reason = "main moved since it was read (412)" if stale else redact(first_line(exc), token)
                log(f"macpo push: attempt {attempt} failed: {reason}; retrying in {wait:g}s")
                time.sleep(wait)

        if create_pr:
            return PushResult(repo, version, "pull-request", commit.oid, content_hash, commit.pr_url, dataset=name)

        remote = _remote_manifest(api, repo, version, commit.oid)
        if not remote or remote.get("content_hash") != content_hash:
            found = _found(remote)
            raise UserError(
                f"commit {commit.oid[:12]} on {repo} does not carry {name}/{version} ({found}, expected {content_hash}); not tagging it"
            )
        _create_tag(api, repo, name, version, content_hash, commit.oid, retries, retry_wait, log, token)
    return PushResult(repo, version, "pushed", commit.oid, content_hash, dataset=name)


TRAINING_KINDS = ("pairs", "sft")


def _dataset_holding(store, version: str, log) -> str | None:
    """The dataset to push ``version`` from when none is named: the only one holding that version,
    or else the only one whose version holds training data (``--round 1`` of a run store means
    the run's round, not the eval results stored as ``<run>-evals/round-1``)."""
    names = store.datasets()
    if len(names) <= 1:
        return None  # Store.resolve names the one dataset, or says there is none
    holding = [n for n in names if version in store.versions(n)]
    if not holding:
        raise UserError(f"no dataset in store {store.root} has version {version} (datasets: {', '.join(names)})")
    rounds = [n for n in holding
              if any(e["kind"] in TRAINING_KINDS for e in store.manifest(n, version)["subsets"].values())]
    if len(holding) == 1 or len(rounds) == 1:
        pick = holding[0] if len(holding) == 1 else rounds[0]
        others = [n for n in holding if n != pick]
        also = f" ({', '.join(others)} also has {version}, without pairs or sft; pass --dataset to push it)" if others else ""
        log(f"macpo push: pushing {pick}/{version}, the only dataset with {version} training data{also}")
        return pick
    raise UserError(f"{len(holding)} datasets in store {store.root} have version {version} ({', '.join(holding)}); pass --dataset")


def _already_tagged(api, repo, name, version, content_hash, tagged) -> PushResult:
    remote = _remote_manifest(api, repo, version, tagged)
    if remote and remote.get("content_hash") == content_hash:
        return PushResult(repo, version, "unchanged", tagged, content_hash, dataset=name)
    found = _found(remote)
    raise UserError(
        f"{repo} already has tag {version} with different content ({found}); refusing to push {name}/{version} ({content_hash}) under it"
    )


def _create_tag(api, repo, name, version, content_hash, oid, retries, retry_wait, log, token) -> None:
    for attempt in range(1, retries + 2):
        try:
            api.create_tag(repo, tag=version, revision=oid, repo_type=REPO_TYPE, tag_message=f"{name}/{version} {content_hash}")
            return
        except Exception as exc:  # noqa: BLE001 - classified right below
            if http_status(exc) == 409:  # tagged meanwhile (or our earlier reply was lost): same content?
                target = _tag_target(api, repo, version)
                if target == oid or _already_tagged(api, repo, name, version, content_hash, target):
                    return
            if not is_transient(exc) or attempt > retries:
                raise UserError(
                    f"committed {name}/{version} to {repo} as {oid[:12]} but could not tag it "
                    f"({redact(first_line(exc), token)}); run the same push again to tag it"
                ) from None
            wait = retry_wait * 2 ** (attempt - 1)
            log(f"macpo push: tagging failed: {redact(first_line(exc), token)}; retrying in {wait:g}s")
            time.sleep(wait)


# ---- CLI --------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    p = make_parser("push", __doc__)
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--dataset", help="dataset in the store (default: the only one holding the version)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--round", type=int, metavar="N", help="push version round-N")
    which.add_argument("--version", metavar="V", help="push another version name, e.g. v1 of an import")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub dataset repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--create-pr", action="store_true",
                   help="open a pull request instead of committing to main (tag after merging by pushing again)")
    p.add_argument("--retries", type=int, default=4, help="retries on connection errors and 5xx (default 4)")
    p.add_argument("--retry-wait", type=float, default=2.0, help="first retry wait in seconds, doubling (default 2)")
    p.add_argument("--no-audit", action="store_true", help="do not run `macpo audit` for the card")
    p.add_argument("--samples", type=int, default=3, help="sample rows per config shown in the card (default 3)")
    args = p.parse_args(argv)
    if args.round is not None and args.round < 0:
        raise UserError("--round must be >= 0")
    version = f"round-{args.round}" if args.round is not None else args.version
    result = push(
        args.store, args.repo, dataset=args.dataset, version=version, private=args.private,
        create_pr=args.create_pr, retries=max(0, args.retries), retry_wait=max(0.0, args.retry_wait),
        audit=not args.no_audit, samples=args.samples,
    )
    what = f"{result.dataset}/{result.version}"
    if result.status == "unchanged":
        print(f"{result.repo}@{result.version} already holds {what} {result.content_hash} "
              f"(commit {result.commit[:12]}); nothing to push")
    elif result.status == "pull-request":
        print(f"opened {result.url} with {what} (commit {result.commit[:12]}); "
              f"after merging it, run the same push again to tag {result.version}")
    else:
        print(f"pushed {what} to {result.repo} as commit {result.commit[:12]}, tagged {result.version} "
              f"({result.content_hash})")
    return 0


if __name__ == "__main__":
    run_script("macpo push", main)

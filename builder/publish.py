"""``macpo push``: publish one store version to the Hugging Face Hub as one commit plus a tag.

One version (``round-N``, or e.g. ``v1`` for imports) becomes ONE ``HfApi.create_commit`` that
holds its Parquet shards under ``<version>/<subset>/``, ``<version>/manifest.json`` and the
README card, made with ``parent_commit`` so a concurrent push is never overwritten. The commit
is tagged ``<version>`` only after checking that it carries this version's manifest, so
``load_dataset(repo, "round-N-student", revision="round-N")`` always reads exactly that round.

Each subset is one config ``<version>-<subset>`` in the card's YAML; configs of earlier rounds
and any other card metadata already on the Hub are kept. Pushing content that is already
tagged is a no-op; pushing different content under an existing tag is refused. The token
comes from ``HF_TOKEN`` or ``hf auth login`` and is never printed.

Reading back: ``snapshot("org/name@round-1")`` downloads a published revision and returns
the local folder plus the resolved commit sha.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from macpo.cliutil import make_parser
from macpo.errors import UserError

REPO_TYPE = "dataset"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class PushResult:
    repo: str
    version: str
    status: str  # "pushed" | "unchanged" | "pull-request"
    commit: str
    content_hash: str
    url: str | None = None
    dataset: str | None = None  # the store dataset the version came from


# ---- repo references -------------------------------------------------------------------
def parse_repo_ref(ref: str) -> tuple[str, str | None]:
    """``"org/name@round-1"`` -> ``("org/name", "round-1")``; no ``@`` -> revision None (main)."""
    text = ref.strip()
    for prefix in ("hf://datasets/", "datasets/"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    repo, sep, rev = text.partition("@")
    if not _REPO_ID_RE.match(repo) or (sep and not rev):
        raise UserError(f"{ref!r} is not a Hub dataset reference ORG/NAME[@REVISION]")
    reason = _client_rejects(repo)
    if reason:
        raise UserError(f"{ref!r}: the Hub client rejects this repo name ({reason})")
    return repo, (rev or None)


def _client_rejects(repo: str) -> str | None:
    """Why huggingface_hub would refuse ``repo`` (its own ``validate_repo_id``), or None: asked up
    front, so a bad name is one line before any store reading or network call."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        return _first_line(exc)
    return None


def _check_repo_id(repo: str) -> str:
    if not _REPO_ID_RE.match(repo):
        raise UserError(f"--repo {repo!r}: expected ORG/NAME")
    reason = _client_rejects(repo)
    if reason:
        raise UserError(f"--repo {repo!r}: the Hub client rejects this name ({reason})")
    return repo


# ---- errors -----------------------------------------------------------------------------
def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level failures (no HTTP status): huggingface_hub 2.x speaks httpx2."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextmanager
def _hub_errors(what: str, token: str | None):
    """Turn Hub/client failures into one-line UserErrors that never contain the token."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except UserError as exc:
        raise UserError(_redact(str(exc), token)) from None
    except RepositoryNotFoundError:
        raise UserError(f"{what}: repository not found on the Hub (or the token has no access)") from None
    except RevisionNotFoundError:
        raise UserError(f"{what}: revision not found on the Hub") from None
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise UserError(
                f"{what}: the Hub refused the token (HTTP {status}); check HF_TOKEN or run `hf auth login`"
            ) from None
        raise UserError(_redact(f"{what}: Hub error ({_first_line(exc)})", token)) from None
    except _transport_errors() as exc:
        from huggingface_hub import constants

        raise UserError(_redact(f"{what}: cannot reach the Hub at {constants.ENDPOINT} ({_first_line(exc)})", token)) from None
    except json.JSONDecodeError:
        # The client's r.json() on a 200 that is a web page: a captive portal, a proxy, a wrong HF_ENDPOINT.
        from huggingface_hub import constants

        raise UserError(f"{what}: {constants.ENDPOINT} answered with something that is not the Hub API (not JSON; "
                        "a login page or proxy?); check HF_ENDPOINT and the network") from None


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return _status(exc) in TRANSIENT_STATUS
    return isinstance(exc, _transport_errors())


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
            if _status(exc) == 404:
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
            raise UserError(f"{repo}: the README on the Hub has invalid YAML metadata ({_first_line(exc)}); {fix}") from None
        # The merge keeps every existing config: each must be a mapping named by a string.
        configs = getattr(card.data, "configs", None)
        if configs is not None and not (isinstance(configs, list) and all(
                isinstance(c, dict) and isinstance(c.get("config_name"), str) for c in configs)):
            raise UserError(f"{repo}: the README on the Hub has `configs` that is not a list of "
                            f"{{config_name: ..., data_files: ...}} ({str(configs)[:60]!r}); {fix}")
        return card


# ---- the push ---------------------------------------------------------------------------
def _audit_rows(store, name: str, version: str):
    """Audit results for the card; a missing or failing audit module degrades to a note.

    The audits read the version's stored facts (macpo/facts.py): they are recomputed from the
    (verified) data first, and facts that differ are rebuilt, or the card says the audits were
    not run; a forged facts shard never reaches the card."""
    from macpo import facts
    from macpo.data_cards.cards import AuditRow

    try:
        from macpo.audit import run_audits
    except ImportError:
        return [], "Audits not run: `macpo audit` is not available in this installation."
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

    from macpo.data_cards.cards import ref_columns_in, render_dataset_card, sample_rows
    from macpo.store import Store

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    _check_repo_id(repo)
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

    with _hub_errors(repo, token):
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
                stale = _status(exc) == 412
                if not (stale or _is_transient(exc)):
                    raise
                if attempt > retries:
                    raise UserError(
                        f"push of {name}/{version} to {repo} failed after {attempt} attempt{'s' if attempt > 1 else ''} "
                        f"({_redact(_first_line(exc), token)}); nothing was tagged and no partial round was committed"
                    ) from None
                wait = 0.0 if stale and attempt == 1 else retry_wait * 2 ** (attempt - 1)
                reason = "main moved since it was read (412)" if stale else _redact(_first_line(exc), token)
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
            if _status(exc) == 409:  # tagged meanwhile (or our earlier reply was lost): same content?
                target = _tag_target(api, repo, version)
                if target == oid or _already_tagged(api, repo, name, version, content_hash, target):
                    return
            if not _is_transient(exc) or attempt > retries:
                raise UserError(
                    f"committed {name}/{version} to {repo} as {oid[:12]} but could not tag it "
                    f"({_redact(_first_line(exc), token)}); run the same push again to tag it"
                ) from None
            wait = retry_wait * 2 ** (attempt - 1)
            log(f"macpo push: tagging failed: {_redact(_first_line(exc), token)}; retrying in {wait:g}s")
            time.sleep(wait)


# ---- reading back -----------------------------------------------------------------------
def _snapshot_root(repo: str, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import constants

    base = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HOME) / "macpo" / "snapshots"
    return base / ("datasets--" + repo.replace("/", "--"))


def snapshot(repo_at_rev: str, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """Download a published revision: ``"org/name@round-1"`` -> (local folder, resolved commit sha).

    The folder holds real files, not the Hub cache's symlinks into ``blobs/``: sandboxes such as
    DuckDB's ``allowed_directories`` (``macpo sql --hub``) resolve links and would refuse them.
    One folder per commit sha, written to a temporary name and renamed, so it is never partial;
    with ``HF_HUB_OFFLINE`` set, a revision fetched before is served from it.
    """
    import shutil
    import uuid
    from urllib.parse import quote

    from huggingface_hub import HfApi, constants, get_token, snapshot_download

    repo, revision = parse_repo_ref(repo_at_rev)
    root = _snapshot_root(repo, cache_dir)
    ref_file = root / "refs" / quote(revision or "main", safe="")
    if constants.HF_HUB_OFFLINE:
        sha = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else (
            ref_file.read_text().strip() if ref_file.is_file() else None
        )
        if not sha or not (root / sha).is_dir():
            raise UserError(f"{repo_at_rev}: no local snapshot and HF_HUB_OFFLINE is set (fetch it once online)")
        return root / sha, sha

    token = get_token()
    with _hub_errors(repo_at_rev, token):
        sha = HfApi().dataset_info(repo, revision=revision).sha
        folder = root / sha
        if not folder.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".tmp-{sha[:12]}-{uuid.uuid4().hex[:8]}"
            try:
                snapshot_download(repo, repo_type=REPO_TYPE, revision=sha, local_dir=tmp)
                shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
                try:
                    tmp.rename(folder)
                except OSError:
                    if not folder.is_dir():  # not a concurrent snapshot of the same sha: a real failure
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    ref_tmp = ref_file.with_name(f".{ref_file.name}.{uuid.uuid4().hex[:8]}")
    ref_tmp.write_text(sha + "\n")
    ref_tmp.replace(ref_file)
    return folder, sha


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
    from macpo.cli import main as cli_main

    raise SystemExit(cli_main(["push", *sys.argv[1:]]))

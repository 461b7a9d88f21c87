"""The Hugging Face Hub as macpo reads it: dataset references, one-line errors, snapshots.

Shared by ``macpo push`` (macpo.builder.publish), ``macpo sql --hub`` and ``macpo import`` from
the Hub; kept in the core so reading a published round never imports the publisher.

``snapshot("org/name@round-1")`` downloads a published revision and returns the local folder
plus the resolved commit sha.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from macpo.errors import UserError

REPO_TYPE = "dataset"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


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
    reason = client_rejects(repo)
    if reason:
        raise UserError(f"{ref!r}: the Hub client rejects this repo name ({reason})")
    return repo, (rev or None)


def client_rejects(repo: str) -> str | None:
    """Why huggingface_hub would refuse ``repo`` (its own ``validate_repo_id``), or None: asked up
    front, so a bad name is one line before any store reading or network call."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        return first_line(exc)
    return None


def check_repo_id(repo: str) -> str:
    if not _REPO_ID_RE.match(repo):
        raise UserError(f"--repo {repo!r}: expected ORG/NAME")
    reason = client_rejects(repo)
    if reason:
        raise UserError(f"--repo {repo!r}: the Hub client rejects this name ({reason})")
    return repo


# ---- errors -----------------------------------------------------------------------------
def redact(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level failures (no HTTP status): huggingface_hub 2.x speaks httpx2."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextmanager
def hub_errors(what: str, token: str | None):
    """Turn Hub/client failures into one-line UserErrors that never contain the token."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except UserError as exc:
        raise UserError(redact(str(exc), token)) from None
    except RepositoryNotFoundError:
        raise UserError(f"{what}: repository not found on the Hub (or the token has no access)") from None
    except RevisionNotFoundError:
        raise UserError(f"{what}: revision not found on the Hub") from None
    except HfHubHTTPError as exc:
        status = http_status(exc)
        if status in (401, 403):
            raise UserError(
                f"{what}: the Hub refused the token (HTTP {status}); check HF_TOKEN or run `hf auth login`"
            ) from None
        raise UserError(redact(f"{what}: Hub error ({first_line(exc)})", token)) from None
    except transport_errors() as exc:
        from huggingface_hub import constants

        raise UserError(redact(f"{what}: cannot reach the Hub at {constants.ENDPOINT} ({first_line(exc)})", token)) from None
    except json.JSONDecodeError:
        # The client's r.json() on a 200 that is a web page: a captive portal, a proxy, a wrong HF_ENDPOINT.
        from huggingface_hub import constants

        raise UserError(f"{what}: {constants.ENDPOINT} answered with something that is not the Hub API (not JSON; "
                        "a login page or proxy?); check HF_ENDPOINT and the network") from None


def is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return http_status(exc) in TRANSIENT_STATUS
    return isinstance(exc, transport_errors())


# ---- reading back -----------------------------------------------------------------------
def snapshot_root(repo: str, cache_dir: str | Path | None) -> Path:
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
    from huggingface_hub import HfApi, constants, get_token, snapshot_download

    repo, revision = parse_repo_ref(repo_at_rev)
    root = snapshot_root(repo, cache_dir)
    ref_file = root / "refs" / quote(revision or "main", safe="")
    if constants.HF_HUB_OFFLINE:
        sha = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else (
            ref_file.read_text().strip() if ref_file.is_file() else None
        )
        if not sha or not (root / sha).is_dir():
            raise UserError(f"{repo_at_rev}: no local snapshot and HF_HUB_OFFLINE is set (fetch it once online)")
        return root / sha, sha

    token = get_token()
    with hub_errors(repo_at_rev, token):
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

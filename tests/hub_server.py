"""A loopback, Hub-compatible HTTP server for tests (stdlib only).

It speaks enough of the Hugging Face Hub API for the real ``huggingface_hub`` client and
``datasets.load_dataset`` to create repos, commit (NDJSON + legacy LFS), tag, branch, list
and download, with ``HF_ENDPOINT`` pointed at it and ``HF_HUB_DISABLE_XET=1``. No package
offers an upload-capable local Hub (docs/runtime-notes.md), hence this hand-rolled one.

Storage is plain folders under ``root``: ``<type>s/<org>/<name>/repo.json`` (refs and the
commit history; commit oids are sha1 hex), ``objects/<git-sha1>`` for regular files and
``lfs/<sha256>`` for LFS files. Faults can be injected through ``hub.faults``:

* ``commit_500``: the next N commit requests answer 500 without committing;
* ``commit_500_after_apply``: the next N commits are applied, then answer 500 (a lost reply);
* ``lfs_drop``: the next N LFS PUT uploads drop the connection halfway through the body;
* ``hub.before_next_commit(repo, files)``: a concurrent commit lands on ``main`` just before the
  next commit request is handled, so that request's ``parentCommit`` is stale (412).

Usage::

    with FakeHub(tmp_path, token="hf_x") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_x"}
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_THRESHOLD = 10_000
LFS_SUFFIXES = (".parquet", ".safetensors", ".bin", ".arrow", ".gguf")
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Faults:
    commit_500: int = 0
    commit_500_after_apply: int = 0
    lfs_drop: int = 0
    pending_concurrent: list = field(default_factory=list)


class Repo:
    """One repo: refs plus an append-only commit history, persisted to ``repo.json``."""

    def __init__(self, path: Path, repo_type: str, repo_id: str, private: bool = False):
        self.path, self.type, self.id = path, repo_type, repo_id
        self.private = private
        self.heads: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.prs: dict[int, str] = {}
        self.commits: dict[str, dict] = {}

    def save(self) -> None:
        data = {k: getattr(self, k) for k in ("type", "id", "private", "heads", "tags", "commits")}
        data["prs"] = {str(k): v for k, v in self.prs.items()}
        tmp = self.path / "repo.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path / "repo.json")

    # ---- objects ---------------------------------------------------------------
    def put_regular(self, data: bytes) -> dict:
        sha1 = git_blob_sha1(data)
        (self.path / "objects").mkdir(exist_ok=True)
        (self.path / "objects" / sha1).write_bytes(data)
        return {"oid": sha1, "size": len(data)}

    def lfs_path(self, sha256: str) -> Path:
        return self.path / "lfs" / sha256

    def read(self, entry: dict) -> bytes:
        if "lfs" in entry:
            return self.lfs_path(entry["lfs"]["oid"]).read_bytes()
        return (self.path / "objects" / entry["oid"]).read_bytes()

    # ---- revisions -------------------------------------------------------------
    def resolve(self, rev: str) -> str:
        rev = unquote(rev)
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/"):]
        if rev.startswith("refs/tags/"):
            rev = rev[len("refs/tags/"):]
        if rev in self.heads:
            return self.heads[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev.startswith("refs/pr/") and rev[8:].isdigit() and int(rev[8:]) in self.prs:
            return self.prs[int(rev[8:])]
        if len(rev) >= 7 and all(c in "0123456789abcdef" for c in rev):
            found = [oid for oid in self.commits if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def tree(self, rev: str) -> dict[str, dict]:
        return self.commits[self.resolve(rev)]["tree"]

    def new_commit(self, parent: str | None, tree: dict, summary: str, description: str = "") -> str:
        body = json.dumps([parent, sorted((p, e["oid"]) for p, e in tree.items()), summary, len(self.commits), time.time()])
        oid = hashlib.sha1(body.encode()).hexdigest()
        self.commits[oid] = {
            "parents": [parent] if parent else [],
            "tree": tree,
            "title": summary,
            "message": description,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        return oid

    def history(self, oid: str) -> list[str]:
        out = []
        while oid:
            out.append(oid)
            parents = self.commits[oid]["parents"]
            oid = parents[0] if parents else None
        return out


def _entry_json(path: str, entry: dict) -> dict:
    out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if "lfs" in entry:
        out["lfs"] = entry["lfs"]
    return out


def _folder_json(path: str, tree: dict) -> dict:
    children = sorted(p for p in tree if p.startswith(path + "/"))
    oid = hashlib.sha1("\n".join(f"{p}:{tree[p]['oid']}" for p in children).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "path": path}


class FakeHub:
    def __init__(self, root: str | Path, token: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.faults = Faults()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.log: list[tuple[str, str, int]] = []  # (method, path, status); never headers
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle -------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- helpers for tests -----------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound") from None

    def create_repo(self, repo_id: str, repo_type: str = "dataset", private: bool = False) -> Repo:
        with self.lock:
            path = self.root / f"{repo_type}s" / repo_id
            path.mkdir(parents=True)
            repo = Repo(path, repo_type, repo_id, private)
            repo.heads["main"] = repo.new_commit(None, {".gitattributes": repo.put_regular(GITATTRIBUTES)}, "initial commit")
            repo.save()
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def files(self, repo_id: str, rev: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            return {p: repo.read(e) for p, e in repo.tree(rev).items()}

    def commit_count(self, repo_id: str, branch: str = "main", repo_type: str = "dataset") -> int:
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            return len(repo.history(repo.heads[branch]))

    def commit_files(self, repo_id: str, files: dict[str, bytes], message: str = "server-side commit",
                     branch: str = "main", repo_type: str = "dataset") -> str:
        """Commit regular files directly (a stand-in for another user's push)."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            tree = dict(repo.tree(branch))
            for path, data in files.items():
                tree[path] = repo.put_regular(data)
            oid = repo.new_commit(repo.heads[branch], tree, message)
            repo.heads[branch] = oid
            repo.save()
            return oid

    def before_next_commit(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset") -> None:
        self.faults.pending_concurrent.append((repo_id, repo_type, files))

    # ---- auth ------------------------------------------------------------------
    def authorized(self, headers) -> bool:
        if self.token is None:
            return True
        return headers.get("Authorization", "") == f"Bearer {self.token}"


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # ---- plumbing --------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.log.append((self.command, self.path, status))

    def _json(self, status: int, obj, headers: dict | None = None, content_type="application/json"):
        self._send(status, json.dumps(obj).encode(), headers, content_type)

    def _error(self, err: HubError):
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message}, headers)

    def _dispatch(self):
        url = urlsplit(self.path)
        # Split before unquoting: revisions arrive quoted with safe="" (refs%2Fpr%2F1).
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            with self.hub.lock:
                self._route(segs, query)
        except HubError as err:
            self._error(err)
        except _Dropped:
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500 so the client fails loudly, not hangs
            traceback.print_exc()
            self.close_connection = True
            self._error(HubError(500, f"fake hub crashed: {type(exc).__name__}: {exc}"))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = lambda self: self._dispatch()  # noqa: E731

    def _require_auth(self):
        if not self.hub.authorized(self.headers):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        if write:
            self._require_auth()
        repo = self.hub.repo(repo_id, repo_type)
        if repo.private and not self.hub.authorized(self.headers):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    # ---- routing ---------------------------------------------------------------
    def _route(self, segs: list[str], q: dict):
        m = self.command
        if segs[:1] == ["api"]:
            rest = segs[1:]
            if rest == ["repos", "create"] and m == "POST":
                return self._create_repo()
            if rest == ["whoami-v2"]:
                self._require_auth()
                return self._json(200, {"type": "user", "name": "macpo-tester", "auth": {"type": "access_token"}})
            if rest == ["validate-yaml"] and m == "POST":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if len(rest) >= 3 and rest[0] in ("models", "datasets", "spaces"):
                return self._api_repo(rest[0][:-1], f"{rest[1]}/{rest[2]}", rest[3:], q)
        if segs[:1] == ["_lfs"] and m == "PUT":
            return self._lfs_put(segs[1][:-1], f"{segs[2]}/{segs[3]}", segs[4])
        repo_type = "model"
        if segs[:1] in (["datasets"], ["spaces"]):
            repo_type, segs = segs[0][:-1], segs[1:]
        if len(segs) >= 2 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{segs[0]}/{segs[1][:-4]}")
        if len(segs) >= 5 and segs[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        raise HubError(404, f"no route for {m} {self.path}")

    def _api_repo(self, repo_type: str, repo_id: str, rest: list[str], q: dict):
        m = self.command
        if not rest and m == "GET":
            return self._info(repo_type, repo_id, "main")
        action = rest[0]
        if action == "revision" and m == "GET":
            return self._info(repo_type, repo_id, rest[1])
        if action == "tree" and m == "GET":
            return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), q.get("recursive") in ("True", "true", "1"))
        if action == "paths-info" and m == "POST":
            return self._paths_info(repo_type, repo_id, rest[1])
        if action == "preupload" and m == "POST":
            return self._preupload(repo_type, repo_id, rest[1])
        if action == "commit" and m == "POST":
            return self._commit(repo_type, repo_id, rest[1], q.get("create_pr") == "1")
        if action == "commits" and m == "GET":
            return self._commits(repo_type, repo_id, rest[1])
        if action == "refs" and m == "GET":
            return self._refs(repo_type, repo_id, q.get("include_prs") == "1")
        if action == "tag":
            return self._tag(repo_type, repo_id, rest[1])
        if action == "branch":
            return self._branch(repo_type, repo_id, rest[1])
        raise HubError(404, f"no route for {m} {self.path}")

    # ---- repos -----------------------------------------------------------------
    def _create_repo(self):
        self._require_auth()
        body = json.loads(self._body() or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or 'macpo-tester'}/{body['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            return self._json(409, {"error": "You already created this repo", "url": url})
        private = bool(body.get("private")) or body.get("visibility") == "private"
        self.hub.create_repo(repo_id, repo_type, private)
        return self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _info(self, repo_type: str, repo_id: str, rev: str):
        repo = self._repo(repo_type, repo_id)
        oid = repo.resolve(rev)
        tree = repo.commits[oid]["tree"]
        siblings = []
        for path in sorted(tree):
            e = tree[path]
            sib = {"rfilename": path, "size": e["size"], "blobId": e["oid"]}
            if "lfs" in e:
                sib["lfs"] = {"size": e["size"], "sha256": e["lfs"]["oid"], "pointerSize": e["lfs"]["pointerSize"]}
            siblings.append(sib)
        self._json(200, {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": oid, "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "siblings": siblings, "lastModified": repo.commits[oid]["date"],
            "createdAt": repo.commits[repo.history(oid)[-1]]["date"],
        })

    def _tree(self, repo_type, repo_id, rev, path, recursive):
        repo = self._repo(repo_type, repo_id)
        tree = repo.tree(rev)
        path = path.strip("/")
        if path and not any(p.startswith(path + "/") for p in tree):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        prefix = path + "/" if path else ""
        out, folders = [], set()
        for p in sorted(tree):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(_entry_json(p, tree[p]))
        out += [_folder_json(f, tree) for f in sorted(folders)]
        self._json(200, out)

    def _paths_info(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id)
        tree = repo.tree(rev)
        body = self._body().decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in tree:
                out.append(_entry_json(path, tree[path]))
            elif any(p.startswith(path + "/") for p in tree):
                out.append(_folder_json(path, tree))
        self._json(200, out)

    def _commits(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id)
        out = [
            {"id": oid, "title": repo.commits[oid]["title"], "message": repo.commits[oid]["message"],
             "authors": [{"user": "macpo-tester"}], "date": repo.commits[oid]["date"]}
            for oid in repo.history(repo.resolve(rev))
        ]
        self._json(200, out)

    def _refs(self, repo_type, repo_id, include_prs):
        repo = self._repo(repo_type, repo_id)
        out = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in sorted(repo.heads.items())],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in sorted(repo.tags.items())],
            "converts": [],
        }
        if include_prs:
            out["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o}
                                   for n, o in sorted(repo.prs.items())]
        self._json(200, out)

    def _tag(self, repo_type, repo_id, rev_or_tag):
        repo = self._repo(repo_type, repo_id, write=True)
        if self.command == "DELETE":
            if rev_or_tag not in repo.tags:
                raise HubError(404, f"tag {rev_or_tag} not found", "RevisionNotFound")
            del repo.tags[rev_or_tag]
        elif self.command == "POST":
            body = json.loads(self._body() or b"{}")
            oid = repo.resolve(rev_or_tag)
            if body["tag"] in repo.tags:
                raise HubError(409, f"Tag {body['tag']} already exists")
            repo.tags[body["tag"]] = oid
        else:
            raise HubError(405, "method not allowed")
        repo.save()
        self._json(200, {})

    def _branch(self, repo_type, repo_id, branch):
        repo = self._repo(repo_type, repo_id, write=True)
        if self.command == "DELETE":
            repo.heads.pop(branch, None)
        elif self.command == "POST":
            body = json.loads(self._body() or b"{}")
            if branch in repo.heads:
                raise HubError(409, f"Branch {branch} already exists")
            repo.heads[branch] = repo.resolve(body.get("startingPoint") or "main")
        else:
            raise HubError(405, "method not allowed")
        repo.save()
        self._json(200, {})

    # ---- uploads ---------------------------------------------------------------
    def _preupload(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id, write=True)
        body = json.loads(self._body())
        try:
            tree = repo.tree(rev)
        except HubError:
            tree = {}
        files = []
        for f in body["files"]:
            mode = "lfs" if f["size"] >= LFS_THRESHOLD or f["path"].endswith(LFS_SUFFIXES) else "regular"
            existing = tree.get(f["path"])
            oid = None
            if existing is not None:
                oid = existing["lfs"]["oid"] if "lfs" in existing else existing["oid"]
                if ("lfs" in existing) != (mode == "lfs"):
                    oid = None
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": repo.resolve(rev) if tree else None})

    def _lfs_batch(self, repo_type, repo_id):
        repo = self._repo(repo_type, repo_id, write=True)
        body = json.loads(self._body())
        objects = []
        for obj in body["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not repo.lfs_path(obj["oid"]).is_file():
                href = f"{self.hub.url}/_lfs/{repo_type}s/{quote(repo_id)}/{obj['oid']}"
                item["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, repo_type, repo_id, oid):
        # Uploads are pre-signed URLs on the real Hub: no Authorization header is sent.
        repo = self.hub.repo(repo_id, repo_type)
        if self.hub.faults.lfs_drop > 0:
            self.hub.faults.lfs_drop -= 1
            n = int(self.headers.get("Content-Length") or 2)
            self.rfile.read(max(1, min(n // 2, 4096)) if self.headers.get("Content-Length") else 1)
            self.hub.log.append(("PUT", self.path, 0))
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise _Dropped()
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "LFS upload does not match its sha256")
        repo.lfs_path(oid).parent.mkdir(exist_ok=True)
        repo.lfs_path(oid).write_bytes(data)
        self._json(200, {})

    def _commit(self, repo_type, repo_id, rev, create_pr):
        repo = self._repo(repo_type, repo_id, write=True)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        faults = self.hub.faults
        while faults.pending_concurrent:
            other_id, other_type, files = faults.pending_concurrent.pop(0)
            self.hub.commit_files(other_id, files, "concurrent commit", repo_type=other_type)
        if faults.commit_500 > 0:
            faults.commit_500 -= 1
            raise HubError(500, "Internal Error (injected)")
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        rev = unquote(rev)
        if rev not in repo.heads and not create_pr:
            raise HubError(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
        head = repo.resolve(rev)
        parent_given = header.get("parentCommit")
        if parent_given and not create_pr and not head.startswith(parent_given):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        base = repo.resolve(parent_given) if (parent_given and create_pr) else head
        tree = dict(repo.commits[base]["tree"])
        for item in lines:
            key, v = item["key"], item["value"]
            if key == "file":
                tree[v["path"]] = repo.put_regular(base64.b64decode(v["content"]))
            elif key == "lfsFile":
                if not repo.lfs_path(v["oid"]).is_file():
                    raise HubError(422, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                pointer = lfs_pointer(v["oid"], v["size"])
                tree[v["path"]] = {"oid": git_blob_sha1(pointer), "size": v["size"],
                                   "lfs": {"oid": v["oid"], "size": v["size"], "pointerSize": len(pointer)}}
            elif key == "deletedFile":
                if tree.pop(v["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {v['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                for p in [p for p in tree if p.startswith(v["path"].rstrip("/") + "/")]:
                    del tree[p]
            elif key != "header":
                raise HubError(400, f"unsupported commit operation {key!r}")
        oid = repo.new_commit(base, tree, header.get("summary", ""), header.get("description", ""))
        pr_url = None
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        if create_pr:
            num = max(repo.prs, default=0) + 1
            repo.prs[num] = oid
            pr_url = f"{self.hub.url}/{prefix}{repo_id}/discussions/{num}"
        else:
            repo.heads[rev] = oid
        repo.save()
        if faults.commit_500_after_apply > 0:
            faults.commit_500_after_apply -= 1
            raise HubError(500, "Internal Error (injected after applying the commit)")
        self._json(200, {"commitUrl": f"{self.hub.url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": pr_url, "success": True})

    # ---- downloads -------------------------------------------------------------
    def _resolve(self, repo_type, repo_id, rev, path):
        repo = self._repo(repo_type, repo_id)
        oid = repo.resolve(rev)
        entry = repo.commits[oid]["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = repo.read(entry)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[6:].partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = min(int(end_s), len(data) - 1) if (end_s and start_s) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")


class _Dropped(Exception):
    """The handler dropped the connection on purpose (fault injection)."""


if __name__ == "__main__":  # manual use: python tests/hub_server.py ROOT
    import sys

    with FakeHub(sys.argv[1] if len(sys.argv) > 1 else "fake-hub") as h:
        print(h.url, flush=True)
        threading.Event().wait()

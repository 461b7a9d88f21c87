"""The fake Hub's own contract, spoken over raw HTTP (stdlib only, no huggingface_hub).

test_publish.py drives it through the real client; these pin the error codes and edge
behaviour that client relies on, so a regression in the fake shows up here first.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from hub_server import FakeHub

TOKEN = "hf_fakehub_contract"


@pytest.fixture
def hub(tmp_path):
    with FakeHub(tmp_path / "hub", token=TOKEN) as h:
        yield h


def call(hub, method, path, body=None, token=TOKEN, headers=None, ndjson=False):
    data = None
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    if body is not None:
        if ndjson:
            data = b"".join(json.dumps(x).encode() + b"\n" for x in body)
            h["Content-Type"] = "application/x-ndjson"
        else:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
    req = urllib.request.Request(hub.url + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def commit(hub, repo, files, parent=None):
    header = {"summary": "test"}
    if parent:
        header["parentCommit"] = parent
    lines = [{"key": "header", "value": header}] + [
        {"key": "file", "value": {"path": p, "content": base64.b64encode(d).decode(), "encoding": "base64"}}
        for p, d in files.items()
    ]
    return call(hub, "POST", f"/api/datasets/{repo}/commit/main", lines, ndjson=True)


def test_create_commit_tag_resolve(hub):
    status, _, body = call(hub, "POST", "/api/repos/create", {"name": "r", "organization": "o", "type": "dataset"})
    assert status == 200 and json.loads(body)["url"].endswith("/datasets/o/r")
    assert call(hub, "POST", "/api/repos/create", {"name": "r", "organization": "o", "type": "dataset"})[0] == 409

    head = json.loads(call(hub, "GET", "/api/datasets/o/r/revision/main")[2])["sha"]
    status, _, body = commit(hub, "o/r", {"a/b.txt": b"hello"}, parent=head)
    oid = json.loads(body)["commitOid"]
    assert status == 200 and len(oid) == 40 and oid != head
    # A commit built on the old head is stale now.
    assert commit(hub, "o/r", {"c.txt": b"x"}, parent=head)[0] == 412
    assert hub.commit_count("o/r") == 2

    assert call(hub, "POST", f"/api/datasets/o/r/tag/{oid}", {"tag": "round-1"})[0] == 200
    assert call(hub, "POST", "/api/datasets/o/r/tag/main", {"tag": "round-1"})[0] == 409
    refs = json.loads(call(hub, "GET", "/api/datasets/o/r/refs")[2])
    assert refs["tags"] == [{"name": "round-1", "ref": "refs/tags/round-1", "targetCommit": oid}]

    status, headers, body = call(hub, "GET", "/datasets/o/r/resolve/round-1/a/b.txt")
    assert (status, body, headers["X-Repo-Commit"]) == (200, b"hello", oid)
    status, _, body = call(hub, "GET", "/datasets/o/r/resolve/round-1/a/b.txt", headers={"Range": "bytes=1-3"})
    assert (status, body) == (206, b"ell")
    status, headers, _ = call(hub, "HEAD", "/datasets/o/r/resolve/main/missing.txt")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    assert call(hub, "GET", "/datasets/o/r/resolve/nope/a/b.txt")[1]["X-Error-Code"] == "RevisionNotFound"
    assert call(hub, "GET", "/api/datasets/o/missing")[1]["X-Error-Code"] == "RepoNotFound"

    tree = json.loads(call(hub, "GET", "/api/datasets/o/r/tree/main")[2])
    assert {(e["type"], e["path"]) for e in tree} == {("file", ".gitattributes"), ("directory", "a")}
    tree = json.loads(call(hub, "GET", "/api/datasets/o/r/tree/main?recursive=True")[2])
    assert ("file", "a/b.txt") in {(e["type"], e["path"]) for e in tree}


def test_auth_and_injected_faults(hub):
    hub.create_repo("o/r")
    assert call(hub, "POST", "/api/repos/create", {"name": "x", "type": "dataset"}, token=None)[0] == 401
    assert commit(hub, "o/r", {"f": b"1"}, parent=None)[0] == 200
    status, _, _ = call(hub, "POST", "/api/datasets/o/r/commit/main",
                        [{"key": "header", "value": {"summary": "s"}}], token="hf_wrong", ndjson=True)
    assert status == 401

    hub.faults.commit_500 = 1
    assert commit(hub, "o/r", {"g": b"2"})[0] == 500
    assert "g" not in hub.files("o/r")  # a 500 commits nothing
    hub.faults.commit_500_after_apply = 1
    assert commit(hub, "o/r", {"g": b"2"})[0] == 500
    assert hub.files("o/r")["g"] == b"2"  # ...unless the reply was what got lost

    head = hub.repo("o/r").heads["main"]
    hub.before_next_commit("o/r", {"theirs.txt": b"t"})
    assert commit(hub, "o/r", {"mine.txt": b"m"}, parent=head)[0] == 412
    assert "theirs.txt" in hub.files("o/r") and "mine.txt" not in hub.files("o/r")

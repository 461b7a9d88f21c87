"""A Hub that answers strangely (issue 23): 200 with an HTML page (a captive portal, a proxy), a
remote manifest that is not UTF-8, an existing README whose YAML is invalid or has `configs: 5`.
Each is one line on stderr and exit 2, and nothing is committed or tagged. Same harness as
test_publish.py: the loopback Hub (tests/hub_server.py) and the real client in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import one_line_error, pairs_table
from hub_server import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_hostileHUBtok3n_x81"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from macpo.store import Store, Subset

    root = tmp_path_factory.mktemp("store") / "store"
    Store(root, create=True).write("run", "round-1", {"student": Subset("pairs", pairs_table(
        [(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(6)], "student", 1))})
    return root


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with FakeHub(tmp_path_factory.mktemp("hub"), token=TOKEN) as h:
        yield h


def _env(endpoint: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN=TOKEN, TOKENIZERS_PARALLELISM="false")
    return env


def macpo(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "macpo.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)


def push(env, store, repo):
    return macpo(env, "push", "--store", store, "--round", "1", "--repo", repo, "--retries", "0", "--no-audit")


# ---- a server that is not the Hub ----------------------------------------------------------------
class _Portal(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    BODY = b"<!doctype html><html><body><h1>Welcome to the hotel Wi-Fi</h1></body></html>"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.BODY)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def portal():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Portal)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_hub_answering_200_with_html(portal, store, tmp_path):
    env = _env(portal, tmp_path)
    line = one_line_error(push(env, store, "org/portal"), "not the Hub API")
    assert TOKEN not in line
    one_line_error(macpo(env, "sql", "--store", store, "--hub", "org/portal@round-1", "SELECT 1"), "not the Hub API")
    one_line_error(macpo(env, "train", "--data", "org/portal@round-1", "--subset", "student", "--model", "m",
                         "--out", tmp_path / "out"), "not the Hub API")
    assert not (tmp_path / "out").exists()


# ---- remote files that are not what macpo wrote ------------------------------------------------------
def test_a_tagged_remote_manifest_that_is_not_utf8(hub, store, tmp_path):
    repo = "org/latin1-manifest"
    hub.create_repo(repo)
    oid = hub.commit_files(repo, {"round-1/manifest.json": b'{"content_hash": "caf\xe9"}'})
    with hub.lock:
        r = hub.repo(repo)
        r.tags["round-1"] = oid
        r.save()
    before = hub.commit_count(repo)
    one_line_error(push(_env(hub.url, tmp_path), store, repo), "already has tag round-1", "not UTF-8")
    assert hub.commit_count(repo) == before


@pytest.mark.parametrize("readme, needle", [
    (b"---\nlicense: [mit\n---\n# card\n", "invalid YAML"),
    (b"---\nconfigs: 5\n---\n# card\n", "configs"),
    (b"---\nconfigs:\n- 5\n---\n# card\n", "configs"),
    (b"---\nconfigs:\n- {config_name: [a]}\n---\n# card\n", "configs"),
    (b"---\n- just\n- a list\n---\n# card\n", "metadata"),
    (b"---\nlicense: mit\n---\n\xff\xfe card\n", "not UTF-8"),
])
def test_an_existing_readme_that_cannot_be_merged(readme, needle, hub, store, tmp_path):
    repo = f"org/readme-{abs(hash(readme)) % 10**8}"
    hub.create_repo(repo)
    hub.commit_files(repo, {"README.md": readme})
    before = hub.commit_count(repo)
    line = one_line_error(push(_env(hub.url, tmp_path), store, repo), "README", needle)
    assert "nothing was uploaded" in line
    assert hub.commit_count(repo) == before and "round-1" not in hub.repo(repo).tags

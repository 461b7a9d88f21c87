"""Behaviour guard for refactors: the CI config's run produces exactly the datasets it produced
before. The content hashes below were printed by the code at commit 0a4f2f6 (before the run layer
moved into macpo/run/), identical in three runs; a change to any of them is a change in what a
run computes, not a refactor."""

from macpo.store import Store

# eval/configs/ci.yaml with conftest's CI_OVERRIDES (shard_size=4), as the session's `ci_run` runs it.
EXPECTED = {
    "macpo-ci-data/v1": "sha256:96ac2fb2e2fa2d18f42a856c26853f91abc4e3873cc744ba8e345f9faf6576e0",
    "macpo-ci/round-0-teachers": "sha256:368c1366e794bad2865d1c12d6d6d832cd40f7292a1e8367ff0eebffde848e4d",
    "macpo-ci/round-0-labels": "sha256:5113d74a8bca3cb5f95ff4b23aee237c1616df63873f1803ea4f1fd74cae6bbf",
    "macpo-ci/round-0": "sha256:6174252be6e0d3f5f472fdd06f76de900caa367e51bdef4e9317d1fbfa3d35b2",
    "macpo-ci/round-1": "sha256:0d6df4228bf607f5f252209a6970456539d85ee3c8568cf4f373842354aaf0e8",
    "macpo-ci-evals/round-0": "sha256:4e1e10feba609e289e23a3f18a24c53d0b019ce9a06c259615fa54912874aea8",
    "macpo-ci-evals/round-1": "sha256:dfd1a65a9e05633116bdcfa9467868f400f017d1fe8314c01b4f99b5e858388a",
}


def test_ci_run_content_hashes_are_unchanged(ci_run):
    out, _ = ci_run
    store = Store(out / "store")
    got = {f"{name}/{v}": store.manifest(name, v)["content_hash"] for name in store.datasets() for v in store.versions(name)}
    assert got == EXPECTED

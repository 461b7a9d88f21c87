"""The run plan is pure: check its shape for each method and ablation without running it."""

import json
from pathlib import Path

from macpo import config as config_mod
from macpo.orchestrate import plan, step_keys


def _cfg(tmp_path, **over):
    base = {"teachers": ["t0", "t1", "t2"], "student": "s", "out": str(tmp_path / "out"), "K": 2, "T": 2}
    base.update(over)
    return config_mod.from_dict(base)


def jobs(cfg):
    """step name -> the agents its trainer process trains (in order), or None for other steps."""
    out = {}
    for s in plan(cfg, Path("run.yaml")):
        if "macpo.trainbatch" in s.argv:
            out[s.name] = [Path(a[a.index("--out") + 1]).name for a in json.loads(s.argv[-1])]
        else:
            out[s.name] = None
    return out


def test_macpo_plan_order(tmp_path):
    j = jobs(_cfg(tmp_path))
    n = list(j)
    assert n[0] == "prepare" and n[-1] == "report"
    assert j["train teachers round-0"] == ["teacher-0", "teacher-1", "teacher-0-neg", "teacher-1-neg"]
    assert j["train student round-0"] == ["student", "student-neg"]
    assert j["train agents round-1"] == ["student", "teacher-0", "teacher-1"]  # K=2 uses the first two
    order = ["build round-0-teachers", "train teachers round-0", "build round-0-labels", "train student round-0",
             "build round-0", "eval round-0", "build round-1", "train agents round-1", "eval round-1", "build round-2"]
    assert [n.index(x) for x in order] == sorted(n.index(x) for x in order)


def test_ablation_without_teacher_updates(tmp_path):
    assert jobs(_cfg(tmp_path, update_teachers=False))["train agents round-1"] == ["student"]


def test_naive_and_self_play_plans(tmp_path):
    naive = jobs(_cfg(tmp_path, method="naive-w2s"))
    assert "build round-1" not in naive and naive["train student round-0"] == ["student"]
    assert naive["train teachers round-0"] == ["teacher-0", "teacher-1", "teacher-0-neg"]
    spac = jobs(_cfg(tmp_path, method="spac", T=3))
    assert [k for k, v in spac.items() if v] == [f"train student round-{t}" for t in range(4)]


def test_step_keys_chain_through_dependencies(tmp_path):
    a = _cfg(tmp_path)
    b = _cfg(tmp_path, train={"dpo": {"lr": 5e-4}})
    ka, kb = step_keys(a, plan(a, Path("r.yaml"))), step_keys(b, plan(b, Path("r.yaml")))
    assert ka["build round-0"] == kb["build round-0"]  # bootstrap does not read the DPO settings
    assert ka["train agents round-1"] != kb["train agents round-1"]
    assert ka["build round-2"] != kb["build round-2"]  # downstream of a changed training step
    c = _cfg(tmp_path, sampling={"temperature": 0.9})
    kc = step_keys(c, plan(c, Path("r.yaml")))
    assert kc["build round-0-teachers"] != ka["build round-0-teachers"]  # conservative: shared settings key every step

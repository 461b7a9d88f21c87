"""The run plan is pure: check its shape for each method and ablation without running it."""

from pathlib import Path

from macpo import config as config_mod
from macpo.orchestrate import plan, step_keys


def _cfg(tmp_path, **over):
    base = {"teachers": ["t0", "t1", "t2"], "student": "s", "out": str(tmp_path / "out"), "K": 2, "T": 2}
    base.update(over)
    return config_mod.from_dict(base)


def names(cfg):
    return [s.name for s in plan(cfg, Path("run.yaml"))]


def test_macpo_plan_order(tmp_path):
    n = names(_cfg(tmp_path))
    assert n[0] == "prepare" and n[-1] == "report"
    # bootstrap: teachers, their negatives, labels, student + negative, hard negatives, eval
    for step in ["build round-0-teachers", "train teacher-0 round-0", "train teacher-1-neg round-0", "build round-0-labels",
                 "train student round-0", "train student-neg round-0", "build round-0", "eval round-0"]:
        assert step in n
    assert n.index("train teacher-1-neg round-0") < n.index("build round-0-labels") < n.index("train student round-0")
    assert n.index("build round-1") < n.index("train student round-1") < n.index("eval round-1") < n.index("build round-2")
    assert "train teacher-0 round-2" in n and "teacher-2" not in " ".join(n)  # K=2 uses the first two


def test_ablation_without_teacher_updates(tmp_path):
    n = names(_cfg(tmp_path, update_teachers=False))
    assert "train teacher-0 round-1" not in n and "train student round-1" in n


def test_naive_and_self_play_plans(tmp_path):
    naive = names(_cfg(tmp_path, method="naive-w2s"))
    assert "build round-1" not in naive and "train student-neg round-0" not in naive and "eval round-0" in naive
    spac = names(_cfg(tmp_path, method="spac", T=3))
    assert "train teacher-0 round-0" not in spac
    assert [s for s in spac if s.startswith("train")] == [f"train student round-{t}" for t in range(4)]


def test_step_keys_chain_through_dependencies(tmp_path):
    a = _cfg(tmp_path)
    b = _cfg(tmp_path, train={"dpo": {"lr": 5e-4}})
    ka, kb = step_keys(a, plan(a, Path("r.yaml"))), step_keys(b, plan(b, Path("r.yaml")))
    assert ka["build round-0"] == kb["build round-0"]  # bootstrap does not read the DPO settings
    assert ka["train student round-1"] != kb["train student round-1"]
    assert ka["build round-2"] != kb["build round-2"]  # downstream of a changed training step
    c = _cfg(tmp_path, sampling={"temperature": 0.9})
    kc = step_keys(c, plan(c, Path("r.yaml")))
    assert kc["build round-0-teachers"] != ka["build round-0-teachers"]  # conservative: shared settings key every step

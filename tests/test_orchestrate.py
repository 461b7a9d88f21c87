"""The run plan is pure: check its shape for each method and ablation without running it; and the
one executor's up-to-date rule on a hand-made plan."""

import json
from pathlib import Path

from macpo import config as config_mod
from macpo.run import execute as execute_mod
from macpo.run.plan import Step, plan, step_keys


def _cfg(tmp_path, **over):
    base = {"teachers": ["t0", "t1", "t2"], "student": "s", "out": str(tmp_path / "out"), "K": 2, "T": 2}
    base.update(over)
    return config_mod.from_dict(base)


def jobs(cfg):
    """step name -> the agents its trainer process trains (in order), or None for other steps."""
    out = {}
    for s in plan(cfg, Path("run.yaml")):
        if "macpo.run.trainbatch" in s.argv:
            out[s.name] = [Path(job["out"]).name for job in json.loads(s.argv[-1])]
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



def test_step_keys_hold_the_run_folder_not_a_sibling_sharing_its_prefix(tmp_path):
    def key(out, *paths):
        cfg = _cfg(tmp_path, out=str(tmp_path / out))
        return step_keys(cfg, [Step("a", ["macpo", "x", *(str(tmp_path / p) for p in paths)], done=lambda: False)])

    # The run's own paths follow it when it moves; a sibling's ("out-2" beside "out") stays where it is.
    assert key("out", "out/store", "out-2/data") == key("moved", "moved/store", "out-2/data")
    assert key("out", "out/store", "out-2/data") != key("moved", "moved/store", "moved-2/data")


def train_jobs(cfg) -> dict[str, dict]:
    """'<step>/<agent>' -> the TrainConfig fields its trainer job receives."""
    out = {}
    for s in plan(cfg, Path("run.yaml")):
        if "macpo.run.trainbatch" in s.argv:
            for job in json.loads(s.argv[-1]):
                out[f"{s.name}/{Path(job['out']).name}"] = job
    return out


def test_spac_runs_spac_with_a_positive_alpha(tmp_path):
    jobs_ = train_jobs(_cfg(tmp_path, method="spac", T=1))
    job = jobs_["train student round-1/student"]
    assert job["loss"] == "spac" and job["alpha"] > 0
    dpo = train_jobs(_cfg(tmp_path, method="dpo", T=1))["train student round-1/student"]
    assert dpo["loss"] == "dpo"


def test_ref_base_is_the_pretrained_base_in_full_fine_tuning(tmp_path):
    cfg = _cfg(tmp_path, train={"dpo": {"lora_r": 0, "ref": "base"}})
    job = train_jobs(cfg)["train agents round-2/student"]
    assert job["model"].endswith("models/round-1/student")  # continues the previous iterate
    assert job["ref_model"] == "s"  # ...against the pretrained base
    lora = train_jobs(_cfg(tmp_path, train={"dpo": {"lora_r": 8, "ref": "base"}}))["train agents round-2/student"]
    assert lora["model"] == "s" and lora["adapter"].endswith("models/round-1/student") and lora["ref_model"] is None
    prev = train_jobs(_cfg(tmp_path, train={"dpo": {"lora_r": 0, "ref": "previous"}}))["train agents round-2/student"]
    assert prev["ref_model"] is None


def test_paper_minus_hn_trains_sft_on_positives(tmp_path):
    job = train_jobs(_cfg(tmp_path, negative="none"))["train agents round-1/teacher-0"]
    assert job["loss"] == "sft" and job["lr"] == _cfg(tmp_path).train["dpo"].lr


def test_revision_and_gguf_reach_base_loads_only(tmp_path):
    cfg = _cfg(tmp_path, student={"model": "org/base", "revision": "v1", "gguf_file": "m.gguf"},
               train={"dpo": {"lora_r": 0}, "student_sft": {"lora_r": 0}})
    jobs_ = train_jobs(cfg)
    first = jobs_["train student round-0/student"]
    assert (first["model"], first["model_revision"], first["gguf_file"]) == ("org/base", "v1", "m.gguf")
    later = jobs_["train agents round-1/student"]  # a local previous folder: no revision applies to it
    assert later["model_revision"] is None and later["gguf_file"] is None


def test_every_stage_field_reaches_its_job(tmp_path):
    """Walk TrainConfig: a non-default value for each stage field arrives in the job unchanged."""
    import dataclasses

    from macpo.trainer.train_config import JOB_FIELDS, TrainConfig

    defaults = TrainConfig()
    settings = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in JOB_FIELDS or f.name == "loss":
            continue
        value = getattr(defaults, f.name)
        settings[f.name] = _non_default(f.name, value)
    cfg = _cfg(tmp_path, train={"dpo": settings})
    job = train_jobs(cfg)["train agents round-1/student"]
    for name, value in settings.items():
        assert job[name] == value, name


def _non_default(name, value):
    special = {"ref": "base", "precision": "fp32", "launcher": "accelerate", "lr_scheduler": "linear",
               "accelerate_config": "cfg.yaml", "lora_targets": ["q_proj"], "max_samples": 7, "max_steps": 3}
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return round(value + 0.125, 6) if value < 0.5 else value / 2
    raise AssertionError(f"no non-default value for {name}")


def test_summary_names_the_reward_it_reports(tmp_path):
    from macpo.run.summary import summarize

    cfg = config_mod.from_dict({"name": "s", "out": str(tmp_path), "K": 1, "T": 1, "teachers": ["t"], "student": "s"})
    rows = [{"round": 0, "agent": "student", "reward": -0.1, "harmless": -0.1}]
    (tmp_path / "metrics.json").write_text(json.dumps({"rows": rows, "student_round0": -0.1, "best_teacher": -0.2}))
    text = summarize(cfg)
    assert "student reward (mean of the reward-model axes), round 0" in text and "gold" not in text
    rows[0]["combined"] = 0.5
    (tmp_path / "metrics.json").write_text(json.dumps({"rows": rows, "student_round0": 0.5}))
    assert "student gold reward, round 0 (naive weak-to-strong): 0.500" in summarize(cfg)
    spac = config_mod.from_dict({"name": "s", "out": str(tmp_path), "method": "spac", "T": 1, "student": "s"})
    assert "round 0 (SFT on the offline pairs' chosen side): 0.500" in summarize(spac)


def test_the_executor_reruns_a_redone_step_and_what_depends_on_it_only(tmp_path, monkeypatch):
    """One up-to-date rule for `macpo run` and `macpo study`: recorded done with the same key, its
    output present, and no dependency run again in this invocation."""
    cfg = _cfg(tmp_path)
    outputs = {name: tmp_path / name for name in "abcd"}
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"]}
    steps = lambda: [Step(n, ["stage", n], lambda n=n: outputs[n].exists(), deps=deps[n]) for n in "abcd"]  # noqa: E731
    ran = []

    def run_step(step, log, verbose, threads=0):
        ran.append(step.name)
        outputs[step.name].touch()

    monkeypatch.setattr(execute_mod, "plan", lambda cfg, path: steps())
    monkeypatch.setattr(execute_mod, "run_step", run_step)
    execute_mod.execute(cfg, tmp_path / "run.yaml")
    assert ran == ["a", "b", "c", "d"]
    ran.clear()
    execute_mod.execute(cfg, tmp_path / "run.yaml")
    assert ran == []  # a finished run is up to date, every step of it
    outputs["b"].unlink()
    execute_mod.execute(cfg, tmp_path / "run.yaml")
    assert ran == ["b", "c"]  # c was built from b; d only from a


def test_a_step_run_again_starts_from_no_outputs(tmp_path, monkeypatch):
    """A finished run whose eval settings change re-evaluates: the step's old store version (which
    never changes in place) is removed before the step writes the new one, instead of refusing."""
    cfg = _cfg(tmp_path)
    version = tmp_path / "store" / "x-evals" / "round-0"
    split = ["test"]
    seen = []

    def steps():
        return [Step("eval round-0", ["stage", "eval", split[0]], lambda: (version / "manifest.json").is_file(),
                     outputs=[version])]

    def run_step(step, log, verbose, threads=0):
        seen.append(version.exists())
        version.mkdir(parents=True)
        (version / "manifest.json").write_text(step.argv[-1])

    monkeypatch.setattr(execute_mod, "plan", lambda cfg, path: steps())
    monkeypatch.setattr(execute_mod, "run_step", run_step)
    execute_mod.execute(cfg, tmp_path / "run.yaml")
    split[0] = "val"
    execute_mod.execute(cfg, tmp_path / "run.yaml")
    assert seen == [False, False] and (version / "manifest.json").read_text() == "val"

"""A run config's ``axes`` section: the settings that differ between the preference axes live in
the one file, applied for the run's world.axis, with --set still winning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from macpo import config as config_mod
from macpo.errors import UserError

DEMO = "eval/configs/demo.yaml"


def _config(tmp_path, axes) -> str:
    data = yaml.safe_load(open(DEMO))
    data["axes"] = axes
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_axis_of_the_run_picks_its_settings(tmp_path):
    path = _config(tmp_path, {"harmless": {"world.unlabelled_targets": 7, "train.student_sft.lr": 2.0e-3}})
    helpful = config_mod.load(path, {})
    harmless = config_mod.load(path, {"world.axis": "harmless"})
    assert helpful.world.get("unlabelled_targets") is None and helpful.train["student_sft"].lr == 3.0e-4
    assert harmless.world["unlabelled_targets"] == 7 and harmless.train["student_sft"].lr == 2.0e-3
    assert config_mod.load(path, {"world.axis": "harmless", "train.student_sft.lr": "5e-4"}).train["student_sft"].lr == 5.0e-4
    assert "axes" not in harmless.to_dict()  # the resolved config holds the applied values only


@pytest.mark.parametrize("axes, message", [
    ({"both": {}}, "unknown axis 'both'"),
    ({"harmless": ["world.seed"]}, "expected a mapping"),
    ({"harmless": {"world.axis": "helpful"}}, "cannot be set per axis"),
    ("harmless", "expected a mapping"),
])
def test_bad_axes_sections_are_one_line(tmp_path, axes, message):
    with pytest.raises(UserError, match=message):
        config_mod.load(_config(tmp_path, axes), {})
    p = subprocess.run([sys.executable, "-m", "macpo.cli", "run", _config(tmp_path, axes), "--print-config"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and message.split("'")[0] in p.stderr and "Traceback" not in p.stderr


def test_a_study_applies_the_axis_settings_of_each_axis(tmp_path):
    """`macpo study demo.yaml --axes ...` planned its runs from the raw file and refused `axes`."""
    from macpo.run.study import runner

    path = _config(tmp_path, {"harmless": {"world.unlabelled_targets": 7}})
    helpful = runner.plan_runs(path, {"world.axis": "helpful"}, ["naive-w2s"], [0], tmp_path / "h")
    harmless = runner.plan_runs(path, {"world.axis": "harmless"}, ["naive-w2s", "macpo"], [0], tmp_path / "x")
    assert "unlabelled_targets" not in helpful[0][2]["world"]
    assert all(data["world"]["unlabelled_targets"] == 7 and "axes" not in data for _, _, data in harmless)

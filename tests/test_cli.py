import subprocess
import sys

import pytest

from macpo.cli import COMMANDS

MACPO = [sys.executable, "-m", "macpo.cli"]


def test_top_level_help_lists_every_command():
    r = subprocess.run([*MACPO, "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in r.stdout


def test_unknown_command_is_one_line_exit_2():
    r = subprocess.run([*MACPO, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    r = subprocess.run([*MACPO, name, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"macpo {name}" in r.stdout


def test_installed_namespace_has_no_bare_stage_modules():
    import importlib.util

    for bare in ("builder", "trainer", "data_cards"):
        spec = importlib.util.find_spec(bare)
        assert spec is None or "site-packages" not in str(spec.origin), bare
    import macpo.builder
    import macpo.eval
    import macpo.trainer

    assert macpo.builder.__name__ == "macpo.builder"

from __future__ import annotations

import subprocess
import sys

import pytest

from stslive.acquisition.cli import COMMANDS, build_parser, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("stslive ")
    assert main([]) == 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_builds_its_arguments(name):
    parser = build_parser(name)  # imports the subcommand module and adds its arguments
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    text = sub.format_help()
    assert text.startswith("usage: stslive " + name)
    assert sub.get_default("_run") is not None


def test_console_script_entry_runs_as_a_process():
    proc = subprocess.run(
        [sys.executable, "-m", "stslive.acquisition.cli", "theory", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: stslive theory" in proc.stdout


def test_user_error_is_a_message_not_a_traceback(capsys):
    assert main(["theory", "--set", "no_such_key=1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stslive theory: error:") and "Traceback" not in err

from __future__ import annotations

import subprocess
import sys

from stslive.acquisition.cli import COMMANDS, main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.startswith("stslive ")
    assert main([]) == 2


def test_every_subcommand_has_help():
    for name in COMMANDS:
        proc = subprocess.run(
            [sys.executable, "-m", "stslive.acquisition.cli", name, "--help"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage: stslive" in proc.stdout

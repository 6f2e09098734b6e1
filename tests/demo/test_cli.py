"""reelora/demo/cli.py: `reelora base build` is registered on the main command line."""
import pytest

from reelora.cli import main


def test_cli_registers_base_build(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["base", "build", "--help"])
    assert exc.value.code == 0 and "--minutes" in capsys.readouterr().out


def test_base_without_a_subcommand_prints_its_help(capsys):
    assert main(["base"]) == 2
    assert "build" in capsys.readouterr().out

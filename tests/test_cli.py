"""The CLI front door: help, unknown commands, and user errors without tracebacks."""
import types

import pytest

from jobs import cli
from operators.errors import InputError


def test_help_lists_every_registered_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_registered_command_module_has_the_command_interface():
    import importlib

    for name, (module_name, _) in cli.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), name


def test_input_error_ending_a_command_is_one_line_with_exit_code_2(monkeypatch, capsys):
    def failing_run(args):
        raise InputError("/data/video.mp4", "truncated container")

    fake = types.SimpleNamespace(add_arguments=lambda parser: None, run=failing_run)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_module", "a command that fails"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    assert cli.main(["fake"]) == 2  # the command cannot run on its input as given
    err = capsys.readouterr().err
    assert err.strip() == "tubeflow fake: error: /data/video.mp4: truncated container"
    assert "Traceback" not in err

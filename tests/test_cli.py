"""The ``darl`` command line: its commands, a light start, and one-line errors with exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from darl.cli import build_parser, main
from service import cli as service_cli
from training import cli as training_cli

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "peft", "sklearn", "faiss")


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["score", "--help"], ["train", "--help"]])
def test_help_imports_no_heavy_library(argv: list[str]) -> None:
    code = (
        "import contextlib, io, sys\n"
        "from darl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({argv!r})\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_every_command_is_registered_with_the_extra_it_needs() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    extras = {name: p.get_default("extra") for name, p in sub.choices.items()}
    assert extras == {
        "base-model": "serve",
        "serve": "serve",
        "score": "serve",
        "train": "train",
        "select": "train",
        "eval": "train",
        "probe-depth": "train",
        "experiment": "train",
    }


def test_without_the_training_package_the_service_commands_remain() -> None:
    """The service images ship without ``training/``: ``darl`` still starts, with the other commands."""
    code = (
        "import sys\n"
        "sys.modules['training'] = None  # import training -> ModuleNotFoundError, as where it is not installed\n"
        "from darl.cli import build_parser\n"
        "parser = build_parser()\n"
        "sub = next(a for a in parser._actions if a.dest == 'command')\n"
        "print(' '.join(sorted(sub.choices)))\n"
        "print(parser.epilog)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    commands, epilog = out.stdout.splitlines()
    assert commands == "base-model score serve"
    assert "no training package" in epilog


def error_line(capsys, argv: list[str], code: int = 2) -> str:
    """Run ``darl argv``: exit ``code``, one line on stderr, no traceback; return that line."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def test_a_missing_config_file_is_a_user_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.yaml"
    line = error_line(capsys, ["train", "--config", str(missing)])
    assert line == f"error: No such file or directory: {missing.resolve()}"


def test_a_bad_config_or_override_is_a_user_error(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nfinetune: {epochs: many}\nbogus: 1\n")
    line = error_line(capsys, ["train", "--config", str(config)])
    assert line.startswith(f"error: {config.resolve()}: ")
    assert "finetune.epochs: " in line and "bogus: Extra inputs are not permitted" in line
    line = error_line(capsys, ["select", "--config", str(config), "--export", "x.csv", "--set", "dasa.budget"])
    assert line == "error: override 'dasa.budget' is not KEY=VALUE"
    config.write_text("name: [unclosed\n")
    line = error_line(capsys, ["train", "--config", str(config)])
    assert line.startswith(f"error: {config.resolve()} is not valid YAML (line 2, column 1): ")


def test_an_invalid_setting_is_a_user_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DARL_PORT", "eighty")
    line = error_line(capsys, ["serve", "--prepare-only"])
    assert line.startswith("error: invalid Settings: port: ")


def test_a_missing_artifact_is_a_user_error(tmp_path: Path, capsys) -> None:
    line = error_line(capsys, ["eval", "--model", str(tmp_path), "--data", "x.csv", "--out", str(tmp_path / "o")])
    assert line == f"error: {tmp_path / 'manifest.json'} not found: not a model artifact directory"


def test_verbose_adds_the_traceback_before_the_line(tmp_path: Path, capsys) -> None:
    for argv in (["-v", "train"], ["train", "-v"]):
        assert main([*argv, "--config", str(tmp_path / "nope.yaml")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback") and "FileNotFoundError" in err
        assert err.splitlines()[-1].startswith("error: No such file or directory: ")


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(training_cli, "_train", interrupted)
    assert error_line(capsys, ["train", "--config", "c.yaml"], code=130) == "interrupted"


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def needs(module: str):
        def run(args) -> int:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)

        return run

    monkeypatch.setattr(training_cli, "_train", needs("faiss"))
    line = error_line(capsys, ["train", "--config", "c.yaml"])
    assert line == "error: faiss is not installed; this command needs it: pip install 'darl-relevance[train]'"
    monkeypatch.setattr(service_cli, "_run", needs("uvicorn.main"))
    assert error_line(capsys, ["serve"]).endswith("pip install 'darl-relevance[serve]'")


def test_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args) -> int:
        return 1 // 0

    monkeypatch.setattr(training_cli, "_train", broken)
    with pytest.raises(ZeroDivisionError):
        main(["train", "--config", "c.yaml"])

    def imports_a_module_of_ours_that_is_gone(args) -> int:
        raise ModuleNotFoundError("No module named 'training.gone'", name="training.gone")

    monkeypatch.setattr(training_cli, "_train", imports_a_module_of_ours_that_is_gone)
    with pytest.raises(ModuleNotFoundError):
        main(["train", "--config", "c.yaml"])

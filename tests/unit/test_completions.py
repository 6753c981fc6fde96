"""The committed completion scripts are current, and the CLI answers the requests they make."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgsched import completions

REGENERATE = "python -m pgsched.completions"


def test_committed_scripts_are_current() -> None:
    outdated = completions.stale()
    assert not outdated, f"stale completion scripts {[p.name for p in outdated]}: regenerate with `{REGENERATE}`"


def test_stale_detects_an_edited_script(tmp_path: Path) -> None:
    completions.write(tmp_path)
    assert completions.stale(tmp_path) == []
    (tmp_path / "_sched").write_text("#compdef sched\n")
    assert completions.stale(tmp_path) == [tmp_path / "_sched"]


def test_scripts_name_the_program_and_its_variable() -> None:
    for shell in completions.FILE_NAMES:
        text = completions.render(shell)
        assert "_SCHED_COMPLETE=complete_" + shell in text
        assert " sched" in text
    assert completions.render("zsh").startswith("#compdef sched\n")


def _sched_env(**extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **extra}


def _complete(**extra: str) -> str:
    # The console script, not ``python -m``: the variable's name derives from the program's name.
    sched = str(Path(sys.executable).parent / "sched")
    result = subprocess.run([sched], env=_sched_env(**extra), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_completes_commands_for_bash() -> None:
    assert _complete(_SCHED_COMPLETE="complete_bash", COMP_WORDS="sched st", COMP_CWORD="1").split() == ["status"]


def test_cli_completes_options_for_zsh_and_fish() -> None:
    zsh = _complete(_SCHED_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="sched add --q")
    assert '"--queue"' in zsh
    fish = _complete(
        _SCHED_COMPLETE="complete_fish", _TYPER_COMPLETE_ARGS="sched add --q", _TYPER_COMPLETE_FISH_ACTION="get-args"
    )
    assert fish.startswith("--queue\t")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_script_completes_in_bash() -> None:
    script = completions.DEFAULT_FOLDER / "sched.bash"
    shell = (
        f'source "{script}"; COMP_WORDS=(sched cle); COMP_CWORD=1; _sched_completion sched; ' + 'echo "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", shell], env=_sched_env(), capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["cleanup"], result.stderr

"""The command line a user expects: grouped help with defaults and choices, --version."""

from __future__ import annotations

import argparse
import ast
import re

import pytest

from fedspeech import __version__
from fedspeech.cli import build_parser, main, sim_config
from fedspeech.config import GROUPS, SimConfig, settings_of
from tests.helpers import REPO as ROOT


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedspeech {__version__}"


def test_simulate_help_is_grouped_with_defaults_choices_and_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help(capsys, "simulate")
    for title in GROUPS.values():
        assert f"\n{title}:\n" in text, title
    for info in settings_of(SimConfig):
        assert info.flag in text, info.flag
    flat = " ".join(text.split())  # argparse wraps long help lines
    assert "(default 0.1; sdd: 0.003)" in flat  # --lr, with the sdd task's own default
    assert "{update, gradient}" in flat  # fixed choices
    assert "{mel, mfcc}" in flat  # names behind a registry
    assert "roga" in flat and "examples:" in flat


def test_audit_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from fedspeech.audit import AuditSettings

    text = _help(capsys, "audit")
    for info in settings_of(AuditSettings):
        assert info.flag in text, info.flag
    assert "examples:" in text


def test_flags_override_toml_and_only_given_flags_count(tmp_path: object) -> None:
    args = build_parser().parse_args(["simulate", "--task", "sdd", "--lr", "0.5", "--quiet"])
    cfg = sim_config(args)
    assert (cfg.task, cfg.lr, cfg.progress) == ("sdd", 0.5, False)
    assert cfg.model == "aasist-xs"  # the task's default, since --model was not given
    assert cfg.explicit == {"task", "lr"}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    out: set[str] = set()
    for action in parser._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _flags(sub)
    return out


def test_every_error_names_a_flag_that_exists() -> None:
    """A ``--flag`` in the text of any ``raise`` in the project is a real flag."""
    flags = _flags(build_parser())
    unknown: list[str] = []
    for path in sorted([*(ROOT / "fedspeech").rglob("*.py"), *(ROOT / "attacks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise):
                continue
            for const in ast.walk(node):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", const.value):
                        if flag not in flags:
                            unknown.append(f"{path.relative_to(ROOT)}:{node.lineno} {flag}")
    assert unknown == []

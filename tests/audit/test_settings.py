"""The audit's settings: checked once, errors that name real flags, metadata that is the CLI."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from attacks.features import Stage1Settings, setting_name
from fedspeech.audit import AuditSettings
from fedspeech.cli import build_parser
from fedspeech.errors import ConfigError


def audit_options() -> dict[str, argparse.Action]:
    """``fedspeech audit``'s options by flag."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    audit = sub.choices["audit"]
    return {flag: a for a in audit._actions for flag in a.option_strings}


def test_metadata_describes_the_audit_command_line() -> None:
    options = audit_options()
    covered = {"-h", "--help", "--quiet"}  # not settings
    for spec in dataclasses.fields(AuditSettings):
        if "help" not in spec.metadata:
            flag = "--" + spec.name.replace("_", "-")
            assert flag not in options, f"{spec.name} is a flag but its metadata has no help"
            continue
        flag = setting_name(AuditSettings, spec.name)
        assert flag in options, f"{spec.name}: no {flag} in fedspeech audit"
        action = options[flag]
        covered.add(flag)
        # The help is the metadata's, followed by the allowed values and the default.
        assert action.help is not None and action.help.startswith(spec.metadata["help"])
        for choice in spec.metadata.get("choices", ()):
            assert choice in action.help, (spec.name, choice)
        if spec.default is not None and not isinstance(spec.default, bool):
            assert f"default {spec.default}" in action.help, spec.name
        # Unset flags stay None, so that only what the user typed overrides the defaults.
        assert action.dest == spec.name and action.default is None, spec.name
        if flag.startswith("--no-"):  # a switch that turns a default-true setting off
            assert spec.default is True and action.const is False
    assert set(options) == covered


def test_stage1_fields_are_stage1_settings() -> None:
    stage1 = {f.name: f for f in dataclasses.fields(Stage1Settings)}
    shared = [f for f in dataclasses.fields(AuditSettings) if f.name in stage1]
    assert [f.name for f in shared] == [
        "iterations",
        "restarts",
        "lr",
        "lr_start",
        "extra_restarts",
        "tv_weight",
        "tv_reduction",
        "distance",
        "unrolled_start",
        "seed",
    ]
    for spec in shared:
        assert spec.default == stage1[spec.name].default
    settings = AuditSettings(iterations=50, lr_start=0.1, seed=3)
    assert settings.stage1 == Stage1Settings(iterations=50, lr_start=0.1, seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.iterations = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iterations": 0}, "--iterations must be at least 1, got 0"),
        ({"extra_restarts": -1}, "--extra-restarts must not be negative, got -1"),
        ({"tv_weight": -1.0}, "--tv-weight must not be negative, got -1.0"),
        ({"tv_weight": float("inf")}, "--tv-weight must be a finite number, got inf"),
        ({"lr": float("inf")}, "--lr must be a finite number, got inf"),
        ({"lr_start": float("nan")}, "--lr-start must be a finite number, got nan"),
        ({"seed": -1}, "--seed must be in [0, 4294967295], got -1"),
        ({"rounds": [2, 0]}, "--round must be at least 1, got 0"),
        ({"clients": [-1]}, "--client must not be negative, got -1"),
        ({"lr": 0.1, "lr_start": 0.05}, "--lr-start must be at least --lr (0.1), got 0.05"),
        (
            {"preset": "study", "lr": 0.02},
            "--preset study sets --lr to 0.01; it conflicts with --lr 0.02",
        ),
        (
            {"lr": 0.5},
            "--lr-start must be at least --lr (0.5), got 0.1 (its default; give --lr-start at "
            "least 0.5, or --preset study for a constant step)",
        ),
        ({"preset": "fast"}, "--preset must be one of study, got 'fast'"),
        (
            {"preset": "study", "lr_start": 0.2},
            "--preset study sets --lr-start to None; it conflicts with --lr-start 0.2",
        ),
        ({"chunk": 0}, "--chunk must be at least 1, got 0"),
        ({"threads": 0}, "--threads must be at least 1, got 0"),
        ({"max_samples": 0}, "--max-samples must be at least 1, got 0"),
        ({"content_epochs": 0}, "AuditSettings.content_epochs must be at least 1, got 0"),
        ({"verifier_speakers": 0}, "AuditSettings.verifier_speakers must be at least 1, got 0"),
        ({"verifier_clips": 1}, "AuditSettings.verifier_clips must be at least 2, got 1"),
        ({"content_max_clips": 0}, "AuditSettings.content_max_clips must be at least 1, got 0"),
        ({"speaker_model": "nobody"}, "unknown speaker model 'nobody'"),
        ({"distance": "l1"}, "unknown gradient distance 'l1'"),
        ({"unrolled_start": "zeros"}, "unknown --unrolled-start 'zeros'; known: random, averaged"),
        (
            {"update_model": "exact"},
            "--update-model must be one of unrolled, averaged, got 'exact'",
        ),
    ],
)
def test_bad_settings_name_a_real_flag_or_the_setting(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        AuditSettings(**changes)  # type: ignore[arg-type]
    assert str(err.value).startswith(message)
    flag = message.split()[0]
    if flag.startswith("--"):
        assert flag in audit_options()


def test_preset_study_is_the_study_constant_step() -> None:
    default, study = AuditSettings(), AuditSettings(preset="study", iterations=300)
    assert (default.stage1.first_lr, default.lr) == (0.1, 0.001)
    # Only the step sizes differ; the preset's other fields stay as given.
    assert (study.lr_start, study.stage1.first_lr, study.iterations) == (None, 0.01, 300)
    same = AuditSettings(iterations=300, lr_start=None, lr=0.01)
    assert dataclasses.replace(study, preset=None) == same
    assert study.stage1 == Stage1Settings.preset("study", iterations=300)
    # Caches made with the study's constant step (no "lr_start" key) stay valid for it.
    assert "lr_start" not in study.stage1_key()
    assert default.stage1_key()["lr_start"] == 0.1
    # Giving the preset's own value is no conflict.
    assert AuditSettings(preset="study", lr_start=None, lr=0.01).lr_start is None


def test_preset_is_a_flag_of_audit_and_a_key_of_simulate() -> None:
    from attacks.features import PRESETS
    from fedspeech.audit.rounds import audit_settings
    from fedspeech.cli import settings_from_args
    from fedspeech.config import SimConfig, settings_of

    parser = build_parser()
    args = parser.parse_args(["audit", "runs/x", "--preset", "study", "--iterations", "20"])
    settings = AuditSettings(**settings_from_args(args, AuditSettings))
    assert (settings.preset, settings.lr_start, settings.iterations) == ("study", None, 20)
    info = {i.name: i for i in settings_of(SimConfig)}["audit_preset"]
    assert info.choices == tuple(PRESETS)
    cfg = SimConfig.from_mapping({"audit": True, "audit_preset": "study"})
    assert audit_settings(cfg, None).lr_start is None
    assert audit_settings(SimConfig(), None).lr_start == 0.1
    with pytest.raises(ConfigError, match="unknown preset 'fast'; known: study"):
        Stage1Settings.preset("fast")

"""Bad input: one error line naming the problem, exit code 2, no traceback.

Most cases run in this process through :func:`fedspeech.cli.main` (milliseconds each);
:data:`SUBPROCESS_CASES` run the real ``python -m fedspeech`` for the exit code and the
absence of a traceback end to end (about 2 s each). ``docs/reliability.md`` is the table of
:data:`CASES` with their actual messages (written by ``experiments/reliability.py``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from fedspeech.cli import main
from fedspeech.models.weights import save_model_file
from tests.helpers import FSDD, assert_one_line_error, needs_fsdd, run_cli

# (arguments, words the error line must hold); placeholders: see PLACEHOLDERS.
SIMULATE_CASES: list[tuple[list[str], tuple[str, ...]]] = [
    (["--lr", "nan"], ("--lr must be a finite number, got nan",)),
    (["--lr", "inf"], ("--lr must be a finite number, got inf",)),
    (["--lr", "0"], ("--lr must be positive",)),
    (["--momentum", "-0.5"], ("--momentum must not be negative",)),
    (["--momentum", "1.5"], ("--momentum must be at most 1",)),
    (["--clip-norm", "-1"], ("--clip-norm must not be negative",)),
    (["--clip-norm", "nan"], ("--clip-norm must be a finite number",)),
    (["--server-lr", "-1"], ("--server-lr must be positive",)),
    (["--server-lr", "nan"], ("--server-lr must be a finite number",)),
    (["--proximal-mu", "-1"], ("--proximal-mu must not be negative",)),
    (["--cpus-per-client", "nan"], ("--cpus-per-client must be a finite number",)),
    (["--cpus-per-client", "0"], ("--cpus-per-client must be at least 0.0001",)),
    (["--alpha", "inf"], ("--alpha must be a finite number",)),
    (["--fraction", "nan"], ("--fraction must be a finite number",)),
    (["--seed", "-1"], ("--seed must not be negative",)),
    (["--seed", "4294967296"], ("--seed must be at most 4294967295",)),
    (["--clients", "0"], ("--clients must be at least 1",)),
    (["--rounds", "0"], ("--rounds must be at least 1",)),
    (["--batch-size", "0"], ("--batch-size must be at least 1",)),
    (["--local-epochs", "0", "--local-steps", "0"], ("--local-epochs or --local-steps",)),
    (["--capture-clients", "5", "--clients", "2"], ("--capture-clients 5 is more than",)),
    (["--capture-clients", "some"], ("--capture-clients must be a number or 'all'",)),
    (["--audit", "--capture-clients", "0"], ("--audit needs captures",)),
    (["--audit-iterations", "0"], ("--audit-iterations must be at least 1",)),
    (["--audit-preset", "fast"], ("--audit-preset must be one of study, got 'fast'",)),
    (["--synth-speakers", "0"], ("--synth-speakers must be at least 1",)),
    (["--task", "sdd", "--roga-rho", "inf"], ("--roga-rho must be a finite number",)),
    (["--task", "sdd", "--clip-samples", "0"], ("--clip-samples must be positive",)),
    (["--clients", "abc"], ("argument --clients: invalid int value: 'abc'",)),
    (["--rouns", "3"], ("unrecognized arguments: --rouns",)),
    (["--fraction", "0"], ("--fraction must be in (0, 1]",)),
    (["--fraction", "1.2"], ("--fraction must be in (0, 1]",)),
    (["--dataset", "timit"], ("unknown dataset 'timit'", "fsdd")),
    (["--model", "resnet9"], ("unknown model 'resnet9'", "kws-cnn")),
    (["--frontend", "gammatone"], ("unknown front-end 'gammatone'", "mel, mfcc")),
    (["--out", "/dev/null/x"], ("cannot create run folder /dev/null/x", "not a folder")),
    (["--out", "notes.txt"], ("run folder notes.txt is a file, not a folder",)),
    (["--out", "old-run"], ("--out old-run holds a run; use --overwrite to replace it",)),
    (["--resume", "missing"], ("--resume missing: no such run folder",)),
    (
        ["--resume", "old-run", "--rounds", "3"],
        ("--resume takes the run's settings from old-run/config.toml", "(got --rounds)"),
    ),
    (["--resume", "old-run", "--quiet", "--seed", "1"], ("(got --seed)",)),
    (["--resume", "old-run"], ("--resume old-run: no config.toml, not a run folder",)),
    (["--resume", "new-run"], ("--resume new-run: no saved model",)),
    (["--dp", "local", "--dp-clip", "1", "--dp-noise", "-1"], ("--dp-noise must not be negative",)),
    (["--dp", "local", "--dp-clip", "0"], ("--dp-clip must be positive",)),
    (["--dp", "local"], ("--dp local needs --dp-clip",)),
    (["--dp", "fancy"], ("--dp must be one of none, central, local, sgd, got 'fancy'",)),
    (["--dp-clip", "1"], ("--dp-clip needs --dp central, local or sgd",)),
    (["--prune-ratio", "1.5"], ("--prune-ratio must be at most 1",)),
    (["--prune-ratio", "nan"], ("--prune-ratio must be a finite number",)),
    (["--quantize-bits", "0"], ("--quantize-bits must be at least 1",)),
    (["--quantize-bits", "17"], ("--quantize-bits must be at most 16",)),
    (["--dp", "sgd", "--dp-clip", "1", "--share", "gradient"], ("--dp sgd needs --share update",)),
    (["--lr-min", "0.01"], ("--lr-min needs --lr-schedule cosine",)),
    (["--lr-schedule", "cosine", "--lr-min", "1"], ("--lr-min 1 is above --lr 0.1",)),
    (["--lr-schedule", "linear"], ("--lr-schedule", "linear")),
    (
        ["--lr-schedule", "cosine", "--share", "gradient"],
        ("--lr-schedule is for local training",),
    ),
    (["--weight-decay", "-1"], ("--weight-decay must not be negative",)),
    (["--weight-decay", "0.1"], ("--weight-decay need --augment with --task kws",)),
    (["--task", "sdd", "--augment", "freqmask:9000"], ("bad augmentation spec 'freqmask:9000'",)),
    (["--init-weights", "missing"], ("no such weights file or run folder: missing",)),
    (["--init-weights", "empty"], ("empty is a folder without model.safetensors",)),
    (
        ["--task", "sdd", "--init-weights", "kws.safetensors"],
        ("kws.safetensors holds a 'kws-cnn' model, not 'aasist-xs'",),
    ),
    (["--init-weights", "cut.safetensors"], ("cut.safetensors: not a readable safetensors",)),
    (["--init-weights", "evil.pth"], ("evil.pth: a .pth is read only as a published checkpoint",)),
    (
        ["--task", "sdd", "--model", "aasist-l", "--init-weights", "evil.pth"],
        ("evil.pth: refused: it holds objects other than tensors",),
    ),
    (
        ["--task", "sdd", "--dp", "sgd", "--dp-clip", "1", "--alignment", "roga"],
        ("--dp sgd works with the dual-path aligners", "not --alignment roga"),
    ),
]
SWEEP_CASES: list[tuple[list[str], tuple[str, ...]]] = [
    (["bad-sweep.toml", "--out", "sweep"], ("variant 'b'", "unknown config key 'dp-nois'")),
    (["missing.toml", "--out", "sweep"], ("sweep file missing.toml does not exist",)),
    (["notes.txt", "--out", "sweep"], ("sweep file notes.txt is not valid TOML",)),
    (["base.toml", "--out", "sweep"], ("sweep file base.toml has no [sweep] table",)),
]
AUDIT_CASES: list[tuple[list[str], tuple[str, ...]]] = [
    (["empty", "--iterations", "0"], ("--iterations must be at least 1",)),
    (["empty", "--workers", "0"], ("--workers must be at least 1",)),
    (["empty", "--lr", "nan"], ("--lr must be a finite number",)),
    (["empty", "--lr", "inf"], ("--lr must be a finite number",)),
    (["empty", "--lr", "0.1", "--lr-start", "0.01"], ("--lr-start must be at least --lr",)),
    (["empty", "--lr", "0.5"], ("--lr-start must be at least --lr (0.5), got 0.1 (its default",)),
    (
        ["empty", "--preset", "study", "--lr-start", "0.2"],
        ("--preset study sets --lr-start to None; it conflicts with --lr-start 0.2",),
    ),
    (["empty", "--preset", "fast"], ("--preset must be one of study, got 'fast'",)),
    (["empty", "--tv-weight", "nan"], ("--tv-weight must be a finite number",)),
    (["empty", "--tv-weight", "-1"], ("--tv-weight must not be negative",)),
    (["empty", "--restarts", "0"], ("--restarts must be at least 1",)),
    (["empty", "--seed", "-1"], ("--seed must be in [0, 4294967295]",)),
    (["empty", "--round", "0"], ("--round must be at least 1",)),
    (["empty", "--client", "-1"], ("--client must not be negative",)),
    (["empty", "--chunk", "0"], ("--chunk must be at least 1",)),
    (["empty", "--threads", "0"], ("--threads must be at least 1",)),
    (["empty", "--iterations", "many"], ("argument --iterations: invalid int value",)),
    (["missing"], ("run folder missing does not exist",)),
    (["notes.txt"], ("run folder notes.txt is not a folder",)),
]
SYNTH_CASES: list[tuple[list[str], tuple[str, ...]]] = [
    (["--speakers", "0"], ("--speakers must be at least 1",)),
    (["--seed", "-1"], ("--seed must not be negative",)),
]
#: Each case's command line, as ``docs/reliability.md`` lists them.
CASES: list[tuple[list[str], tuple[str, ...]]] = [
    *((["simulate", *args], needles) for args, needles in SIMULATE_CASES),
    *((["audit", *args], needles) for args, needles in AUDIT_CASES),
    *((["data", "synth", *args], needles) for args, needles in SYNTH_CASES),
    *((["sweep", *args], needles) for args, needles in SWEEP_CASES),
]
# The same guarantee through a real process: exit code and no traceback, end to end.
SUBPROCESS_CASES = [
    case
    for case in CASES
    if case[0]
    in (
        ["simulate", "--lr", "nan"],
        ["simulate", "--cpus-per-client", "nan"],
        ["simulate", "--clients", "abc"],
        ["simulate", "--out", "/dev/null/x"],
        ["simulate", "--out", "old-run"],
        ["simulate", "--resume", "new-run"],
        ["audit", "empty", "--tv-weight", "nan"],
        ["audit", "notes.txt"],
        ["sweep", "bad-sweep.toml", "--out", "sweep"],
    )
]


#: What the cases' paths are, relative to the folder they run in (:func:`make_paths`).
PLACEHOLDERS = {
    "notes.txt": "a plain file",
    "empty": "an empty folder",
    "old-run": "a folder holding a run (a metrics.json)",
    "missing": "a path that does not exist",
    "new-run": "a run interrupted before its first round ended (a config.toml, no saved model)",
    "bad-sweep.toml": "a sweep file whose second variant has an unknown setting",
    "kws.safetensors": "a model file of the keyword CNN",
    "cut.safetensors": "a model file cut after 20 bytes",
    "evil.pth": "a pickle that runs code when unpickled (it would create a file named pwned)",
}


class _Evil:
    """Unpickled unsafely, this would create ``pwned`` in the working folder."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def make_paths(folder: Path) -> None:
    """Create :data:`PLACEHOLDERS` in ``folder``, where the cases then run."""
    (folder / "notes.txt").write_text("not a folder\n")
    (folder / "empty").mkdir(exist_ok=True)
    (folder / "old-run").mkdir(exist_ok=True)
    (folder / "old-run" / "metrics.json").write_text('{"rounds": []}\n')
    (folder / "new-run").mkdir(exist_ok=True)
    (folder / "new-run" / "config.toml").write_text("[simulate]\nrounds = 2\n")
    (folder / "base.toml").write_text("[simulate]\nrounds = 1\n")
    model = {"w": torch.zeros(3)}
    save_model_file(folder / "kws.safetensors", model, {"model": "kws-cnn"})
    (folder / "cut.safetensors").write_bytes((folder / "kws.safetensors").read_bytes()[:20])
    (folder / "evil.pth").write_bytes(pickle.dumps({"w": _Evil()}))
    (folder / "bad-sweep.toml").write_text(
        '[sweep]\nutility = "base.toml"\nleakage = "base.toml"\n\n'
        '[[variant]]\nname = "a"\n\n[[variant]]\nname = "b"\ndp = "local"\ndp-nois = 1\n'
    )


def main_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run :func:`fedspeech.cli.main` in-process; assert exit 2 and one error line; return it."""
    code: str | int | None
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("fedspeech: error: "), err
    return lines[0]


@pytest.mark.parametrize(("args", "needles"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line(
    args: list[str],
    needles: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_paths(tmp_path)
    monkeypatch.chdir(tmp_path)  # the cases' relative paths; a runs/<timestamp> would land here
    line = main_error(capsys, args)
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made
    assert not (tmp_path / "sweep").exists()  # a refused sweep writes nothing
    assert not (tmp_path / "pwned").exists()  # nothing in a checkpoint was executed


@pytest.mark.parametrize(
    ("args", "needles"), SUBPROCESS_CASES, ids=[" ".join(a) for a, _ in SUBPROCESS_CASES]
)
def test_bad_input_is_one_line_in_a_real_process(
    args: list[str], needles: tuple[str, ...], tmp_path: Path
) -> None:
    make_paths(tmp_path)
    proc = run_cli(*args, cwd=tmp_path)
    assert_one_line_error(proc, *needles)


def test_a_run_folder_is_left_alone_when_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "captures").mkdir(parents=True)
    main_error(capsys, ["simulate", "--out", str(run)])
    assert sorted(p.name for p in run.iterdir()) == ["captures"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = main_error(capsys, ["simulate", "--out", str(locked / "run")])
    finally:
        locked.chmod(0o755)
    assert f"cannot create run folder {locked / 'run'}" in line


def test_missing_data_root(tmp_path: Path) -> None:
    proc = run_cli(
        "simulate", "--dataset", "fsdd", "--data-root", str(tmp_path / "nope"), cwd=tmp_path
    )
    assert_one_line_error(proc, "does not exist", "nope")
    assert not any((tmp_path / "runs").glob("*"))  # a run folder made for it is removed


def test_empty_data_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    proc = run_cli(
        "simulate", "--dataset", "speech_commands", "--data-root", str(root), cwd=tmp_path
    )
    assert_one_line_error(proc, "no", str(root))


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("clients = 3\nnum_rounds = 4\n")
    proc = run_cli("simulate", "--config", str(cfg))
    assert_one_line_error(proc, "unknown config key 'num_rounds'", str(cfg))


def test_nan_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("lr = nan\n")  # valid TOML
    assert "--lr must be a finite number, got nan" in main_error(
        capsys, ["simulate", "--config", str(cfg)]
    )


@needs_fsdd
def test_more_clients_than_speakers(tmp_path: Path) -> None:
    proc = run_cli(
        "simulate",
        "--dataset",
        "fsdd",
        "--data-root",
        str(FSDD),
        "--clients",
        "7",
        "--out",
        str(tmp_path / "run"),
    )
    assert_one_line_error(proc, "7 clients but only 6 speakers")

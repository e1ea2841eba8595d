"""Scoring one capture: stage 2, pairing with the truth, the judges, the per-sample files.

Inside a batch the order of the samples cannot be identified from a gradient, so the scorer,
who knows the truth, pairs each reconstructed sample with a true one by a minimum-cost
assignment on feature MSE (Hungarian, :func:`pair`). Each pair is scored for label, F-MSE,
W-MSE, PESQ (NB, WB), STOI, speaker re-identification (a
:class:`~attacks.scoring.SpeakerVerifier` fitted once per audit on train-split clips,
threshold at its EER) and content (a :class:`~attacks.scoring.ContentClassifier` fitted once
on train-split clips, weights cached). The same waveform scores are computed for stage 2 run
on the *true* features ("from features"): the ceiling of what a perfect stage 1 would leak.
A raw-waveform run has no stage 2, hence no ceiling, and no judges.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from attacks.features import initial_features
from attacks.scoring import ContentClassifier, SpeakerVerifier, score_sample
from attacks.target import WAVEFORM, WAVEFORM_INIT_STD
from attacks.waveform import cmvn_prior, features_to_wave
from fedspeech.audit.cache import Stage1Result
from fedspeech.audit.outputs import (
    FF_PREFIX,
    GUESS_COLUMNS,
    GUESS_PREFIX,
    spectrogram_figure,
    write_wav,
)
from fedspeech.audit.selection import Job
from fedspeech.audit.settings import AuditSettings
from fedspeech.audit.speech import espeak_words
from fedspeech.audit.truth import Truth, WaveTruth
from fedspeech.errors import FedspeechError
from fedspeech.fileio import atomic_write_bytes
from fedspeech.frontends import MfccFrontend, build_frontend
from fedspeech.models import build_model

__all__ = ["Scorer", "build_scorer", "pair", "score_capture", "stage2_options"]

# A small corpus (a test run) needs more passes of the content classifier than a few epochs.
_CONTENT_MIN_STEPS = 300


class Scorer:
    """The truth side of a run and the judges fitted on it, built once per audit.

    Parameters
    ----------
    truth : Truth
        Original clips, true features and labels.
    settings : AuditSettings
        Which judges to fit, and how.
    out : Path
        The audit folder (the content classifier's weights are cached there).
    note : callable
        One-line progress notes.

    Attributes
    ----------
    info : dict
        What the judges report for ``summary.json`` (``speaker_eer``, ...).
    verifier : SpeakerVerifier or None
    classifier : ContentClassifier or None
    """

    def __init__(
        self, truth: Truth, settings: AuditSettings, out: Path, note: Callable[[str], None]
    ) -> None:
        self.truth = truth
        self.settings = settings
        self.info: dict[str, Any] = {}
        judged = not truth.waveform
        self.verifier = self._fit_verifier(note) if settings.speaker and judged else None
        self.classifier = (
            self._content_classifier(out, note) if settings.content and judged else None
        )

    def _fit_verifier(self, note: Callable[[str], None]) -> SpeakerVerifier:
        s, truth = self.settings, self.truth
        rng = np.random.default_rng(s.seed)
        by_speaker: dict[str, list[int]] = {}
        for i in truth.train.tolist():
            by_speaker.setdefault(truth.speakers[i], []).append(i)
        eligible = sorted(k for k, v in by_speaker.items() if len(v) >= 2)
        if len(eligible) < 2:
            raise FedspeechError(
                "speaker re-identification needs train clips of at least two speakers with "
                "two clips each; this corpus has not (use --no-speaker)"
            )
        chosen = sorted(
            rng.choice(
                eligible, size=min(s.verifier_speakers, len(eligible)), replace=False
            ).tolist()
        )
        clips: list[int] = []
        for spk in chosen:
            own = by_speaker[spk]
            clips += sorted(
                rng.choice(own, size=min(s.verifier_clips, len(own)), replace=False).tolist()
            )
        note(
            f"scoring: fitting the {s.speaker_model} speaker verifier on {len(clips)} clips "
            f"of {len(chosen)} speakers"
        )
        verifier = SpeakerVerifier(s.speaker_model).fit(
            list(truth.waves(clips)), [truth.speakers[i] for i in clips], seed=s.seed
        )
        self.info.update(
            speaker_eer=verifier.eer_,
            speaker_threshold=verifier.threshold_,
            speaker_pairs={"same": verifier.n_same_, "different": verifier.n_diff_},
            speaker_fit={"speakers": len(chosen), "clips": len(clips)},
        )
        return verifier

    def _content_classifier(self, out: Path, note: Callable[[str], None]) -> ContentClassifier:
        """Fit the keyword listener, or reuse the weights cached by an earlier audit."""
        s, truth = self.settings, self.truth
        assert truth.frontend is not None
        clips = truth.train
        if clips.size == 0:
            raise FedspeechError("content scoring needs train-split clips (use --no-content)")
        if clips.size > s.content_max_clips:
            rng = np.random.default_rng(s.seed)
            clips = np.sort(rng.choice(clips, size=s.content_max_clips, replace=False))
        ids = "\n".join(truth.clip_ids[i] for i in clips.tolist())
        expect = {
            "model": "kws-cnn",
            "frontend": truth.frontend_name,
            "frontend_kwargs": json.dumps(truth.frontend_kwargs, sort_keys=True),
            "epochs": str(s.content_epochs),
            "seed": str(s.seed),
            "clips": hashlib.blake2b(ids.encode(), digest_size=16).hexdigest(),
        }
        path = out / "content_classifier.safetensors"
        # A few epochs suffice for a corpus of thousands of clips; a small one (a test run)
        # needs more passes, so ask for at least _CONTENT_MIN_STEPS SGD steps.
        batch = 8 if clips.size < 1000 else 32
        steps_per_epoch = -(-int(clips.size) // batch)
        epochs = max(s.content_epochs, -(-_CONTENT_MIN_STEPS // steps_per_epoch))
        expect["epochs"], expect["batch_size"] = str(epochs), str(batch)
        clf = ContentClassifier(epochs=epochs, batch_size=batch, seed=s.seed)
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as fh:
                    meta = fh.metadata() or {}
                    state = {k: fh.get_tensor(k) for k in fh.keys()}
                if all(meta.get(k) == v for k, v in expect.items()):
                    net = build_model(
                        "kws-cnn",
                        num_classes=int(meta["num_classes"]),
                        input_shape=tuple(json.loads(meta["input_shape"])),
                    )
                    net.load_state_dict(state)
                    net.eval()
                    clf.model_, clf.frontend_ = net, truth.frontend
                    clf.train_accuracy_ = float(meta["train_accuracy"])
                    note("scoring: reusing the cached content classifier")
                    self.info["content_train_accuracy"] = clf.train_accuracy_
                    return clf
            except Exception:  # a damaged or stale cache is refitted
                pass
        note(f"scoring: fitting the content classifier on {clips.size} clips")
        clf.fit(truth.waves(clips), truth.labels[clips], truth.frontend)
        assert clf.model_ is not None
        with torch.no_grad():
            shape = truth.frontend(torch.zeros(1, truth.clip_samples)).shape[1:]
        meta = {
            **expect,
            "num_classes": str(int(truth.labels[clips].max()) + 1),
            "input_shape": json.dumps([int(shape[0]), int(shape[1])]),
            "train_accuracy": repr(float(clf.train_accuracy_)),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in clf.model_.state_dict().items()}
        atomic_write_bytes(path, save(state, metadata=meta))
        self.info["content_train_accuracy"] = clf.train_accuracy_
        return clf

    def judge(self, original: np.ndarray, wave: np.ndarray, label: int) -> dict[str, Any]:
        """Speaker and content scores of one waveform against its original."""
        out: dict[str, Any] = {}
        if self.verifier is not None:
            cos, same = self.verifier.reidentified(original, wave)
            out["speaker_cosine"], out["speaker_reidentified"] = float(cos), bool(same)
        if self.classifier is not None:
            pred = int(self.classifier.predict(wave[None])[0])
            out["content_predicted"], out["content_correct"] = pred, pred == int(label)
        return out


def build_scorer(
    run_dir: Path, out: Path, settings: AuditSettings, job: Job, note: Callable[[str], None]
) -> Scorer:
    """The :class:`Scorer` of a run whose captures look like ``job``."""
    truth = (
        WaveTruth(run_dir)
        if job.frontend == WAVEFORM
        else Truth(run_dir, job.frontend, job.frontend_kwargs, note)
    )
    return Scorer(truth, settings, out, note)


def pair(rec: np.ndarray, true: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-total-F-MSE pairing of reconstructed and true samples (Hungarian).

    Examples
    --------
    >>> pair(np.array([[0.0], [5.0]]), np.array([[4.0], [1.0]]))
    [(0, 1), (1, 0)]
    """
    # Imported here: scipy.optimize takes a third of a second to import, and the simulator
    # imports this package whether or not it audits.
    from scipy.optimize import linear_sum_assignment

    diff = rec[:, None].astype(np.float64) - true[None].astype(np.float64)
    cost = np.mean(diff * diff, axis=tuple(range(2, diff.ndim)))
    rows, cols = linear_sum_assignment(cost)
    return sorted(zip(rows.tolist(), cols.tolist(), strict=True))


def stage2_options(frontend: nn.Module) -> dict[str, Any]:
    """Keyword arguments of :func:`attacks.waveform.features_to_wave` for ``frontend``.

    For an MFCC front-end with CMVN, the attacker's guess of the statistics
    (:func:`attacks.waveform.cmvn_prior`: the stored table, or an estimate from
    :func:`~fedspeech.audit.speech.espeak_words` for other settings).
    """
    if isinstance(frontend, MfccFrontend) and bool(frontend.cmvn):
        return {"cmvn_stats": cmvn_prior(frontend, espeak_words)}
    return {}


def score_capture(
    job: Job,
    s1: Stage1Result,
    settings: AuditSettings,
    out: Path,
    scorer: Scorer | None,
) -> list[dict[str, Any]]:
    """Stage 2, files and scores of one capture; one row per reconstructed sample.

    Without a ``scorer`` (no ``truth/``) the rows hold the attack's own numbers only.
    """
    with warnings.catch_warnings():
        # PESQ finds no utterance in some short clips; the NaN it scores is counted in the
        # summary's n, one warning per pair would only bury the progress bar.
        warnings.filterwarnings("ignore", message=".*could not score", category=RuntimeWarning)
        return _score_capture_quietly(job, s1, settings, out, scorer)


def _score_guess(
    s1: Stage1Result,
    settings: AuditSettings,
    frontend: nn.Module | None,
    options: Mapping[str, Any],
    true_feats: np.ndarray,
    pairs: list[tuple[int, int]],
    originals: Mapping[int, np.ndarray],
    rows: list[dict[str, Any]],
) -> None:
    """Add the random guess's scores (``guess_*``) to ``rows``, in place.

    The guess is where stage 1 starts (:func:`attacks.features.initial_features`, restart 0
    of the audit's seed): an attacker who learned nothing from the update ends there. It
    goes through the same stage 2 (none for a ``frontend`` of ``None``: a raw-waveform run),
    is paired with the true clips the same way (:func:`pair`), and each of its samples is
    scored on the row of the true clip it was paired with.
    """
    std = 1.0 if frontend is not None else WAVEFORM_INIT_STD
    guess = initial_features(s1.features.shape, settings.seed, 0, "cpu", std).numpy()
    waves = guess
    if frontend is not None:
        waves = np.atleast_2d(
            features_to_wave(
                guess, frontend, n_iter=settings.griffin_lim_iters, seed=settings.seed, **options
            )
        )
    row_of = {j: i for i, j in pairs}
    for g, j in pair(guess, true_feats):
        i = row_of.get(j)
        if i is None or i not in originals:
            continue  # a true clip no reconstruction was paired with
        scores = score_sample(
            true_feats[j], guess[g], originals[i], waves[g], metrics=GUESS_COLUMNS
        )
        rows[i].update({GUESS_PREFIX + k: v for k, v in scores.items()})


def _score_capture_quietly(
    job: Job,
    s1: Stage1Result,
    settings: AuditSettings,
    out: Path,
    scorer: Scorer | None,
) -> list[dict[str, Any]]:
    """:func:`score_capture` without the warnings filter."""
    waveform = job.frontend == WAVEFORM
    options: Mapping[str, Any] = {}
    if waveform:  # stage 1 recovered the waveform itself: no stage 2
        rec_waves = np.atleast_2d(s1.features)
    else:
        frontend = build_frontend(job.frontend, **job.frontend_kwargs)
        options = stage2_options(frontend)
        rec_waves = np.atleast_2d(
            features_to_wave(
                s1.features,
                frontend,
                n_iter=settings.griffin_lim_iters,
                seed=settings.seed,
                **options,
            )
        )
    base = {
        "capture": job.name,
        "round": job.server_round,
        "client": job.client_id,
        "matching_loss": s1.matching_loss,
        "iterations": s1.iterations,
    }
    rows = [
        {**base, "index": i, "label_recovered": int(s1.labels[i])} for i in range(len(rec_waves))
    ]
    originals: dict[int, np.ndarray] = {}
    from_features: dict[int, np.ndarray] = {}
    if scorer is not None:
        truth = scorer.truth
        positions = truth.positions(job.name)
        true_feats = np.asarray(truth.features[positions], dtype=np.float32)
        if true_feats.shape[1:] != s1.features.shape[1:]:
            raise FedspeechError(
                f"capture {job.name}: reconstructed features {s1.features.shape[1:]} do not "
                f"match the run's features {true_feats.shape[1:]}"
            )
        for row in rows:
            row["update_clips"] = len(positions)
        pairs = pair(s1.features, true_feats)
        matched = [j for _, j in pairs]
        ff_waves = (
            None
            if waveform
            else np.atleast_2d(
                features_to_wave(
                    true_feats[matched],
                    frontend,
                    n_iter=settings.griffin_lim_iters,
                    seed=settings.seed,
                    **options,
                )
            )
        )
        for k, (i, j) in enumerate(pairs):
            pos = positions[j]
            original = truth.waves([pos])[0]
            label = int(truth.labels[pos])
            row = rows[i]
            row.update(clip_id=truth.clip_ids[pos], speaker=truth.speakers[pos], label=label)
            row["label_correct"] = int(s1.labels[i]) == label
            row.update(score_sample(true_feats[j], s1.features[i], original, rec_waves[i]))
            row.update(scorer.judge(original, rec_waves[i], label))
            originals[i] = original
            if ff_waves is None:
                continue
            ff = score_sample(
                None, None, original, ff_waves[k], metrics=("w_mse", "pesq_nb", "pesq_wb", "stoi")
            )
            ff.update(scorer.judge(original, ff_waves[k], label))
            row.update({FF_PREFIX + key: value for key, value in ff.items()})
            from_features[i] = ff_waves[k]
        guess_frontend = None if waveform else frontend
        _score_guess(s1, settings, guess_frontend, options, true_feats, pairs, originals, rows)
    for i, wave in enumerate(rec_waves):
        stem = f"{job.name}_{i}"
        wav = out / "wav"
        write_wav(wav / f"{stem}_reconstruction.wav", wave, peak=0.9)
        if i in originals:
            write_wav(wav / f"{stem}_original.wav", originals[i])
        if i in from_features:
            write_wav(wav / f"{stem}_from_features.wav", from_features[i], peak=0.9)
        spectrogram_figure(
            out / "spectrograms" / f"{stem}.png",
            [
                ("original", originals.get(i)),
                ("from gradients", wave),
                ("from features", from_features.get(i)),
            ],
            title=f"{job.name} sample {i}"
            + (f": {rows[i]['clip_id']}" if "clip_id" in rows[i] else ""),
        )
    return rows

"""The privacy audit of a run folder: attack every capture, then score what leaked.

:func:`audit_run` plays the honest-but-curious server on the captures a
``fedspeech simulate --out RUN`` run kept, and measures the leakage against the truth:

* **Attack side** -- reads ``RUN/captures/`` only (never ``truth/`` or ``data/``): labels
  from the gradient (:func:`attacks.labels.recover_labels`), features by gradient matching
  (stage 1, :func:`attacks.features.reconstruct`, ``chunk`` captures optimised together in
  this process or split over ``workers`` processes, or one Ray task per capture with
  ``ray_address``), waveform by NNLS + Griffin-Lim (stage 2,
  :func:`attacks.waveform.features_to_wave`).
* **Scoring side** -- only when ``RUN/truth/`` exists: the original clips (the corpus
  reloaded from ``RUN/config.toml``, peak-normalised as the run was) and the true features
  (``RUN/data/features.npy``). Inside a batch the order of the samples cannot be identified
  from a gradient, so the scorer, who knows the truth, pairs each reconstructed sample with
  a true one by a minimum-cost assignment on feature MSE (Hungarian,
  :func:`scipy.optimize.linear_sum_assignment`). Each pair is scored for label, F-MSE,
  W-MSE, PESQ (NB, WB), STOI, speaker re-identification (a :class:`SpeakerVerifier` fitted
  once per audit on train-split clips, threshold at its EER) and content (a
  :class:`ContentClassifier` fitted once on train-split clips, weights cached). The same
  waveform scores are computed for stage 2 run on the *true* features ("from features"):
  the ceiling of what a perfect stage 1 would leak.
* **Raw-waveform runs** (``--task sdd``, captures with ``frontend = "waveform"``): stage 1
  recovers the waveform itself and stage 2 is skipped; the truth is the run's own
  ``data/features.npy`` (the clips as the clients read them), there is no "from features"
  ceiling, and the speaker and content judges are not fitted.

Results go to ``RUN/audit/``: ``leakage.csv`` (one row per sample), ``summary.json``,
``wav/``, ``spectrograms/``, ``summary.png`` and, for several rounds,
``leakage_by_round.png``. Each capture's stage-1 result (``reconstructions/``) and scores
(``samples/``) are saved as soon as they exist, keyed by the settings they depend on and a
hash of the capture, so an interrupted or repeated audit only redoes what is missing or
stale, and a change of scoring options re-scores without re-running stage 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.report import (
    FEATURE_COLUMNS,
    FF_PREFIX,
    LEAKAGE_COLUMNS,
    SUMMARY_METRICS,
    clean_json,
    leakage_by_round_plot,
    spectrogram_figure,
    summary_plot,
    write_csv,
    write_json,
    write_wav,
)
from attacks.target import WAVEFORM, AttackTarget, target_from_capture
from fedspeech.capture import CaptureFormatError, load_capture, load_truth
from fedspeech.errors import ConfigError, FedspeechError
from fedspeech.fileio import atomic_write_bytes

__all__ = ["AUDIT_DIR", "AuditSettings", "audit_run", "find_captures"]

AUDIT_DIR = "audit"
SAMPLE_RATE = 16_000
# Bump when the layout of the per-capture files changes, so old ones are recomputed.
_CACHE_VERSION = 1
_NAME = re.compile(r"^r(\d+)_c(\d+)$")
_CONTENT_MIN_STEPS = 300


@dataclass
class AuditSettings:
    """What to attack and how.

    Attributes
    ----------
    iterations, restarts, lr, tv_weight, tv_reduction, distance
        Stage 1 (:func:`attacks.features.reconstruct`): step cap per restart, restarts,
        Adam step size, total-variation weight and reduction ("mean" per entry, as
        ``inversefed``, or "sum"), gradient distance ("l2" or "cosine").
    lr_start : float or None
        None (the study's constant step size) or a larger first step size, decreased at
        plateaus down to ``lr`` (faster; see :func:`attacks.features.reconstruct`).
    extra_restarts : int
        Restarts beyond ``restarts`` (0, the study's, by default) for a capture none of whose
        restarts converged, within ``restarts * iterations`` steps per capture.
    griffin_lim_iters : int
        Stage 2 Griffin-Lim iterations.
    label_method : str
        :func:`attacks.labels.recover_labels` method ("auto", "idlg", "count").
    speaker_model : str
        Speaker encoder for re-identification ("resemblyzer" or "ecapa").
    content, speaker : bool
        Score content (keyword classifier) and speaker re-identification.
    rounds, clients : list[int] or None
        Audit only these rounds / client ids (None: all).
    max_samples : int or None
        Stop after this many reconstructed samples, counted over whole captures in
        ``rNNN_cNNNN`` order (a batch capture is never split, so the count can exceed it by
        less than one batch).
    chunk : int
        Captures whose stage 1 runs together in one batched optimisation.
    seed : int
        Seeds stage 1's starts, Griffin-Lim's phases and the scorers' fitting.
    ray_address : str or None
        Run stage 1 as one Ray task per capture on this cluster ("auto", "host:port",
        "ray://...", or "local" to start a private one); None runs in this process.
    threads : int or None
        Torch threads in this process; None uses every core (``os.cpu_count()``). On a
        machine shared with other jobs, 1 can be much faster.
    workers : int
        Processes stage 1 splits each chunk over, one torch thread each
        (:mod:`attacks.features.workers`); 1 runs it in this process with ``threads``.
    content_epochs : int
        Epochs of the content classifier.
    verifier_speakers, verifier_clips : int
        The speaker verifier's threshold is fitted on up to this many train-split speakers
        with up to this many clips each.
    content_max_clips : int
        Train-split clips the content classifier is fitted on, at most (a seeded draw).
    """

    iterations: int = 8000
    restarts: int = 2
    lr: float = 0.01
    lr_start: float | None = None
    extra_restarts: int = 0
    tv_weight: float = 1e-3
    tv_reduction: str = "mean"
    distance: str = "l2"
    griffin_lim_iters: int = 32
    label_method: str = "auto"
    speaker_model: str = "resemblyzer"
    content: bool = True
    speaker: bool = True
    rounds: list[int] | None = None
    clients: list[int] | None = None
    max_samples: int | None = None
    chunk: int = 32
    seed: int = 0
    ray_address: str | None = None
    threads: int | None = None
    workers: int = 1
    content_epochs: int = 8
    verifier_speakers: int = 30
    verifier_clips: int = 4
    content_max_clips: int = 5000

    def validate(self) -> None:
        """Raise :class:`ConfigError` on settings no audit could use."""
        from attacks.features import DISTANCES, TV_REDUCTIONS
        from attacks.labels import LABEL_METHODS

        positive = {
            "iterations": self.iterations,
            "restarts": self.restarts,
            "griffin-lim-iters": self.griffin_lim_iters,
            "chunk": self.chunk,
            "content-epochs": self.content_epochs,
            "verifier-speakers": self.verifier_speakers,
            "content-max-clips": self.content_max_clips,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        if self.verifier_clips < 2:
            raise ConfigError(f"verifier_clips must be at least 2, got {self.verifier_clips}")
        if self.extra_restarts < 0:
            raise ConfigError(f"--extra-restarts must not be negative, got {self.extra_restarts}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"--max-samples must be at least 1, got {self.max_samples}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.lr_start is not None and not self.lr_start >= self.lr:
            raise ConfigError(f"--lr-start must be at least --lr ({self.lr}), got {self.lr_start}")
        if self.tv_weight < 0:
            raise ConfigError(f"--tv-weight must not be negative, got {self.tv_weight}")
        DISTANCES.get(self.distance)
        TV_REDUCTIONS.get(self.tv_reduction)
        if self.label_method != "auto":
            LABEL_METHODS.get(self.label_method)
        if self.speaker:
            from attacks.scoring import SPEAKER_MODELS

            SPEAKER_MODELS.get(self.speaker_model)

    def stage1_key(self) -> dict[str, Any]:
        """The settings a stage-1 reconstruction depends on."""
        keys = ("iterations", "restarts", "lr", "tv_weight", "distance", "label_method", "seed")
        key = {"version": _CACHE_VERSION, **{k: getattr(self, k) for k in keys}}
        if self.lr_start is not None:  # absent by default, so older caches stay valid
            key["lr_start"] = self.lr_start
        if self.extra_restarts:
            key["extra_restarts"] = self.extra_restarts
        # Caches from before the option existed summed the total variation.
        if self.tv_reduction != "sum":
            key["tv_reduction"] = self.tv_reduction
        # Stage 1's loop changed (2: patience 600, float64 matching loss of factored layers;
        # 3: the plateau clock no longer restarts when a batch-mate finishes, patience 1200):
        # reconstructions made before are made again.
        key["stage1_loop"] = 3
        return key

    def scoring_key(self, scored: bool) -> dict[str, Any]:
        """The settings a capture's scored rows depend on (stage 1's included)."""
        key = {**self.stage1_key(), "griffin_lim_iters": self.griffin_lim_iters}
        # PESQ on 16-bit PCM (attacks.scoring.pcm16): rows scored on floats are rescored.
        key["pesq_input"] = "pcm16"
        key["scored"] = scored
        if scored:
            key["speaker"] = self.speaker_model if self.speaker else None
            if self.speaker:
                key["verifier"] = [self.verifier_speakers, self.verifier_clips]
            key["content"] = [self.content_epochs, self.content_max_clips] if self.content else None
        return key


@dataclass
class _Job:
    """One selected capture."""

    name: str
    path: Path
    server_round: int
    client_id: int
    digest: str = ""
    batch_size: int = 0
    frontend: str = "mel"
    frontend_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Stage1:
    """What stage 1 produced for one capture (saved under ``reconstructions/``)."""

    features: np.ndarray  # (B, F, T) float32
    labels: np.ndarray  # (B,) int64, recovered
    matching_loss: float
    iterations: int
    restarts_run: int
    seconds: float


# --------------------------------------------------------------------------- selection
def find_captures(
    run_dir: Path, rounds: Sequence[int] | None = None, clients: Sequence[int] | None = None
) -> list[tuple[str, Path, int, int]]:
    """Captures of a run folder, optionally filtered, in ``rNNN_cNNNN`` order.

    Returns
    -------
    list of (name, path, round, client)
        Files under ``run_dir/captures/*.safetensors``. A file not named ``rNNN_cNNNN`` is
        opened to read its round and client.

    Raises
    ------
    CaptureFormatError
        A file not named ``rNNN_cNNNN`` that is not a readable capture.
    """
    folder = Path(run_dir) / "captures"
    found = []
    paths = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    for path in paths:
        if not path.is_file() or path.name.startswith("."):
            continue
        m = _NAME.match(path.stem)
        if m:
            rnd, cid = int(m.group(1)), int(m.group(2))
        else:
            cap = load_capture(path)
            rnd, cid = cap.server_round, cap.client_id
        if rounds is not None and rnd not in rounds:
            continue
        if clients is not None and cid not in clients:
            continue
        found.append((path.stem, path, rnd, cid))
    found.sort(key=lambda item: (item[2], item[3], item[0]))
    return found


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_target(job: _Job) -> AttackTarget:
    return target_from_capture(load_capture(job.path), job.name)


# ------------------------------------------------------------------------ resume files
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _load_scored(out: Path, job: _Job, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The saved results of ``job`` if they were made from this capture with ``key``."""
    data = _read_json(out / "samples" / f"{job.name}.json")
    if data is None or data.get("key") != key or data.get("digest") != job.digest:
        return None
    if not isinstance(data.get("rows"), list):
        return None
    return data


def _save_stage1(path: Path, job: _Job, key: Mapping[str, Any], s1: _Stage1) -> None:
    from safetensors.torch import save

    meta = {
        "key": json.dumps(key, sort_keys=True),
        "digest": job.digest,
        "frontend": job.frontend,
        "frontend_kwargs": json.dumps(job.frontend_kwargs),
        "matching_loss": repr(float(s1.matching_loss)),
        "iterations": str(int(s1.iterations)),
        "restarts_run": str(int(s1.restarts_run)),
        "seconds": repr(float(s1.seconds)),
    }
    tensors = {
        "features": torch.from_numpy(np.ascontiguousarray(s1.features, dtype=np.float32)),
        "labels": torch.from_numpy(np.ascontiguousarray(s1.labels, dtype=np.int64)),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _load_stage1(path: Path, job: _Job, key: Mapping[str, Any]) -> _Stage1 | None:
    """A saved reconstruction of ``job`` made with ``key``, or None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("key") != json.dumps(key, sort_keys=True):
                return None
            if meta.get("digest") != job.digest:
                return None
            features = fh.get_tensor("features").numpy()
            labels = fh.get_tensor("labels").numpy()
        return _Stage1(
            features=features,
            labels=labels,
            matching_loss=float(meta["matching_loss"]),
            iterations=int(meta["iterations"]),
            restarts_run=int(meta["restarts_run"]),
            seconds=float(meta["seconds"]),
        )
    except Exception:  # a damaged cache file is recomputed, never fatal
        return None


# ----------------------------------------------------------------------------- stage 1
def _reconstruct_kwargs(settings: AuditSettings) -> dict[str, Any]:
    return {
        "iterations": settings.iterations,
        "restarts": settings.restarts,
        "lr": settings.lr,
        "lr_start": settings.lr_start,
        "extra_restarts": settings.extra_restarts,
        "tv_weight": settings.tv_weight,
        "tv_reduction": settings.tv_reduction,
        "distance": settings.distance,
        "seed": settings.seed,
    }


def _to_stage1(rec: Any) -> _Stage1:
    return _Stage1(
        features=rec.features.detach().cpu().numpy().astype(np.float32),
        labels=rec.labels.detach().cpu().numpy().astype(np.int64),
        matching_loss=float(rec.matching_loss),
        iterations=int(rec.iterations),
        restarts_run=int(rec.restarts_run),
        seconds=float(rec.seconds),
    )


def _stage1_local(
    jobs: Sequence[_Job],
    settings: AuditSettings,
    note: Callable[[str], None],
    save: Callable[[_Job, _Stage1], None] | None = None,
) -> Iterator[tuple[_Job, _Stage1]]:
    """Stage 1 of ``jobs``, ``settings.chunk`` captures per batched optimisation.

    ``save`` gets each capture's result as soon as it is done, before the rest of its chunk,
    so that an interrupted audit keeps it.
    """
    from attacks.features import reconstruct
    from attacks.labels import recover_labels

    kwargs = _reconstruct_kwargs(settings)
    n_chunks = -(-len(jobs) // settings.chunk)
    for k in range(n_chunks):
        chunk = list(jobs[k * settings.chunk : (k + 1) * settings.chunk])
        # Loaded per chunk: a capture holds two copies of the model, too many to keep all.
        targets = [_load_target(job) for job in chunk]
        labels = [recover_labels(t, settings.label_method) for t in targets]
        note(f"stage 1: chunk {k + 1}/{n_chunks} ({len(chunk)} captures)")

        def on_result(i: int, rec: Any, chunk: list[_Job] = chunk) -> None:
            if save is not None:
                save(chunk[i], _to_stage1(rec))

        recs = reconstruct(targets, labels, on_result=on_result, workers=settings.workers, **kwargs)
        del targets
        for job, rec in zip(chunk, recs, strict=True):
            yield job, _to_stage1(rec)


def _ray_task(target: AttackTarget, labels: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """Body of one Ray task: stage 1 of one capture on one thread."""
    from attacks.features import reconstruct

    # Ray reserves one CPU per task; more threads would oversubscribe the node.
    torch.set_num_threads(1)
    return reconstruct([target], [labels], **kwargs)[0]


def _stage1_ray(
    jobs: Sequence[_Job], settings: AuditSettings, note: Callable[[str], None]
) -> Iterator[tuple[_Job, _Stage1]]:
    """Stage 1 of ``jobs`` as one Ray task per capture, yielded as they finish."""
    import logging

    import ray

    from attacks.labels import recover_labels

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        # Ray warns on every task that it will stop overriding accelerator variables.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        address = None if settings.ray_address == "local" else settings.ray_address
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FedspeechError(
                f"cannot connect to the Ray cluster at {settings.ray_address!r} ({exc})"
            ) from None
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_ray_task)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # Bounded in flight: each queued task holds a capture in the object store.
        limit = max(2 * cpus, 1)
        note(f"stage 1: {len(jobs)} Ray tasks on {cpus} CPUs")
        kwargs = _reconstruct_kwargs(settings)
        pending = list(jobs)
        inflight: dict[Any, _Job] = {}
        while pending or inflight:
            while pending and len(inflight) < limit:
                job = pending.pop(0)
                target = _load_target(job)
                labels = recover_labels(target, settings.label_method)
                inflight[remote.remote(target, labels, kwargs)] = job
                del target
            ready, _ = ray.wait(list(inflight), num_returns=1)
            job = inflight.pop(ready[0])
            yield job, _to_stage1(ray.get(ready[0]))
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- scoring
class _Scorer:
    """The truth side: original clips, true features, the speaker and content judges."""

    def __init__(
        self,
        run_dir: Path,
        out: Path,
        settings: AuditSettings,
        frontend: str,
        frontend_kwargs: Mapping[str, Any],
        note: Callable[[str], None],
    ) -> None:
        from fedspeech.config import SimConfig
        from fedspeech.frontends import build_frontend
        from fedspeech.tasks.kws import resolve_corpus
        from fedspeech.tasks.prepare import peak_normalize

        self.run_dir = run_dir
        self.settings = settings
        cfg_path = run_dir / "config.toml"
        feat_path = run_dir / "data" / "features.npy"
        for needed in (cfg_path, feat_path):
            if not needed.is_file():
                raise FedspeechError(
                    f"run folder {run_dir} has truth/ but no {needed.name} "
                    f"({needed}); scoring needs it"
                )
        cfg = SimConfig.from_toml(cfg_path).updated({"progress": False})
        try:
            self.features = np.load(feat_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FedspeechError(f"cannot read {feat_path} ({exc})") from None
        note(f"scoring: loading the {cfg.dataset} corpus")
        corpus = resolve_corpus(cfg)
        if len(corpus) != self.features.shape[0]:
            raise FedspeechError(
                f"the {cfg.dataset} dataset changed since the run: {len(corpus)} clips now, "
                f"{self.features.shape[0]} in {feat_path}"
            )
        # Normalised on access, clip by clip (the gain is per clip): no second corpus copy.
        self._waves = corpus.waveforms
        self._normalize = peak_normalize if cfg.normalize == "peak" else None
        self.labels = np.asarray(corpus.labels, dtype=np.int64)
        self.clip_ids = list(corpus.clip_ids)
        self.speakers = [str(s) for s in corpus.speakers]
        self.train = np.array(
            [i for i, s in enumerate(corpus.split) if s == "train"], dtype=np.int64
        )
        self.frontend_name = frontend
        self.frontend_kwargs = dict(frontend_kwargs)
        self.frontend = build_frontend(frontend, **self.frontend_kwargs)
        self.info: dict[str, Any] = {}
        self.verifier = self._fit_verifier(note) if settings.speaker else None
        self.classifier = self._content_classifier(out, note) if settings.content else None

    def waves(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Original clips ``(n, samples)`` float32 at ``positions``, as the run heard them."""
        x = np.asarray(self._waves[np.asarray(positions, dtype=np.int64)], dtype=np.float32)
        return self._normalize(x) if self._normalize is not None else x

    def _fit_verifier(self, note: Callable[[str], None]) -> Any:
        from attacks.scoring import SpeakerVerifier

        s = self.settings
        rng = np.random.default_rng(s.seed)
        by_speaker: dict[str, list[int]] = {}
        for i in self.train.tolist():
            by_speaker.setdefault(self.speakers[i], []).append(i)
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
            list(self.waves(clips)), [self.speakers[i] for i in clips], seed=s.seed
        )
        self.info.update(
            speaker_eer=verifier.eer_,
            speaker_threshold=verifier.threshold_,
            speaker_pairs={"same": verifier.n_same_, "different": verifier.n_diff_},
            speaker_fit={"speakers": len(chosen), "clips": len(clips)},
        )
        return verifier

    def _content_classifier(self, out: Path, note: Callable[[str], None]) -> Any:
        """Fit the keyword listener, or reuse the weights cached by an earlier audit."""
        from safetensors import safe_open
        from safetensors.torch import save

        from attacks.scoring import ContentClassifier
        from fedspeech.models import build_model

        s = self.settings
        clips = self.train
        if clips.size == 0:
            raise FedspeechError("content scoring needs train-split clips (use --no-content)")
        if clips.size > s.content_max_clips:
            rng = np.random.default_rng(s.seed)
            clips = np.sort(rng.choice(clips, size=s.content_max_clips, replace=False))
        ids = "\n".join(self.clip_ids[i] for i in clips.tolist())
        expect = {
            "model": "kws-cnn",
            "frontend": self.frontend_name,
            "frontend_kwargs": json.dumps(self.frontend_kwargs, sort_keys=True),
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
                    clf.model_, clf.frontend_ = net, self.frontend
                    clf.train_accuracy_ = float(meta["train_accuracy"])
                    note("scoring: reusing the cached content classifier")
                    self.info["content_train_accuracy"] = clf.train_accuracy_
                    return clf
            except Exception:  # a damaged or stale cache is refitted
                pass
        note(f"scoring: fitting the content classifier on {clips.size} clips")
        clf.fit(self.waves(clips), self.labels[clips], self.frontend)
        assert clf.model_ is not None
        with torch.no_grad():
            shape = self.frontend(torch.zeros(1, self._waves.shape[1])).shape[1:]
        meta = {
            **expect,
            "num_classes": str(int(self.labels[clips].max()) + 1),
            "input_shape": json.dumps([int(shape[0]), int(shape[1])]),
            "train_accuracy": repr(float(clf.train_accuracy_)),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in clf.model_.state_dict().items()}
        atomic_write_bytes(path, save(state, metadata=meta))
        self.info["content_train_accuracy"] = clf.train_accuracy_
        return clf

    def truth_positions(self, job: _Job) -> tuple[list[int], dict[str, Any]]:
        """Corpus positions behind a capture (distinct, first-seen order), checked."""
        truth = load_truth(self.run_dir / "truth" / f"{job.name}.json")
        positions: list[int] = []
        try:
            for batch in truth["batches"]:
                for pos, clip in zip(batch["positions"], batch["clip_ids"], strict=True):
                    pos = int(pos)
                    if not 0 <= pos < len(self.clip_ids) or self.clip_ids[pos] != clip:
                        have = self.clip_ids[pos] if 0 <= pos < len(self.clip_ids) else "nothing"
                        raise FedspeechError(
                            f"the dataset changed since the run: truth of {job.name} has clip "
                            f"{clip!r} at position {pos}, the corpus now {have!r}"
                        )
                    if pos not in positions:
                        positions.append(pos)
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureFormatError(f"ground truth of {job.name} is malformed ({exc})") from None
        if not positions:
            raise CaptureFormatError(f"ground truth of {job.name} lists no clips")
        return positions, truth

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


class _WaveScorer(_Scorer):
    """The truth side of a raw-waveform (``--task sdd``) run: the clips the run trained on.

    The run's ``data/features.npy`` holds the waveforms themselves, exactly as the clients
    read them, so nothing is reloaded and no stage 2 ceiling exists (a perfect stage 1 is
    the clip). The speaker and content judges are not fitted (see :func:`audit_run`).
    """

    def __init__(self, run_dir: Path, settings: AuditSettings) -> None:
        data = run_dir / "data"
        self.run_dir = run_dir
        self.settings = settings
        try:
            self.features = np.load(data / "features.npy", mmap_mode="r", allow_pickle=False)
            self.labels = np.load(data / "labels.npy", allow_pickle=False).astype(np.int64)
            index = json.loads((data / "index.json").read_text())
            self.clip_ids = [str(c) for c in index["clip_ids"]]
            self.speakers = [str(s) for s in index["speakers"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FedspeechError(
                f"run folder {run_dir} has truth/ but its data/ cannot be read ({exc}); "
                "scoring needs data/features.npy, labels.npy and index.json"
            ) from None
        if not len(self.clip_ids) == len(self.labels) == self.features.shape[0]:
            raise FedspeechError(f"{data} is inconsistent: its files list different clip counts")
        self.info: dict[str, Any] = {}
        self.verifier = None
        self.classifier = None

    def waves(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The clips ``(n, samples)`` float32 at ``positions``."""
        return np.asarray(self.features[np.asarray(positions, dtype=np.int64)], dtype=np.float32)


def _pair(rec: np.ndarray, true: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-total-F-MSE pairing of reconstructed and true samples (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    diff = rec[:, None].astype(np.float64) - true[None].astype(np.float64)
    cost = np.mean(diff * diff, axis=tuple(range(2, diff.ndim)))
    rows, cols = linear_sum_assignment(cost)
    return sorted(zip(rows.tolist(), cols.tolist(), strict=True))


def _score_capture(
    job: _Job,
    s1: _Stage1,
    settings: AuditSettings,
    out: Path,
    scorer: _Scorer | None,
) -> list[dict[str, Any]]:
    """Stage 2, files and scores of one capture; one row per reconstructed sample."""
    with warnings.catch_warnings():
        # PESQ finds no utterance in some short clips; the NaN it scores is counted in the
        # summary's n, one warning per pair would only bury the progress bar.
        warnings.filterwarnings("ignore", message=".*could not score", category=RuntimeWarning)
        return _score_capture_quietly(job, s1, settings, out, scorer)


def _score_capture_quietly(
    job: _Job,
    s1: _Stage1,
    settings: AuditSettings,
    out: Path,
    scorer: _Scorer | None,
) -> list[dict[str, Any]]:
    """:func:`_score_capture` without the warnings filter."""
    from attacks.scoring import score_sample
    from attacks.waveform import features_to_wave
    from fedspeech.frontends import build_frontend

    waveform = job.frontend == WAVEFORM
    if waveform:  # stage 1 recovered the waveform itself: no stage 2
        rec_waves = np.atleast_2d(s1.features)
    else:
        frontend = build_frontend(job.frontend, **job.frontend_kwargs)
        rec_waves = np.atleast_2d(
            features_to_wave(
                s1.features, frontend, n_iter=settings.griffin_lim_iters, seed=settings.seed
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
        positions, _ = scorer.truth_positions(job)
        true_feats = np.asarray(scorer.features[positions], dtype=np.float32)
        if true_feats.shape[1:] != s1.features.shape[1:]:
            raise FedspeechError(
                f"capture {job.name}: reconstructed features {s1.features.shape[1:]} do not "
                f"match the run's features {true_feats.shape[1:]}"
            )
        pairs = _pair(s1.features, true_feats)
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
                )
            )
        )
        for k, (i, j) in enumerate(pairs):
            pos = positions[j]
            original = scorer.waves([pos])[0]
            label = int(scorer.labels[pos])
            row = rows[i]
            row.update(clip_id=scorer.clip_ids[pos], speaker=scorer.speakers[pos], label=label)
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


# ----------------------------------------------------------------------------- summary
def _summarize(
    rows: Sequence[Mapping[str, Any]], settings: AuditSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``from_gradients`` and ``from_features`` statistics of the scored rows."""
    from attacks.scoring import summarize

    # A judge that was switched off scores nothing: its metric is left out, not NaN.
    off = {"speaker_reid_rate"} if not settings.speaker else set()
    off |= {"content_rate"} if not settings.content else set()

    def stats(prefix: str, with_features: bool) -> dict[str, Any]:
        table: list[dict[str, float]] = []
        for row in rows:
            if "label" not in row:
                continue  # a reconstructed sample left without a true partner
            entry: dict[str, float] = {}
            for metric, (col, ff) in SUMMARY_METRICS.items():
                if metric in off or (with_features and not ff):
                    continue
                value = row.get(prefix + col)
                entry[metric] = np.nan if value is None else float(value)
            table.append(entry)
        return summarize(table)

    # A raw-waveform run has no stage 2, hence no "from features" ceiling.
    has_ff = any(key.startswith(FF_PREFIX) for row in rows for key in row)
    return stats("", False), (stats(FF_PREFIX, True) if has_ff else {})


def _restore_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read back from JSON: null -> NaN for the float metrics."""
    out = dict(row)
    floats = {"f_mse", "w_mse", "pesq_nb", "pesq_wb", "stoi", "speaker_cosine", "matching_loss"}
    for key in list(out):
        bare = key[len(FF_PREFIX) :] if key.startswith(FF_PREFIX) else key
        if bare in floats and out[key] is None:
            out[key] = float("nan")
    return out


# ---------------------------------------------------------------------------- the audit
def _is_waveform_run(run_dir: Path) -> bool:
    """True for a ``--task sdd`` run: its models read raw waveforms."""
    from fedspeech.config import read_toml

    config = run_dir / "config.toml"
    return config.is_file() and read_toml(config).get("task") == "sdd"


def audit_run(
    run_dir: Path,
    settings: AuditSettings,
    *,
    progress: bool = True,
    scorers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attack every selected capture of a run folder and score the leakage.

    Parameters
    ----------
    run_dir : Path
        A folder written by ``fedspeech simulate --out``.
    settings : AuditSettings
        What to attack and how.
    progress : bool
        A tqdm bar over captures and one-line notes on stderr.
    scorers : dict, optional
        A cache kept by the caller between calls on the same run folder (``fedspeech
        simulate --audit`` audits one round at a time): the truth side (corpus, speaker
        verifier, content classifier) is then loaded and fitted once, not every call.

    Returns
    -------
    dict
        The content of ``audit/summary.json``: ``from_gradients`` and ``from_features``,
        each ``{metric: {"mean", "std", "n"}}`` (empty without ``truth/``), plus
        ``settings``, ``captures``, ``samples``, ``scored``, ``speaker_eer`` and
        ``speaker_threshold`` (speaker scoring), ``content_train_accuracy``, ``stage1``
        (captures reconstructed, re-scored and reused in this call) and ``seconds``.

    Raises
    ------
    FedspeechError
        Missing run folder or captures, a capture that is not a readable capture
        (:class:`CaptureFormatError`) or does not fit its model, bad settings, or a
        dataset that changed since the run.
    """
    t_start = time.perf_counter()
    settings.validate()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedspeechError(f"run folder {run_dir} does not exist")
    waveform_run = _is_waveform_run(run_dir)
    if waveform_run and (settings.speaker or settings.content):
        # Clips of a fraction of a second say little to a speaker encoder, and a spoofing
        # corpus has no keyword to hear: scoring is W-MSE, PESQ, STOI and labels.
        settings = dataclasses.replace(settings, speaker=False, content=False)
        skipped_judges = True
    else:
        skipped_judges = False
    found = find_captures(run_dir, settings.rounds, settings.clients)
    if not found:
        where = ""
        if settings.rounds is not None or settings.clients is not None:
            where = (
                f" for rounds {settings.rounds or 'all'} and clients {settings.clients or 'all'}"
            )
        raise FedspeechError(
            f"run folder {run_dir} has no captures{where} (expected "
            f"{run_dir / 'captures'}/rNNN_cNNNN.safetensors from fedspeech simulate)"
        )
    out = run_dir / AUDIT_DIR
    scored = (run_dir / "truth").is_dir()
    key1 = settings.stage1_key()
    key = settings.scoring_key(scored)

    from tqdm import tqdm

    def note(msg: str) -> None:
        if progress:
            tqdm.write(msg, file=sys.stderr)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads or max(1, os.cpu_count() or 1))
    try:
        # Selection and validation before any long computation: a capture that is not a
        # capture, or does not fit its model, fails now rather than after hours of stage 1.
        results: dict[str, dict[str, Any]] = {}
        jobs: list[_Job] = []
        caveats: list[str] = []
        total = 0
        for name, path, rnd, cid in found:
            if settings.max_samples is not None and total >= settings.max_samples:
                break
            job = _Job(name, path, rnd, cid, digest=_file_digest(path))
            done = _load_scored(out, job, key)
            if done is not None:
                results[name] = done
                job.batch_size = len(done["rows"])
            else:
                target = _load_target(job)
                job.batch_size = target.batch_size
                job.frontend, job.frontend_kwargs = target.frontend, dict(target.frontend_kwargs)
                if target.caveat and target.caveat not in caveats:
                    caveats.append(target.caveat)
                del target
            jobs.append(job)
            total += job.batch_size
        todo = [j for j in jobs if j.name not in results]
        stage1: dict[str, _Stage1] = {}
        for job in todo:
            s1 = _load_stage1(out / "reconstructions" / f"{job.name}.safetensors", job, key1)
            if s1 is not None:
                stage1[job.name] = s1
        counts = {
            "reused": len(results),
            "rescored": len(stage1),
            "reconstructed": len(todo) - len(stage1),
        }
        if skipped_judges:
            note("raw-waveform run: stage 2, speaker and content scoring do not apply")
        for caveat in caveats:
            note(f"note: {caveat}")
        note(
            f"audit of {len(jobs)} captures ({total} samples): {counts['reused']} done before, "
            f"{counts['rescored']} to re-score, {counts['reconstructed']} to reconstruct"
        )
        bar = tqdm(
            total=len(jobs),
            initial=len(results),
            desc="audit",
            unit="capture",
            disable=not progress,
            file=sys.stderr,
        )
        scorer: _Scorer | None = None

        def finish(job: _Job, s1: _Stage1) -> None:
            nonlocal scorer
            if scored and scorer is None:
                cache_key = json.dumps(
                    [str(run_dir.resolve()), key, job.frontend, job.frontend_kwargs],
                    sort_keys=True,
                    default=str,
                )
                scorer = scorers.get(cache_key) if scorers is not None else None
                if scorer is None:
                    scorer = (
                        _WaveScorer(run_dir, settings)
                        if job.frontend == WAVEFORM
                        else _Scorer(
                            run_dir, out, settings, job.frontend, job.frontend_kwargs, note
                        )
                    )
                    if scorers is not None:
                        scorers[cache_key] = scorer
            rows = _score_capture(job, s1, settings, out, scorer)
            record = {
                "capture": job.name,
                "key": key,
                "digest": job.digest,
                "scorer": scorer.info if scorer is not None else {},
                "stage1": {
                    "matching_loss": s1.matching_loss,
                    "iterations": s1.iterations,
                    "restarts_run": s1.restarts_run,
                    "seconds": s1.seconds,
                },
                "rows": rows,
            }
            write_json(out / "samples" / f"{job.name}.json", record)
            # Read back as a resumed audit would, so both paths summarise the same values.
            results[job.name] = json.loads(json.dumps(clean_json(record)))
            bar.update(1)

        with bar:
            for job in todo:
                if job.name in stage1:
                    finish(job, stage1.pop(job.name))
            fresh = [j for j in todo if j.name not in results]
            if fresh:

                def save(job: _Job, s1: _Stage1) -> None:
                    _save_stage1(out / "reconstructions" / f"{job.name}.safetensors", job, key1, s1)

                runner = (
                    _stage1_ray(fresh, settings, note)
                    if settings.ray_address
                    else _stage1_local(fresh, settings, note, save)
                )
                for job, s1 in runner:
                    save(job, s1)
                    finish(job, s1)

        rows = [_restore_row(r) for job in jobs for r in results[job.name]["rows"]]
        summary = _write_outputs(out, jobs, results, rows, settings, scored, counts, t_start)
    finally:
        torch.set_num_threads(threads_before)
    scored_rows = sum(1 for r in rows if "label" in r)
    for metric, stats in summary["from_gradients"].items():
        if stats["n"] < scored_rows:
            note(f"{metric}: {stats['n']} of {scored_rows} samples could be scored")
    note(f"audit written to {out}")
    return summary


def _write_outputs(
    out: Path,
    jobs: Sequence[_Job],
    results: Mapping[str, Mapping[str, Any]],
    rows: Sequence[dict[str, Any]],
    settings: AuditSettings,
    scored: bool,
    counts: Mapping[str, int],
    t_start: float,
) -> dict[str, Any]:
    """leakage.csv, summary.json and the summary plots from all selected captures."""
    write_csv(out / "leakage.csv", rows, LEAKAGE_COLUMNS)
    grad, feat = _summarize(rows, settings) if scored else ({}, {})
    info: dict[str, Any] = {}
    for job in jobs:  # the judges are fitted once per audit; any capture's copy will do
        info = {**dict(results[job.name].get("scorer") or {}), **info}
    summary: dict[str, Any] = {
        "from_gradients": grad,
        "from_features": feat,
        "scored": scored,
        "captures": len(jobs),
        "samples": len(rows),
        "rounds": sorted({job.server_round for job in jobs}),
        **info,
        "stage1": {
            **counts,
            "seconds": sum(float(results[j.name]["stage1"]["seconds"]) for j in jobs),
            "iterations": sum(int(results[j.name]["stage1"]["iterations"]) for j in jobs),
        },
        "settings": dataclasses.asdict(settings),
        "columns": {"from_features_prefix": FF_PREFIX, "from_features": list(FEATURE_COLUMNS)},
        "seconds": time.perf_counter() - t_start,
    }
    write_json(out / "summary.json", summary)
    if scored and rows:
        summary_plot(out / "summary.png", summary)
        if len(summary["rounds"]) > 1:
            leakage_by_round_plot(out / "leakage_by_round.png", rows)
    return clean_json(summary)  # type: ignore[no-any-return]

"""Speaker re-identification: does the reconstruction still carry the client's voice?

A pretrained speaker encoder (:data:`SPEAKER_MODELS`) embeds both waveforms; a
:class:`SpeakerVerifier` calls them the same speaker when their cosine similarity reaches
the equal-error-rate threshold fitted on real same- and different-speaker pairs of original
clips, as a speaker-verification system would.

Examples
--------
>>> eer([0.9, 0.8, 0.7, 0.4], [0.5, 0.3, 0.2, 0.1])
EqualErrorRate(eer=0.25, threshold=0.45)
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import torch

from attacks.scoring.quality import METRICS, resample
from fedspeech.errors import ConfigError, FedspeechError
from fedspeech.metrics.eer import eer
from fedspeech.registry import Registry

__all__ = [
    "ECAPA_ENV",
    "SPEAKER_MODELS",
    "EcapaEncoder",
    "ResemblyzerEncoder",
    "SpeakerEncoder",
    "SpeakerVerifier",
    "build_speaker_model",
    "cosine",
    "eer",
    "speaker_cosine",
]

ENCODER_RATE = 16_000

# Environment variable naming a local folder with the SpeechBrain ECAPA-TDNN files
# (hyperparams.yaml, embedding_model.ckpt, ...), as --speaker-model-path does.
ECAPA_ENV = "FEDSPEECH_SPEAKER_MODEL_PATH"
ECAPA_HUB = "speechbrain/spkrec-ecapa-voxceleb"
ECAPA_EXTRA = (
    "the ecapa speaker model needs the optional extra: pip install 'fedspeech[ecapa]' "
    "(SpeechBrain, torchaudio)"
)


@runtime_checkable
class SpeakerEncoder(Protocol):
    """Anything that maps a 16 kHz waveform ``(samples,)`` to a speaker embedding ``(D,)``."""

    def embed(self, wave16k: np.ndarray) -> np.ndarray: ...


SPEAKER_MODELS: Registry[Callable[..., SpeakerEncoder]] = Registry("speaker model")


def build_speaker_model(name: str = "resemblyzer", **kwargs: Any) -> SpeakerEncoder:
    """Construct the speaker encoder registered as ``name`` (``"resemblyzer"``, ``"ecapa"``)."""
    return SPEAKER_MODELS.get(name)(**kwargs)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings ``(D,)``; 0 if either is all zeros."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b / (na * nb))


@lru_cache(maxsize=2)
def _voice_encoder(device: str) -> Any:
    # The encoders are imported here: heavy optional dependencies of speaker scoring only.
    try:
        with warnings.catch_warnings():
            # resemblyzer 0.1.4 imports scipy.ndimage.morphology, deprecated in SciPy 1.8+.
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder
    except ImportError as err:
        raise FedspeechError(
            f"the resemblyzer speaker model could not be imported ({err}); it needs "
            "'resemblyzer' and 'webrtcvad' (pip install resemblyzer webrtcvad-wheels)"
        ) from None
    return VoiceEncoder(device, verbose=False)


@SPEAKER_MODELS.register("resemblyzer")
class ResemblyzerEncoder:
    """Resemblyzer's GE2E LSTM speaker encoder (Wan et al. 2018), 256-d, weights in the wheel.

    ``embed`` runs ``resemblyzer.preprocess_wav`` (volume normalisation to -30 dBFS and
    webrtcvad trimming of long silences) and ``VoiceEncoder.embed_utterance``. The encoder is
    loaded once per process and device.

    Parameters
    ----------
    device : str
        Torch device ("cpu").
    min_speech_s : float
        If VAD trimming leaves less than this much audio (e.g. a noisy reconstruction the
        VAD rejects), the untrimmed, volume-normalised clip is embedded instead of near-silence.
    """

    def __init__(self, device: str = "cpu", min_speech_s: float = 0.3) -> None:
        self.device = device
        self.min_speech_s = float(min_speech_s)
        self._encoder = _voice_encoder(device)

    @property
    def dim(self) -> int:
        """Embedding size (256)."""
        return int(self._encoder.linear.out_features)

    def embed(self, wave16k: np.ndarray, sr: int = ENCODER_RATE) -> np.ndarray:
        """Embedding ``(256,)`` float32 of a waveform ``(samples,)``; zeros if silent.

        ``sr`` is the waveform's rate (16 kHz by the protocol); ``preprocess_wav`` resamples
        other rates itself.
        """
        # Imported here, as the encoders above: heavy, and only speaker scoring needs them.
        from resemblyzer import preprocess_wav
        from resemblyzer.audio import normalize_volume
        from resemblyzer.hparams import audio_norm_target_dBFS

        x = np.asarray(wave16k, dtype=np.float32).ravel()
        if x.size == 0 or not np.all(np.isfinite(x)) or float(np.max(np.abs(x))) < 1e-6:
            return np.zeros(self.dim, dtype=np.float32)
        wav = preprocess_wav(x, source_sr=sr)
        if wav.size < self.min_speech_s * ENCODER_RATE:
            if sr != ENCODER_RATE:
                x = resample(x, sr, ENCODER_RATE)
            wav = normalize_volume(x, audio_norm_target_dBFS, increase_only=True)
        with torch.no_grad():
            return np.asarray(self._encoder.embed_utterance(wav.astype(np.float32)), np.float32)


@lru_cache(maxsize=2)
def _ecapa(source: str, savedir: str | None, device: str) -> Any:
    try:
        try:
            from speechbrain.inference.speaker import EncoderClassifier
        except ImportError:
            # SpeechBrain < 1.0 kept it here.
            from speechbrain.pretrained import EncoderClassifier
    except (ImportError, OSError):
        raise FedspeechError(ECAPA_EXTRA) from None
    return EncoderClassifier.from_hparams(
        source=source, savedir=savedir, run_opts={"device": device}
    )


@SPEAKER_MODELS.register("ecapa")
class EcapaEncoder:
    """SpeechBrain's ECAPA-TDNN speaker encoder (Desplanques et al. 2020), 192-d.

    Needs the optional extra ``fedspeech[ecapa]`` (SpeechBrain and torchaudio).

    Parameters
    ----------
    model_path : str, Path or None
        Local folder with the pretrained files; None reads :data:`ECAPA_ENV`, and if that is
        unset too, the hub model :data:`ECAPA_HUB` (needs internet the first time).
    savedir : str, Path or None
        Where SpeechBrain links or downloads the files.
    device : str
        Torch device ("cpu").

    Raises
    ------
    FedspeechError
        SpeechBrain (or torchaudio) is not installed.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        savedir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        path = model_path if model_path is not None else os.environ.get(ECAPA_ENV) or None
        source = str(Path(path).expanduser()) if path is not None else ECAPA_HUB
        self._model = _ecapa(source, None if savedir is None else str(savedir), device)

    def embed(self, wave16k: np.ndarray) -> np.ndarray:
        """Embedding ``(192,)`` float32 of a 16 kHz waveform ``(samples,)``."""
        x = torch.as_tensor(np.asarray(wave16k, dtype=np.float32).ravel())[None]
        with torch.no_grad():
            emb = self._model.encode_batch(x)
        return np.asarray(emb.detach().cpu().numpy().ravel(), dtype=np.float32)


class SpeakerVerifier:
    """Same-speaker decisions at the equal-error-rate threshold of real pairs.

    Parameters
    ----------
    encoder : SpeakerEncoder or str
        An encoder or a name in :data:`SPEAKER_MODELS` ("resemblyzer").
    sr : int
        Rate of the waveforms given to this object; resampled to 16 kHz for the encoder.
    cache_size : int
        Embeddings kept, keyed by waveform content, so originals scored against many
        reconstructions are embedded once.

    Attributes
    ----------
    threshold_, eer_ : float
        Set by :meth:`fit`.
    n_same_, n_diff_ : int
        Pairs used by :meth:`fit`.
    """

    def __init__(
        self,
        encoder: SpeakerEncoder | str = "resemblyzer",
        *,
        sr: int = 16_000,
        cache_size: int = 4096,
    ) -> None:
        self.encoder: SpeakerEncoder = (
            build_speaker_model(encoder) if isinstance(encoder, str) else encoder
        )
        self.sr = int(sr)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.threshold_: float | None = None
        self.eer_: float | None = None
        self.n_same_ = 0
        self.n_diff_ = 0

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """Embedding ``(D,)`` of a waveform ``(samples,)`` at :attr:`sr` (cached)."""
        x = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).ravel())
        key = hashlib.blake2b(x.tobytes(), digest_size=16).digest()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if self.sr != ENCODER_RATE:
            x = resample(x, self.sr, ENCODER_RATE)
        emb = np.asarray(self.encoder.embed(x), dtype=np.float32)
        self._cache[key] = emb
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of the two waveforms' embeddings."""
        return cosine(self.embed(a), self.embed(b))

    def fit(
        self,
        waves: Sequence[np.ndarray],
        speakers: Sequence[str],
        *,
        max_pairs: int = 5000,
        seed: int = 0,
    ) -> Self:
        """Fit the threshold at the EER of same/different-speaker pairs of original clips.

        Parameters
        ----------
        waves : sequence of np.ndarray
            ``N`` original clips ``(samples_i,)`` at :attr:`sr`.
        speakers : sequence of str
            ``N`` speaker labels.
        max_pairs : int
            At most this many same-speaker and this many different-speaker pairs, drawn at
            random (seeded) from all ``N (N - 1) / 2``.
        seed : int
            Seed of that draw.

        Raises
        ------
        ConfigError
            Lengths differ, or no same-speaker or no different-speaker pair exists.
        """
        if len(waves) != len(speakers):
            raise ConfigError(f"{len(waves)} clips but {len(speakers)} speaker labels")
        emb = np.stack([self.embed(w) for w in waves]).astype(np.float64)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norms > 0, norms, 1.0)
        sim = emb @ emb.T
        labels = np.asarray([str(s) for s in speakers])
        i, j = np.triu_indices(len(labels), k=1)
        same_mask = labels[i] == labels[j]
        rng = np.random.default_rng(seed)
        picked = []
        for mask in (same_mask, ~same_mask):
            idx = np.flatnonzero(mask)
            if idx.size > max_pairs:
                idx = np.sort(rng.choice(idx, size=max_pairs, replace=False))
            picked.append(idx)
        if picked[0].size == 0 or picked[1].size == 0:
            raise ConfigError(
                "fitting the speaker threshold needs at least two clips of one speaker and "
                "clips of at least two speakers"
            )
        same = sim[i[picked[0]], j[picked[0]]]
        diff = sim[i[picked[1]], j[picked[1]]]
        self.eer_, self.threshold_ = eer(same, diff)
        self.n_same_, self.n_diff_ = int(same.size), int(diff.size)
        return self

    def reidentified(self, original: np.ndarray, reconstruction: np.ndarray) -> tuple[float, bool]:
        """``(cosine, cosine >= threshold_)`` for an original clip and its reconstruction.

        Raises
        ------
        ConfigError
            :meth:`fit` has not been called.
        """
        if self.threshold_ is None:
            raise ConfigError("SpeakerVerifier.fit must run before reidentified")
        s = self.score(original, reconstruction)
        return s, bool(s >= self.threshold_)


@METRICS.register("speaker_cosine")
def speaker_cosine(
    original: np.ndarray,
    reconstruction: np.ndarray,
    sr: int = 16_000,
    *,
    encoder: SpeakerEncoder | str = "resemblyzer",
    **ctx: object,
) -> float:
    """Cosine similarity of the speaker embeddings of the two waveforms (resemblyzer)."""
    enc = build_speaker_model(encoder) if isinstance(encoder, str) else encoder
    a = np.asarray(original, dtype=np.float32).ravel()
    b = np.asarray(reconstruction, dtype=np.float32).ravel()
    if sr != ENCODER_RATE:
        a, b = resample(a, sr, ENCODER_RATE), resample(b, sr, ENCODER_RATE)
    return cosine(enc.embed(a), enc.embed(b))

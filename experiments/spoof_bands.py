"""How much of each built-in spoof attack's energy lies above a frequency, per attack.

    python -m experiments.spoof_bands [--above 3800] [--clip-samples 4000]

A cue check for the built-in corpus (``fedspeech/data/spoof.py``): the telephone codec
(``codec``) low-passes at 3.6 kHz, so its clips should hold far less energy above it than
bona fide clips. Prints, per attack, the 10th, 50th and 90th percentile over clips of
``10 log10(E_above / E_total)`` of the centre ``--clip-samples`` samples (Hann window), which
is what ``fedspeech simulate --task sdd`` trains on.
"""

from __future__ import annotations

import argparse

import numpy as np

from fedspeech.data.spoof import BUILTIN_SAMPLES, build_spoof_corpus
from fedspeech.data.spoof_loaders import load_spoof_dataset
from fedspeech.tasks.sdd import center_crop


def band_share_db(waves: np.ndarray, above_hz: float, rate: int = 16000) -> np.ndarray:
    """``(N,)`` share in dB of each ``(N, L)`` clip's energy above ``above_hz``."""
    window = np.hanning(waves.shape[1])
    power = np.abs(np.fft.rfft(waves * window, axis=1)) ** 2
    freqs = np.fft.rfftfreq(waves.shape[1], 1.0 / rate)
    share = power[:, freqs > above_hz].sum(1) / np.maximum(power.sum(1), 1e-20)
    return np.asarray(10.0 * np.log10(share + 1e-12))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--above", type=float, default=3800.0, help="band edge in Hz")
    parser.add_argument("--clip-samples", type=int, default=4000, help="centre samples kept")
    args = parser.parse_args(argv)
    root = build_spoof_corpus(progress=False)
    corpus = load_spoof_dataset("builtin", root, num_samples=BUILTIN_SAMPLES, progress=False)
    waves = center_crop(corpus.waveforms, args.clip_samples).astype(np.float64)
    db = band_share_db(waves, args.above)
    attacks = np.asarray(corpus.attacks)
    print(f"energy above {args.above:.0f} Hz, dB of the clip's total (p10 / p50 / p90)")
    for attack in sorted(set(corpus.attacks)):
        p10, p50, p90 = np.percentile(db[attacks == attack], [10, 50, 90])
        n = int((attacks == attack).sum())
        print(f"{attack:>9}  {p10:7.1f} {p50:7.1f} {p90:7.1f}   ({n} clips)")


if __name__ == "__main__":
    main()

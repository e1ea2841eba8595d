"""Per-round record of a run, saved as plain files after every round.

``metrics.json`` is rewritten atomically after each round, so an interrupted run still
leaves a readable record of the rounds it finished. Speech-deepfake-detection runs add
``eer``, ``eer_unseen`` (the global model's EER on seen and on held-out attacks; ``null``
where undefined) and ``conflict_rate`` (the mean over the round's clients of their fraction
of local steps whose clean and augmented gradients conflict) to every round, ``eer`` and
``eer_unseen`` to ``initial`` and ``final``, and plot them in ``eer.png``.

A diverged run (a NaN or infinite evaluation loss, or mean client training loss) is
recorded under ``diverged`` in ``metrics.json`` and stopped with
:class:`~fedspeech.errors.DivergedError`: every later round would only be NaN too. The
file is strict JSON: non-finite numbers are written as ``null``.

Every round lists its ``failures`` (``{"client_id", "error"}`` of each sampled client whose
reply was not used); a round in which every sampled client failed is marked
``"all_failed": true``.

A run with a defense records it under ``defense``; a DP run also records ``privacy``
(mode, noise multiplier, delta) and, in every round and in ``final``, ``epsilon``: the
largest epsilon of any client so far at that delta (:mod:`fedspeech.metrics.privacy`;
``null`` when no noise is added, i.e. no finite guarantee).

A run stopped by SIGINT or SIGTERM is marked ``"interrupted": true``; a resumed run
(:meth:`RunRecorder.resume`) keeps the rounds recorded so far and appends the rest, and its
``metrics.json`` lists the rounds it resumed after under ``resumed_after``.
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from fedspeech.config import SimConfig
from fedspeech.errors import DivergedError
from fedspeech.fileio import atomic_save_figure, atomic_write_json
from fedspeech.metrics.privacy import PrivacyLedger
from fedspeech.training import local_step_count

# Leakage columns of the terminal table, when the run was audited.
_LEAK_COLUMNS = {
    "label_accuracy": "label",
    "pesq_nb": "pesq_nb",
    "stoi": "stoi",
    "speaker_reid_rate": "spk_reid",
}


def privacy_ledger(cfg: SimConfig, client_clips: list[int]) -> PrivacyLedger | None:
    """The ledger of a DP run (None without ``--dp``).

    ``client_clips`` holds each client's clip count: with ``--dp sgd`` a step samples
    ``batch / clips`` of them, and a round takes ``--local-steps`` steps, or
    ``--local-epochs`` passes of ``ceil(clips / batch)``.
    """
    if cfg.dp == "none":
        return None
    batch = cfg.batch_size
    rates = [min(1.0, batch / max(n, 1)) for n in client_clips]
    steps = [local_step_count(n, batch, cfg.local_epochs, cfg.local_steps) for n in client_clips]
    return PrivacyLedger(cfg.dp, cfg.dp_noise, cfg.dp_delta, rates, steps)


class RunRecorder:
    """Collects per-round metrics and writes ``metrics.json`` and ``accuracy.png``.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    rounds : int
        Planned rounds (for progress lines).
    stream : TextIO | None
        Where progress lines go; ``None`` is silent.
    privacy : PrivacyLedger, optional
        Counts each client's private releases (a DP run).
    defense : dict, optional
        The defense settings, recorded as they are.
    """

    def __init__(
        self,
        run_dir: Path,
        rounds: int,
        stream: TextIO | None = sys.stderr,
        *,
        privacy: PrivacyLedger | None = None,
        defense: dict[str, Any] | None = None,
    ) -> None:
        self.privacy = privacy
        self.defense = defense
        self.run_dir = Path(run_dir)
        self.rounds_planned = rounds
        self.stream = stream
        self.rounds: list[dict[str, Any]] = []
        self.initial: dict[str, float | None] | None = None
        self._pending: dict[int, dict[str, Any]] = {}
        self.diverged: dict[str, Any] | None = None
        #: Set when the run was stopped by a signal (``"interrupted": true``).
        self.interrupted = False
        self.resumed_after: list[int] = []
        # The server thread saves after each round, the main thread when interrupted.
        self._save_lock = threading.Lock()

    def resume(self, doc: dict[str, Any], after_round: int) -> None:
        """Continue the record ``doc`` (a ``metrics.json``) after round ``after_round``.

        Rounds recorded after ``after_round`` (finished, but not saved as a model before
        the interruption) are dropped: the resumed run does them again.
        """
        self.initial = doc.get("initial")
        self.rounds = [r for r in doc.get("rounds", []) if int(r["round"]) <= after_round]
        self.resumed_after = [*doc.get("resumed_after", []), after_round]
        if self.privacy is not None:
            for r in self.rounds:
                self.privacy.took_part(int(c["client_id"]) for c in r.get("clients", []))

    def client_round(
        self,
        server_round: int,
        clients: list[dict[str, Any]],
        seconds: float,
        failures: list[dict[str, Any]] | None = None,
    ) -> None:
        """Per-client results of a round's training, before evaluation.

        ``failures`` holds ``{"client_id", "error"}`` of the sampled clients whose replies
        were not used (an error, no reply in time, a wrong client id).

        Raises
        ------
        DivergedError
            The mean ``train_loss`` of the clients is NaN or infinite.
        """
        self._pending[server_round] = {
            "clients": clients,
            "train_seconds": seconds,
            "failures": list(failures or []),
        }
        if self.privacy is not None:
            self.privacy.took_part(int(c["client_id"]) for c in clients)
            self._pending[server_round]["epsilon"] = self.privacy.epsilon()
        losses = [float(c["train_loss"]) for c in clients if "train_loss" in c]
        if losses:
            # A plain sum: one NaN or infinite loss makes the mean non-finite (fsum would
            # raise on inf - inf instead).
            mean = sum(losses) / len(losses)
            self._check_finite(server_round, "mean client training loss", mean)

    def evaluated(
        self,
        server_round: int,
        accuracy: float,
        loss: float,
        seconds: float,
        extra: dict[str, float] | None = None,
    ) -> None:
        """The global model's test metrics after ``server_round`` (0 = initial).

        ``extra`` holds further metrics of the global model (``eer``, ``eer_unseen``); NaN
        (undefined) is recorded as ``null``.

        Raises
        ------
        DivergedError
            ``loss`` is NaN or infinite (the round is recorded first).
        """
        scores = {k: (None if math.isnan(v) else v) for k, v in (extra or {}).items()}
        shown = "".join(f"  {k} {_fmt(v)}" for k, v in scores.items())
        if server_round == 0:
            self.initial = {"accuracy": accuracy, "loss": loss, **scores}
            self._say(
                f"round 0/{self.rounds_planned}  accuracy {accuracy:.3f}  loss {loss:.3f}{shown}"
            )
            self._check_finite(server_round, "evaluation loss", loss)
            return
        pending = self._pending.pop(server_round, {"clients": [], "train_seconds": 0.0})
        entry: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            **scores,
        }
        rates = [c["conflict_rate"] for c in pending["clients"] if "conflict_rate" in c]
        if rates:
            entry["conflict_rate"] = sum(rates) / len(rates)
            shown += f"  conflict_rate {entry['conflict_rate']:.3f}"
        if "epsilon" in pending:
            eps = pending["epsilon"]
            entry["epsilon"] = eps if math.isfinite(eps) else None
            shown += f"  epsilon {eps:.2f}" if math.isfinite(eps) else "  epsilon inf"
        entry["seconds"] = round(seconds, 3)
        entry["clients"] = pending["clients"]
        failures = pending.get("failures", [])
        entry["failures"] = failures
        if failures and not pending["clients"]:
            entry["all_failed"] = True
        self.rounds.append(entry)
        captured = sum(1 for c in pending["clients"] if c.get("captured"))
        failed = f"  failed {len(failures)}" if failures else ""
        self._say(
            f"round {server_round}/{self.rounds_planned}  accuracy {accuracy:.3f}  "
            f"loss {loss:.3f}{shown}  clients {len(pending['clients'])}{failed}  "
            f"captured {captured}  {seconds:.1f} s"
        )
        self.save()
        self._check_finite(server_round, "evaluation loss", loss)

    def _check_finite(self, server_round: int, what: str, value: float) -> None:
        """Record and raise :class:`DivergedError` if ``value`` is NaN or infinite."""
        if math.isfinite(value):
            return
        # The value as text: strict JSON would turn the number itself into null.
        self.diverged = {"round": server_round, "metric": what, "value": str(value)}
        self.save()
        raise DivergedError(
            f"training diverged in round {server_round}: {what} is {value} "
            "(a smaller --lr may help)"
        )

    def add_leakage(self, server_round: int, leakage: dict[str, float]) -> None:
        """Attach audit results (metric -> mean over the round's captures) to a round."""
        for entry in self.rounds:
            if entry["round"] == server_round:
                entry["leakage"] = leakage
                shown = "  ".join(f"{k} {v:.3f}" for k, v in leakage.items())
                self._say(f"round {server_round} leakage: {shown}")
                self.save()
                return

    def as_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` document."""
        final = None
        if self.rounds:
            last = self.rounds[-1]
            final = {"accuracy": last["accuracy"], "loss": last["loss"]}
            final.update({k: last[k] for k in ("eer", "eer_unseen", "epsilon") if k in last})
        doc: dict[str, Any] = {"initial": self.initial, "rounds": self.rounds, "final": final}
        if self.defense is not None:
            doc["defense"] = self.defense
        if self.privacy is not None:
            doc["privacy"] = {
                "mode": self.privacy.mode,
                "noise_multiplier": self.privacy.noise,
                "delta": self.privacy.delta,
            }
        if self.diverged is not None:
            doc["diverged"] = self.diverged
        if self.resumed_after:
            doc["resumed_after"] = self.resumed_after
        if self.interrupted:
            doc["interrupted"] = True
        return doc

    def save(self) -> None:
        """Write ``metrics.json`` atomically, as strict JSON (NaN and infinities: null)."""
        with self._save_lock:
            atomic_write_json(self.run_dir / "metrics.json", self.as_dict(), indent=1)

    def plot(self) -> Path | None:
        """Write ``accuracy.png`` (accuracy and loss per round); ``None`` if no rounds."""
        if not self.rounds:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["round"] for r in self.rounds]
        acc = [r["accuracy"] for r in self.rounds]
        loss = [r["loss"] for r in self.rounds]
        if self.initial is not None:
            xs = [0, *xs]
            acc = [self.initial["accuracy"], *acc]
            loss = [self.initial["loss"], *loss]
        leaky = [r for r in self.rounds if r.get("leakage")]
        if leaky:
            fig, (ax, ax3) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=120)
            for key in ("pesq_nb", "stoi", "label_accuracy", "speaker_reid_rate"):
                pts = [(r["round"], r["leakage"][key]) for r in leaky if key in r["leakage"]]
                if pts:
                    ax3.plot(*zip(*pts, strict=True), marker="o", label=key)
            ax3.set_xlabel("round")
            ax3.set_title("leakage of the captured updates")
            ax3.grid(alpha=0.3)
            ax3.legend(fontsize=8)
        else:
            fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
        ax.plot(xs, acc, marker="o", color="tab:blue", label="test accuracy")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy", color="tab:blue")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(xs, loss, marker=".", color="tab:red", alpha=0.7, label="test loss")
        ax2.set_ylabel("loss", color="tab:red")
        ax.set_title(f"Global model, {self.run_dir.name}")
        fig.tight_layout()
        path = atomic_save_figure(fig, self.run_dir / "accuracy.png")
        plt.close(fig)
        return path

    def plot_eer(self) -> Path | None:
        """Write ``eer.png`` (EER on seen and unseen attacks, conflict rate per round).

        ``None`` when the rounds carry no EER (keyword spotting).
        """
        if not any("eer" in r for r in self.rounds):
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows: list[dict[str, Any]] = list(self.rounds)
        if self.initial is not None and "eer" in self.initial:
            rows = [{"round": 0, **self.initial}, *rows]
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
        styles = (("eer", "seen attacks", "o"), ("eer_unseen", "unseen attacks", "s"))
        for key, label, marker in styles:
            pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, label=f"EER, {label}")
        pts = [(r["round"], r["conflict_rate"]) for r in rows if "conflict_rate" in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), ls="--", marker=".", label="conflict rate")
        ax.set_xlabel("round")
        ax.set_ylabel("fraction")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Global model, {self.run_dir.name}")
        fig.tight_layout()
        path = atomic_save_figure(fig, self.run_dir / "eer.png")
        plt.close(fig)
        return path

    def summary_table(self) -> str:
        """Plain-text table of the rounds, for the terminal (with leakage when audited)."""
        sdd = any("eer" in r for r in self.rounds)
        leak = [k for k in _LEAK_COLUMNS if any(k in r.get("leakage", {}) for r in self.rounds)]
        head = f"{'round':>5}  {'accuracy':>8}  {'loss':>7}"
        if sdd:
            head += f"  {'eer':>6}  {'unseen':>6}  {'conflict':>8}"
        head += f"  {'clients':>7}  {'seconds':>7}"
        lines = [head + "".join(f"  {_LEAK_COLUMNS[k]:>8}" for k in leak)]
        for r in self.rounds:
            line = f"{r['round']:>5}  {r['accuracy']:>8.3f}  {r['loss']:>7.3f}"
            if sdd:
                line += (
                    f"  {_fmt(r.get('eer')):>6}  {_fmt(r.get('eer_unseen')):>6}  "
                    f"{_fmt(r.get('conflict_rate')):>8}"
                )
            cells = "".join(f"  {r.get('leakage', {}).get(k, float('nan')):>8.3f}" for k in leak)
            lines.append(f"{line}  {len(r['clients']):>7}  {r['seconds']:>7.1f}" + cells)
        return "\n".join(lines)

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

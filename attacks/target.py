"""What an attack works on: the global model and the gradient one client shared.

:func:`target_from_capture` turns a :class:`~fedspeech.capture.Capture` into an
:class:`AttackTarget`. A ``"gradient"`` capture (FedSGD) holds the gradient itself; an
``"update"`` capture (FedAvg) holds the weights after local SGD, from which the mean
gradient is estimated as the scaled weight difference ``(w_global - w_shared) / (lr * steps)``
(the approximation used by Geiping et al., "Inverting gradients", 2020, for multi-step
updates). A client that clipped its local steps (``training["clip_norm"]`` in the capture)
moved by at most ``lr * clip_norm`` a step: the estimate then has the clipped gradient's
direction and a smaller norm, which a cosine matching loss does not see.

A defended capture (``training["defense"]``, see :mod:`fedspeech.training.defense`) is
attacked as it is, as an informed server would: the noise cannot be removed, a quantised
update is matched as the dequantised values it holds, and a pruned update is matched on
its kept entries only (:attr:`AttackTarget.mask`): its zeros say nothing about the
gradient there.

A dual-path keyword update (DPDA: Truong et al., 2025; ``training["augment"]``) is not a
clean gradient: each local step moved by the aligned direction of the clean gradient and
the gradient of the SpecAugment-masked features. Every aligner of two gradients that do not
conflict (``none``, PCGrad, GradVac, UPGrad; 99.5 % of the keyword CNN's steps in
``docs/results/kws_alignment.md``) returns their mean, so by default
(``dual_path="expected"``) stage 1 matches the mean of the candidate's clean gradient and
its gradient at the *expected* masked features (:attr:`AttackTarget.second_path`, the
probability that the client's random masks kept each frequency bin,
:func:`specaugment_keep`): the masks the client drew are unknown to the server.
``dual_path="clean"`` matches the update as the clean gradient instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.local_training import OPTIMIZERS, UPDATE_MODELS, LocalTraining, sequential_batches
from fedspeech.capture import WAVEFORM, Capture, CaptureFormatError, capture_name
from fedspeech.models import build_model

__all__ = [
    "DUAL_PATH_MODELS",
    "UPDATE_MODELS",
    "WAVEFORM",
    "AttackTarget",
    "attack_mode",
    "effective_steps",
    "specaugment_keep",
    "target_from_capture",
]

#: How stage 1 models a dual-path update: the mean of the clean gradient and the gradient at
#: the expected augmented input ("expected"), or the clean gradient alone ("clean").
DUAL_PATH_MODELS = ("expected", "clean")

# Standard deviation of a waveform restart's start. Clips are peak-normalised to 1 and speech
# sits near 0.1 RMS, so a unit-variance start (right for log-Mel features) would be ten times
# louder than any clip and put every sinc filter far from its operating range.
WAVEFORM_INIT_STD = 0.1


@dataclass
class AttackTarget:
    """One shared gradient and the model it was computed on.

    Attributes
    ----------
    model : nn.Module
        The captured architecture, loaded with the global weights.
    params : dict[str, torch.Tensor]
        Global weights by parameter name (detached).
    grads : dict[str, torch.Tensor]
        Target gradient of the mean loss over the client's batch, same names and shapes.
    kind : str
        ``"gradient"`` (exact) or ``"update"`` (estimated from a weight difference).
    batch_size : int
        Samples behind the gradient ``B``; reconstructed inputs are ``(B, *input_shape)``.
    input_shape : tuple[int, ...]
        The model's input: ``(F, T)`` features, or ``(samples,)`` for a raw-waveform model.
    num_classes : int
        Output classes of the model.
    frontend : str
        Front-end registry name (``"mel"`` or ``"mfcc"``) that produced the features, or
        ``"waveform"`` (:data:`WAVEFORM`) for a model on raw waveforms (stage 1 then recovers
        the waveform itself and stage 2 is skipped).
    frontend_kwargs : dict
        Its settings.
    capture_id : str
        Name of the capture (for reports), e.g. ``r003_c0017``.
    caveat : str
        Empty when ``grads`` is the client's gradient exactly (a gradient capture, or one
        plain SGD step); otherwise why it is only an estimate.
    mask : dict[str, torch.Tensor] or None
        For a pruned update, per parameter, 1.0 where the client kept the entry and 0.0
        where it zeroed it: stage 1 matches the kept entries only. None: all entries.
    second_path : torch.Tensor or None
        For a dual-path update modelled by stage 1, ``(F, 1)``: the augmented path's input
        is ``second_path * u`` (the expected SpecAugment mask), and the matched gradient is
        the mean of the two paths' gradients. None: one path, the clean gradient.
    local_training : LocalTraining or None
        For an update of several local steps (or of Adam) modelled as unrolled, the
        client's local training, which stage 1 replays on its candidate clips
        (:func:`attacks.local_training.replay_update`) instead of taking one gradient.
        ``batch_size`` is then the client's clip count ``N``. None: one gradient.
    """

    model: nn.Module
    params: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    kind: str
    batch_size: int
    input_shape: tuple[int, ...] = (32, 32)
    num_classes: int = 10
    frontend: str = "mel"
    frontend_kwargs: dict[str, Any] = field(default_factory=dict)
    capture_id: str = ""
    caveat: str = ""
    mask: dict[str, torch.Tensor] | None = None
    second_path: torch.Tensor | None = None
    local_training: LocalTraining | None = None

    @property
    def waveform(self) -> bool:
        """True for a raw-waveform model: the input is the waveform itself."""
        return self.frontend == WAVEFORM

    @property
    def init_std(self) -> float:
        """Standard deviation of the normal start of stage 1 (1 for features)."""
        return WAVEFORM_INIT_STD if self.waveform else 1.0


def attack_mode(model: nn.Module) -> nn.Module:
    """Put ``model`` in the state the attacker evaluates it in, in place, and return it.

    Batch normalisation uses the statistics of the batch being reconstructed, as it did in
    the client's training-mode forward pass, without writing running statistics (which
    would be in-place updates under ``torch.func`` transforms). Dropout is off: the masks
    the client drew are unknown to the server, so the attacker matches the expected network
    instead (an approximation only for models with dropout, e.g. AASIST).
    """
    model.train()
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.track_running_stats = False
            mod.running_mean = None
            mod.running_var = None
            mod.num_batches_tracked = None
        elif isinstance(mod, nn.modules.dropout._DropoutNd):
            mod.eval()
    return model


def effective_steps(steps: int, momentum: float = 0.0) -> float:
    """How many gradients ``steps`` SGD steps with heavy-ball ``momentum`` add up to.

    With PyTorch's ``v <- m v + g; w <- w - lr v`` and a constant gradient ``g``, the weights
    move by ``lr * g * sum_{t=1..steps} (1 - m^t) / (1 - m)``; without momentum that is
    ``lr * g * steps``.

    Examples
    --------
    >>> effective_steps(5)
    5.0
    >>> round(effective_steps(2, 0.5), 6)
    2.5
    """
    if momentum <= 0.0:
        return float(steps)
    return sum((1.0 - momentum**t) / (1.0 - momentum) for t in range(1, steps + 1))


def _shape(t: torch.Tensor | torch.Size) -> str:
    dims = tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _check_fit(
    cid: str,
    model_name: str,
    expected: Mapping[str, torch.Tensor],
    got: Mapping[str, torch.Tensor],
    what: str,
    allowed_extra: frozenset[str] = frozenset(),
) -> None:
    """Raise :class:`CaptureFormatError` unless ``got`` has every tensor of ``expected``."""
    for name, ref in expected.items():
        if name not in got:
            raise CaptureFormatError(
                f"capture {cid} does not fit model {model_name!r}: {what} {name} is missing"
            )
        if tuple(got[name].shape) != tuple(ref.shape):
            raise CaptureFormatError(
                f"capture {cid} does not fit model {model_name!r}: {what} {name} has shape "
                f"{_shape(got[name])} but the model expects {_shape(ref)}"
            )
    extra = sorted(set(got) - set(expected) - allowed_extra)
    if extra:
        raise CaptureFormatError(
            f"capture {cid} does not fit model {model_name!r}: unexpected {what} {extra[0]}"
        )


def _training_value(cap: Capture, cid: str, key: str, default: float | None = None) -> float:
    value = cap.training.get(key, default)
    if value is None:
        raise CaptureFormatError(
            f"capture {cid} is an update but its training settings lack {key!r}"
        )
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CaptureFormatError(
            f"capture {cid} has a non-numeric training setting {key}={value!r}"
        ) from None


def _update_to_gradient(
    cap: Capture, cid: str, names: list[str]
) -> tuple[dict[str, torch.Tensor], int, int, float]:
    """Mean-gradient estimate, samples behind it, local steps and the scale, from an update."""
    _training_value(cap, cid, "lr")  # present, a number
    lr = cap.learning_rate()  # this round's, under --lr-schedule
    momentum = _training_value(cap, cid, "momentum", 0.0)
    if lr <= 0:
        raise CaptureFormatError(f"capture {cid} has a non-positive learning rate {lr}")
    recorded = cap.local_steps()
    if recorded is not None:
        steps = recorded
        # Examples seen over all steps; repeats cannot be told apart from the capture.
        samples = cap.num_examples
    else:
        # The run set local epochs, not steps: the capture records no step count, so it is
        # worked out as the client's loader did, from its clips and the batch size.
        batch = int(_training_value(cap, cid, "batch_size"))
        epochs = max(int(_training_value(cap, cid, "local_epochs", 1)), 1)
        if batch <= 0:
            raise CaptureFormatError(f"capture {cid} has a non-positive batch size {batch}")
        # Local training reports examples seen over all epochs, i.e. epochs x client clips.
        samples = max(cap.num_examples // epochs, 1)
        steps = math.ceil(samples / batch) * epochs
    scale = lr * effective_steps(steps, momentum)
    grads = {n: (cap.global_weights[n].float() - cap.shared[n].float()) / scale for n in names}
    return grads, samples, steps, scale


def specaugment_keep(spec: str, bins: int) -> torch.Tensor | None:
    """Probability that SpecAugment frequency masking ``spec`` keeps each of ``bins`` bins.

    Each of the ``M`` masks of ``specaugment:F[:M]`` (:mod:`fedspeech.augment.specaugment`)
    draws a width ``w ~ U{0..min(F, bins)}`` and a start ``s ~ U{0..bins - w}`` and zeroes
    bins ``[s, s + w)``; masks are independent, so a bin is kept with probability
    ``(1 - P(one mask covers it))^M``.

    Parameters
    ----------
    spec : str
        An augmentation spec as the capture records it.
    bins : int
        Frequency bins ``F`` of the features.

    Returns
    -------
    torch.Tensor or None
        ``(bins, 1)`` float32 keep probabilities; None when ``spec`` is not SpecAugment.

    Raises
    ------
    CaptureFormatError
        A SpecAugment spec whose numbers cannot be read.

    Examples
    --------
    >>> specaugment_keep("specaugment:1", 2).flatten().tolist()
    [0.75, 0.75]
    >>> specaugment_keep("rawboost:4", 2) is None
    True
    """
    name, _, rest = spec.partition(":")
    if name != "specaugment":
        return None
    try:
        parts = [int(v) for v in rest.split(":")] if rest else []
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 2 or parts[0] < 0 or (len(parts) == 2 and parts[1] < 1):
        raise CaptureFormatError(f"unreadable SpecAugment spec {spec!r} in a capture")
    max_width, masks = parts[0], parts[1] if len(parts) == 2 else 1
    widths = range(min(max_width, bins) + 1)
    covered = torch.zeros(bins, dtype=torch.float64)
    for w in widths:
        starts = bins - w + 1
        for s in range(starts):
            covered[s : s + w] += 1.0 / (len(widths) * starts)
    return ((1.0 - covered) ** masks).float().reshape(bins, 1)


def target_from_capture(
    cap: Capture, name: str = "", dual_path: str = "expected", update_model: str = "unrolled"
) -> AttackTarget:
    """Build the attack target of one capture.

    Parameters
    ----------
    cap : Capture
        A loaded capture (:func:`fedspeech.capture.load_capture`).
    name : str
        Capture name for messages and reports; defaults to ``r<round>_c<client>``.
    dual_path : {"expected", "clean"}
        How a dual-path keyword update with SpecAugment is modelled (module docstring):
        the mean of the clean gradient and the gradient at the expected masked features,
        or the clean gradient.
    update_model : {"unrolled", "averaged"}
        How an update of several local steps (or of Adam) is modelled: its local training
        replayed on the candidate clips (:attr:`AttackTarget.local_training`, Dimitrov et
        al. 2022), or one averaged gradient (Geiping et al. 2020). A one-step SGD update is
        one gradient either way; the detectors' trainer and DP-SGD are not replayed (always
        averaged, with a note).

    Returns
    -------
    AttackTarget
        For ``kind="gradient"`` the shared tensors are the gradient and ``batch_size`` is
        ``num_examples``. For ``kind="update"`` the gradient is estimated as
        ``(w_global - w_shared) / (lr * steps)``, with the steps the capture records
        (:meth:`fedspeech.capture.Capture.local_steps`) or, for a run set by local epochs,
        ``ceil(clips / batch_size) * local_epochs`` (momentum folded in by
        :func:`effective_steps`; a FedProx proximal term, zero at the first step, is
        ignored). ``batch_size`` is then the client's clip count (examples seen divided
        by ``local_epochs``), or the examples seen when ``local_steps`` is set.

    Raises
    ------
    CaptureFormatError
        Unknown kind, missing or mis-shaped tensors for the named model, or missing
        training settings for an update.
    """
    cid = name or capture_name(cap.server_round, cap.client_id)
    if dual_path not in DUAL_PATH_MODELS:
        known = ", ".join(DUAL_PATH_MODELS)
        raise ValueError(f"dual_path must be one of {known}, got {dual_path!r}")
    if update_model not in UPDATE_MODELS:
        known = ", ".join(UPDATE_MODELS)
        raise ValueError(f"update_model must be one of {known}, got {update_model!r}")
    if cap.kind not in ("gradient", "update"):
        raise CaptureFormatError(f"capture {cid} has unknown kind {cap.kind!r}")
    try:
        model = build_model(cap.model, **cap.model_kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise CaptureFormatError(
            f"capture {cid}: cannot build model {cap.model!r} from {cap.model_kwargs} ({exc})"
        ) from None
    expected = model.state_dict()
    _check_fit(cid, cap.model, expected, cap.global_weights, "param")
    named = dict(model.named_parameters())
    # An update carries the whole state dict (buffers too), a gradient only parameters.
    _check_fit(cid, cap.model, named, cap.shared, "shared param", frozenset(expected))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in cap.global_weights.items()})
    names = list(named)
    caveat = ""
    second_path: torch.Tensor | None = None
    plan: LocalTraining | None = None
    if cap.kind == "gradient":
        grads = {n: cap.shared[n].detach().float().clone() for n in names}
        batch_size = cap.num_examples
    else:
        grads, batch_size, steps, scale = _update_to_gradient(cap, cid, names)
        second_path, path_note = _dual_path(cap, dual_path)
        step_note = _step_caveat(cap, steps)
        if update_model == "unrolled" and step_note:
            plan, step_note = _local_training(cap, cid, steps, batch_size, scale, step_note)
            if plan is not None:
                batch_size = plan.clips
        caveat = "; ".join(n for n in (path_note, step_note) if n)
    if batch_size <= 0:
        raise CaptureFormatError(f"capture {cid} reports {cap.num_examples} examples")
    if cap.frontend == WAVEFORM:
        input_shape: tuple[int, ...] = (int(cap.model_kwargs.get("num_samples", 0)),)
        if input_shape[0] <= 0:
            raise CaptureFormatError(
                f"capture {cid} is from a raw-waveform model but its model settings lack "
                "num_samples"
            )
    else:
        shape = cap.model_kwargs.get("input_shape", (32, 32))
        input_shape = (int(shape[0]), int(shape[1]))
    attack_mode(model)
    num_classes = int(cap.model_kwargs.get("num_classes", _out_features(names, named)))
    mask = _pruning_mask(cap, names)
    if mask is not None:
        kept = sum(float(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        note = f"a pruned update: matched on the {100 * kept:.3g} % of entries the client kept"
        caveat = f"{caveat}; {note}" if caveat else note
    return AttackTarget(
        model=model,
        params={n: p.detach().clone() for n, p in named.items()},
        grads=grads,
        kind=cap.kind,
        batch_size=int(batch_size),
        input_shape=input_shape,
        num_classes=num_classes,
        frontend=cap.frontend,
        frontend_kwargs=dict(cap.frontend_kwargs),
        capture_id=cid,
        caveat=caveat,
        mask=mask,
        second_path=second_path,
        local_training=plan,
    )


def _pruning_mask(cap: Capture, names: list[str]) -> dict[str, torch.Tensor] | None:
    """1.0 where a pruned capture kept an entry of its update; None if it was not pruned."""
    defense = cap.training.get("defense") or {}
    if not isinstance(defense, Mapping) or not float(defense.get("prune_ratio", 0) or 0) > 0:
        return None
    if cap.kind == "gradient":
        return {n: (cap.shared[n] != 0).float() for n in names}
    return {n: (cap.shared[n] != cap.global_weights[n]).float() for n in names}


def _dual_path(cap: Capture, model: str) -> tuple[torch.Tensor | None, str]:
    """The expected second path of a dual-path keyword update, and what stays approximate."""
    augment = str(cap.training.get("augment", "none") or "none")
    if cap.training.get("task") == "sdd" or augment == "none":
        return None, ""
    alignment = str(cap.training.get("alignment", "none") or "none")
    what = f"a dual-path update ({augment}, aligned by {alignment})"
    shape = cap.model_kwargs.get("input_shape")
    keep = None
    if model == "expected" and cap.frontend != WAVEFORM and shape:
        keep = specaugment_keep(augment, int(shape[0]))
    if keep is None:
        why = "" if model == "clean" else " (a waveform augmentation the features cannot undergo)"
        return None, (
            f"{what}: the shared direction combines the clean and the augmented gradient, "
            f"and stage 1 matches it as the clean gradient{why}"
        )
    note = (
        f"{what}: stage 1 matches the mean of the clean gradient and the gradient at the "
        "expected masked features (the client's masks are unknown)"
    )
    if alignment == "cagrad":
        note += "; CAGrad's direction is not that mean"
    elif alignment != "none":
        note += f"; {alignment} returns that mean only where the two gradients do not conflict"
    return keep, note


def _local_training(
    cap: Capture, cid: str, steps: int, samples: int, scale: float, averaged_note: str
) -> tuple[LocalTraining | None, str]:
    """The client's local training to replay, and what stays approximate; ``(None, why)``
    (with the averaged model's note) when this trainer cannot be replayed."""
    training = cap.training
    defense = training.get("defense") or {}
    why = ""
    optimizer = str(training.get("optimizer", "sgd") or "sgd")
    if training.get("task") == "sdd":
        why = "the detectors' local trainer (RoGA, waveform augmentation, dropout) is not replayed"
    elif len(training.get("secagg_clients") or ()) > 1:
        why = "a secure aggregate is the mean of several clients' local training"
    elif isinstance(defense, Mapping) and defense.get("dp") == "sgd":
        why = "DP-SGD's per-sample clipping and noise are not replayed"
    elif optimizer not in OPTIMIZERS:
        why = f"the {optimizer} optimizer is not replayed"
    if why:
        return None, f"{averaged_note} ({why})"
    batch = int(_training_value(cap, cid, "batch_size", 1))
    if batch <= 0:
        raise CaptureFormatError(f"capture {cid} has a non-positive batch size {batch}")
    recorded = training.get("batch_order")
    if recorded is not None:
        batches = _read_order(recorded, cid, steps)
        known = True
    elif cap.local_steps() is not None:
        # Steps cut from one pass over the clips seen (repeats cannot be told apart).
        batches = sequential_batches(samples, batch, steps=steps)
        known = True
    else:
        epochs = max(int(_training_value(cap, cid, "local_epochs", 1)), 1)
        batches = sequential_batches(samples, batch, epochs=epochs)
        known = epochs == 1 or -(-samples // batch) == 1
    augment = str(training.get("augment", "none") or "none")
    plan = LocalTraining(
        batches=batches,
        lr=cap.learning_rate(),
        scale=scale,
        optimizer=optimizer,
        momentum=0.0 if optimizer == "adam" else _training_value(cap, cid, "momentum", 0.0),
        weight_decay=_training_value(cap, cid, "weight_decay", 0.0),
        proximal_mu=_training_value(cap, cid, "proximal_mu", 0.0),
        # The dual-path trainer does not clip (--clip-norm bounds plain local SGD).
        clip_norm=_training_value(cap, cid, "clip_norm", 0.0) if augment == "none" else 0.0,
        order_known=known,
    )
    note = f"an update of {plan.steps} local {optimizer} steps over {plan.clips} clips, replayed"
    if not known:
        note += (
            "; the client's batch order is not recorded, so every epoch is assumed to repeat "
            "the first one's batches"
        )
    return plan, note


#: Most clip visits a recorded batch order may hold (the simulator records up to 48,000).
MAX_ORDER_ENTRIES = 100_000


def _read_order(value: Any, cid: str, steps: int) -> tuple[tuple[int, ...], ...]:
    """A capture's ``training["batch_order"]``, checked: a list of ``steps`` non-empty lists
    of slots numbered by first visit (``0 .. N - 1``, each used)."""
    bad = CaptureFormatError(f"capture {cid} has an unreadable batch_order")
    if not isinstance(value, list) or not value:
        raise bad
    batches = []
    entries = 0
    for b in value:
        if not isinstance(b, list) or not b or not all(type(i) is int and i >= 0 for i in b):
            raise bad
        batches.append(tuple(b))
        entries += len(b)
        if entries > MAX_ORDER_ENTRIES:
            raise bad
    used = {i for b in batches for i in b}
    if used != set(range(len(used))):
        raise bad
    if len(batches) != steps:
        raise CaptureFormatError(
            f"capture {cid} records {len(batches)} batches in batch_order but {steps} local steps"
        )
    return tuple(batches)


def _step_caveat(cap: Capture, steps: int) -> str:
    """What the optimizer and the number of steps leave approximate."""
    optimizer = str(cap.training.get("optimizer", "sgd"))
    if optimizer != "sgd":
        return (
            f"updates from the {optimizer} optimizer are not scaled gradients (Adam's first "
            "step moves every weight by about lr * sign(gradient)); stage 1 matches them as if "
            "they were"
        )
    if steps != 1:
        return (
            "updates of several local steps are treated as one averaged gradient (Geiping et "
            "al.'s approximation)"
        )
    if float(cap.training.get("momentum", 0.0) or 0.0) != 0.0:
        return "momentum is folded into the step count (approximate)"
    return ""


def _out_features(names: list[str], named: Mapping[str, torch.Tensor]) -> int:
    """Rows of the last 2-D weight: the class count of a classifier."""
    for n in reversed(names):
        if named[n].dim() == 2:
            return int(named[n].shape[0])
    raise CaptureFormatError("model has no 2-D weight to read the class count from")

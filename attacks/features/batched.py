"""Stage 1 in one process: early stopping, restart skipping, many targets in one optimisation.

The engine behind :func:`attacks.features.reconstruct` (which may also split the targets
over worker processes, :mod:`attacks.features.workers`, each running this engine).

Same objective, optimiser, starts and restarts as :func:`attacks.features.reconstruct_plain`
(the study's algorithm), with three changes that cut the cost per reconstruction:

* a restart stops once the matching loss has plateaued (its best value improved by less
  than a relative ``tol`` in the last ``patience`` steps) or fell below ``floor`` times
  the loss of a zero gradient, or at ``iterations``;
* optionally (``lr_start``, not the study's), a restart starts with a larger Adam step and
  divides it by ``1 / lr_decay`` at each plateau (``decay_patience`` steps without a relative
  ``tol`` improvement) until it reaches ``lr``, where the plateau rule above stops it: the
  features travel their first, long way ten times faster, then settle at the study's step;
* a target whose restart reached a near-zero matching loss (below ``skip_below`` times
  the zero-gradient loss) runs no further restarts;
* optionally (``extra_restarts``, not the study's), a target none of whose restarts got
  there runs further ones from new random starts, within the plain loop's
  ``restarts * iterations`` steps: a restart in a poor local minimum stops at its plateau
  long before ``iterations``, and the steps it did not take go to new starts instead;
* an update of several local steps modelled as unrolled (``AttackTarget.local_training``)
  has the client's local training replayed on the candidates at every step
  (:func:`attacks.local_training.replay_update`) in place of one gradient;
* independent targets (same architecture, input shape and batch size; any global
  weights) share one optimisation: their parameters are stacked and the per-target
  objective is vectorised with ``torch.func.vmap`` over ``torch.func.functional_call``.
  The summed objective has independent per-target gradients, so each target follows the
  same Adam trajectory it would alone (up to floating-point rounding). Finished restarts
  leave the batch and queued ones take their slot (continuous batching). When all targets
  share one set of global weights (the captures of one round) and every matched parameter
  belongs to an ``nn.Linear`` or ``nn.Conv2d`` (the study's CNN), the stacked targets go
  through the model as one batch with plain autograd instead, each target's weight
  gradient formed from its layer inputs and output errors (``_LayerStep``): the same
  objective without ``vmap``'s per-step overhead, which made one target's step slower
  than the plain loop's.

Each restart returns its best iterate by matching loss (evaluated at every step anyway),
not the last one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap
from torch.nn import functional as F

from attacks.features.objective import (
    DISTANCES,
    GradientDistance,
    GradStats,
    Reconstruction,
    grad_stats,
    initial_features,
    resolve_distance,
    total_variation,
)
from attacks.features.settings import Stage1Settings
from attacks.features.step_order import order_labels
from attacks.local_training import replay_update
from attacks.target import AttackTarget

__all__ = ["reconstruct_batched"]

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
# Jobs stepped together up to which _LayerStep beat vmap for the study's CNN on 2 CPU
# cores (about equal from 6 on).
_LAYER_MAX = 4
_RANK_TOL = 1e-6
_U, _V = "#U", "#V"  # keys of a factored reference gradient's factors
_MASK = "#M"  # key suffix of a pruned reference's mask
_KEEP = "#K"  # key of a dual-path target's expected second-path input multiplier


@dataclass(eq=False)
class _Job:
    """One restart of one target, with its Adam state while it is in the batch."""

    target: int
    restart: int
    u: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    lr: float
    cap: int
    steps: int = 0
    best_u: torch.Tensor | None = None
    best_loss: float = float("inf")
    # Best loss at the last significant improvement, and its step: the plateau clock, kept
    # across batch changes (resetting it whenever a batch-mate finished kept restarts in
    # poor minima running until no job had finished for ``patience`` steps).
    mark: float = float("inf")
    mark_step: int = 0
    # The step at which Adam's moments were last reset (a step-size decrease, with
    # ``decay_from_best``): its bias correction counts from there.
    adam_from: int = 0


@dataclass
class _Outcome:
    """What the restarts of one target produced so far."""

    features: torch.Tensor | None = None
    loss: float = float("inf")
    iterations: int = 0
    restarts: int = 0
    seconds: float = 0.0
    # Seconds spent on the target before its group ran (ordering a replayed update's labels).
    before: float = 0.0
    done: bool = False


def _group_key(target: AttackTarget) -> tuple[Any, ...]:
    shapes = tuple((n, tuple(t.shape), t.dtype, str(t.device)) for n, t in target.params.items())
    return (
        type(target.model),
        shapes,
        tuple(target.grads),
        target.batch_size,
        target.input_shape,
        target.frontend,
        target.mask is not None,
        target.second_path is not None,
        # Replayed local training is part of the objective: one plan per group.
        target.local_training,
    )


def _same_params(targets: Sequence[AttackTarget]) -> bool:
    first = targets[0].params
    return all(
        all(t.params[n] is p or torch.equal(t.params[n], p) for n, p in first.items())
        for t in targets[1:]
    )


class _Tap:
    """Forward hooks on linear layers: record each input, add a zero probe to each output.

    The gradient of the loss w.r.t. the probe is the layer's output error ``delta``, so the
    weight gradient ``delta^T a`` never has to be formed: its inner products are
    ``<G, G> = sum((delta delta^T) * (a a^T))`` and ``<G, R> = sum(delta * (a R^T))``,
    a few matrix-vector products instead of several passes over an ``out x in`` tensor.
    """

    def __init__(self, model: nn.Module, weights: dict[str, str]) -> None:
        self.probes: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.out_shapes: dict[str, tuple[int, ...]] = {}
        self.calls: dict[str, int] = dict.fromkeys(weights, 0)
        modules = dict(model.named_modules())
        for weight, module in weights.items():
            modules[module].register_forward_hook(self._hook(weight))

    def _hook(self, weight: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            self.inputs[weight] = args[0]
            self.out_shapes[weight] = tuple(out.shape)
            self.calls[weight] += 1
            probe = self.probes.get(weight)
            return out if probe is None else out + probe

        return hook


def _linear_weights(model: nn.Module, names: list[str]) -> dict[str, str]:
    """``{weight name: module name}`` of the ``nn.Linear`` layers whose weight is matched."""
    found = {}
    for mname, mod in model.named_modules():
        wname = f"{mname}.weight" if mname else "weight"
        if isinstance(mod, nn.Linear) and wname in names:
            found[wname] = mname
    return found


def _times_ref(ref: dict[str, torch.Tensor], w: str, a: torch.Tensor) -> torch.Tensor:
    """``a R^T`` for the reference gradient ``R`` of linear weight ``w``, stored whole or as
    ``U V^T`` (see ``_factor_refs``); ``a`` is ``(..., rows, in)``, the result ``(..., rows, out)``.
    """
    if f"{w}{_V}" in ref:
        return (a @ ref[f"{w}{_V}"]) @ ref[f"{w}{_U}"].transpose(-1, -2)
    return a @ ref[w].transpose(-1, -2)


def _factor_refs(refs: list[dict[str, torch.Tensor]], weights: list[str]) -> list[str]:
    """Store low-rank linear-weight reference gradients as factors, in place; return their names.

    One sample's gradient of a linear weight is an outer product, ``B`` samples' a sum of
    ``B``: reading a ``128 x 12544`` matrix (float64) at every step cost more than the
    matrix-vector products the factors need. A weight is stored as ``U = U_k S_k`` and
    ``V = V_k`` from its SVD when, for every target, the energy beyond rank ``k`` is below
    ``_RANK_TOL**2`` of the total (float32 rounding of an exact outer product is about
    ``1e-15``) and the factors are less than a quarter of the matrix; ``k`` is the largest
    rank any target needs (zero columns pad the others). ``||R||^2`` is still the whole
    matrix's (``_Group.rr_lin``), so the loss differs from the exact one by at most the
    energy left out.
    """
    done = []
    for w in weights:
        svds = [torch.linalg.svd(r[w].double(), full_matrices=False) for r in refs]
        ranks = [1]
        for _, sv, _ in svds:
            energy = sv.square()
            tail = energy.flip(0).cumsum(0).flip(0)  # tail[k]: energy beyond rank k
            ranks.append(int((tail > _RANK_TOL**2 * energy.sum()).sum()))
        k = max(ranks)
        out_f, in_f = refs[0][w].shape
        if k * (out_f + in_f) * 4 >= out_f * in_f:
            continue
        for r, (uu, sv, vh) in zip(refs, svds, strict=True):
            del r[w]
            r[f"{w}{_U}"] = (uu[:, :k] * sv[:k]).contiguous()
            r[f"{w}{_V}"] = vh[:k].T.contiguous()
        done.append(w)
    return done


def _conv_ok(mod: nn.Conv2d) -> bool:
    return mod.groups == 1 and mod.padding_mode == "zeros" and not isinstance(mod.padding, str)


def _layer_plan(model: nn.Module, names: list[str]) -> dict[str, nn.Module] | None:
    """``{module name: module}`` owning the matched parameters, or None when one is elsewhere.

    Every matched parameter must be the weight or bias of an ``nn.Linear`` or of an
    ``nn.Conv2d`` that ``F.unfold`` can mirror (no groups, zero padding given as numbers).
    """
    modules = dict(model.named_modules())
    plan: dict[str, nn.Module] = {}
    for name in names:
        mname, _, pname = name.rpartition(".")
        mod = modules.get(mname)
        if pname not in ("weight", "bias") or not (
            isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and _conv_ok(mod))
        ):
            return None
        plan[mname] = mod
    return plan


def _add_stats(
    stats: tuple[torch.Tensor, ...], g: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Per-target ``(dd, gg, gr, rr)``, each ``(n,)``, plus those of ``g`` ``(n, ...)`` vs ``r``."""
    g, r = g.flatten(1), r.flatten(1)
    dd, gg, gr, rr = stats
    return (
        dd + (g - r).square().sum(1),
        gg + g.square().sum(1),
        gr + (g * r).sum(1),
        rr + r.square().sum(1),
    )


class _LayerStep:
    """The per-target objective for targets that share weights, by layer, without ``vmap``.

    The ``n`` targets' inputs ``(n, B, *input_shape)`` go through the model as one batch of
    ``n * B``; zero probes on each layer's output give its output error ``delta`` (samples do
    not interact, so one backward pass serves all targets), and each target's weight gradient
    is a product of its rows of ``delta`` and of the layer input: ``delta^T a`` for a linear
    layer (kept factored, as in ``_Tap``), ``delta`` times the unfolded input for a
    convolution. Same value and gradient as the ``vmap`` step; the group checks both on a
    random input before using this one.
    """

    def __init__(
        self,
        model: nn.Module,
        plan: dict[str, nn.Module],
        names: list[str],
        params: dict[str, torch.Tensor],
        dist: GradientDistance,
        tv_weight: float,
        tv_reduction: str,
        tv_dims: int,
    ) -> None:
        self.model, self.plan, self.names = model, plan, set(names)
        self.fixed = {**params, **dict(model.named_buffers())}
        self.tap = _Tap(model, {m: m for m in plan})
        self.dist, self.tv_weight = dist, tv_weight
        self.tv = vmap(lambda x: total_variation(x, tv_dims, tv_reduction))
        self.sample_shapes: dict[str, tuple[int, ...]] = {}

    def calls_once(self, input_shape: tuple[int, ...]) -> bool:
        """Run one sample through; record output shapes. False if a layer ran twice."""
        self.tap.calls = dict.fromkeys(self.plan, 0)
        self.tap.probes = {}
        with torch.no_grad():
            u = torch.zeros((1, *input_shape), device=next(iter(self.fixed.values())).device)
            functional_call(self.model, self.fixed, (u,))
        self.sample_shapes = {m: s[1:] for m, s in self.tap.out_shapes.items()}
        convs = [m for m, mod in self.plan.items() if isinstance(mod, nn.Conv2d)]
        conv_inputs_4d = all(self.tap.inputs[m].dim() == 4 for m in convs)
        return all(c == 1 for c in self.tap.calls.values()) and conv_inputs_4d

    def __call__(
        self,
        params: dict[str, torch.Tensor],
        u: torch.Tensor,
        y: torch.Tensor,
        ref: dict[str, torch.Tensor],
        rr_lin: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(grad_u, (objective, matching loss))`` like the ``vmap`` step; ``params`` unused."""
        n, b = u.shape[:2]
        u = u.detach().requires_grad_(True)
        probes = {
            m: u.new_zeros((n * b, *s)).requires_grad_(True) for m, s in self.sample_shapes.items()
        }
        self.tap.probes, self.tap.inputs = probes, {}
        out = functional_call(self.model, self.fixed, (u.reshape(n * b, *u.shape[2:]),))
        # Per target the mean over its B samples, as F.cross_entropy computes it alone.
        loss = F.cross_entropy(out, y.reshape(-1), reduction="sum") / b
        deltas = torch.autograd.grad(loss, list(probes.values()), create_graph=True)
        zero = u.new_zeros(n)
        dd, gg, gr, rr = zero, zero, zero, zero
        for (mname, mod), delta in zip(self.plan.items(), deltas, strict=True):
            a = self.tap.inputs[mname]
            wname, bname = f"{mname}.weight", f"{mname}.bias"
            if isinstance(mod, nn.Linear):
                dl = delta.reshape(n, -1, mod.out_features)
                if wname in self.names:
                    # In float64, with ||R||^2 in rr_lin: see _Group.refs.
                    ai, dl2 = a.reshape(n, -1, mod.in_features).double(), dl.double()
                    gg_w = ((dl2 @ dl2.transpose(1, 2)) * (ai @ ai.transpose(1, 2))).sum((1, 2))
                    gr_w = (dl2 * _times_ref(ref, wname, ai)).sum((1, 2))
                    dd, gg, gr = dd + gg_w - 2 * gr_w, gg + gg_w, gr + gr_w
                gb = dl.sum(1)
            else:
                assert isinstance(mod, nn.Conv2d)
                dl = delta.reshape(n, b, mod.out_channels, -1)
                if wname in self.names:
                    pad = cast(tuple[int, ...], mod.padding)  # _conv_ok: not a string
                    cols = F.unfold(a, mod.kernel_size, mod.dilation, pad, mod.stride)
                    cols = cols.reshape(n, b, cols.shape[1], -1).transpose(1, 2).flatten(2)
                    gw = dl.transpose(1, 2).flatten(2) @ cols.transpose(1, 2)
                    dd, gg, gr, rr = _add_stats((dd, gg, gr, rr), gw, ref[wname])
                gb = dl.sum((1, 3))
            if bname in self.names:
                dd, gg, gr, rr = _add_stats((dd, gg, gr, rr), gb, ref[bname])
        d = self.dist.from_stats(GradStats(dd + rr_lin, gg, gr, rr + rr_lin))
        obj = d + self.tv_weight * self.tv(u)
        (g_u,) = torch.autograd.grad(obj.sum(), u)
        return g_u, (obj.detach(), d.detach())


class _Group:
    """Targets that can share one vectorised optimisation."""

    def __init__(
        self,
        targets: list[AttackTarget],
        labels: list[torch.Tensor],
        dist: GradientDistance,
        tv_weight: float,
        tv_reduction: str,
        factored: bool,
        layerwise: bool = True,
    ) -> None:
        self.targets = targets
        # Per target, where its first restart starts (None: a seeded random draw).
        self.starts: list[torch.Tensor | None] = [None] * len(targets)
        self.names = names = list(targets[0].grads)
        self.device = targets[0].params[names[0]].device
        self.shared = _same_params(targets)
        # A private copy: the hooks must not touch the caller's model.
        model = copy.deepcopy(targets[0].model)
        buffers = dict(model.named_buffers())
        self.labels = [y.to(self.device, torch.long) for y in labels]
        self.refs = [{n: t.grads[n].to(self.device) for n in names} for t in targets]
        # A pruned update is matched on its kept entries: its mask travels with its
        # reference (stacked and vmapped alike). Masked gradients are formed in full, so
        # neither the factored layers nor _LayerStep apply.
        masked = targets[0].mask is not None
        if masked:
            factored = layerwise = False
            for r, t in zip(self.refs, targets, strict=True):
                assert t.mask is not None
                r.update({n + _MASK: t.mask[n].to(self.device) for n in names})
        # A dual-path target runs two forward passes per step (clean and expected masked
        # input), so a layer has two inputs: neither the factored layers nor _LayerStep apply.
        dual = targets[0].second_path is not None
        if dual:
            factored = layerwise = False
            for r, t in zip(self.refs, targets, strict=True):
                assert t.second_path is not None
                r[_KEEP] = t.second_path.to(self.device)
        # An unrolled update replays the client's steps: every step's gradient is formed in
        # full at other weights, so neither the factored layers nor _LayerStep apply.
        plan = targets[0].local_training
        if plan is not None:
            factored = layerwise = False
        lin = _linear_weights(model, names) if factored else {}
        tap = _Tap(model, lin)
        direct = [n for n in names if n not in lin]
        batch = targets[0].batch_size
        if lin:
            with torch.no_grad():
                probe_u = torch.zeros((batch, *targets[0].input_shape), device=self.device)
                functional_call(model, {**targets[0].params, **buffers}, (probe_u,))
            # A layer applied twice has two inputs: its gradient is not one outer product.
            lin = {w: m for w, m in lin.items() if tap.calls[w] == 1}
            direct = [n for n in names if n not in lin]
        # A factored layer's ||G - R||^2 is ||G||^2 - 2 <G, R> + ||R||^2: in float32 its
        # rounding (1e-7 of ||R||^2) hid the last two orders of magnitude of convergence,
        # stopping restarts on noise and picking their best iterate at random.
        for r in self.refs:
            for w in lin:
                r[w] = r[w].double()
        probe_shapes = dict(tap.out_shapes)
        tv_dims = len(targets[0].input_shape)

        def matching(
            params: dict[str, torch.Tensor],
            u: torch.Tensor,
            y: torch.Tensor,
            ref: dict[str, torch.Tensor],
            rr_lin: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            fixed = {w: params[w] for w in lin}

            def loss(
                p: dict[str, torch.Tensor], probes: dict[str, torch.Tensor]
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                tap.probes, tap.inputs = probes, {}
                out = functional_call(model, {**p, **fixed, **buffers}, (u,))
                ce = F.cross_entropy(out, y)
                if dual:
                    aug = functional_call(model, {**p, **fixed, **buffers}, (u * ref[_KEEP],))
                    ce = 0.5 * (ce + F.cross_entropy(aug, y))
                return ce, dict(tap.inputs)

            if plan is not None:
                keep = ref[_KEEP] if dual else None
                own = {n: params[n] for n in direct}
                g = replay_update(model, own, buffers, u, y, plan, keep)
                deltas: dict[str, torch.Tensor] = {}
                inputs: dict[str, torch.Tensor] = {}
            else:
                probes = {w: u.new_zeros(probe_shapes[w]) for w in lin}
                (g, deltas), inputs = grad(loss, argnums=(0, 1), has_aux=True)(
                    {n: params[n] for n in direct}, probes
                )
            mine = [g[n] * ref[n + _MASK] if masked else g[n] for n in direct]
            st = grad_stats(mine, [ref[n] for n in direct])
            dd, gg, gr = st.dd, st.gg, st.gr
            for w in lin:
                delta = deltas[w].reshape(-1, probe_shapes[w][-1]).double()
                a = inputs[w].reshape(delta.shape[0], -1).double()
                gg_w = ((delta @ delta.T) * (a @ a.T)).sum()
                gr_w = (delta * _times_ref(ref, w, a)).sum()
                dd = dd + gg_w - 2 * gr_w
                gg, gr = gg + gg_w, gr + gr_w
            # ||R||^2 of the factored layers is a constant, computed once (see pack): squaring a
            # 128 x 12544 weight at every step took a third of the step's time.
            d = dist.from_stats(GradStats(dd + rr_lin, gg, gr, st.rr + rr_lin))
            return d + tv_weight * total_variation(u, tv_dims, tv_reduction), d

        self.plan = plan
        self.matching = matching
        pdims: dict[str, int | None] = {n: None if self.shared else 0 for n in names}
        self.vmap_step: Callable[..., Any] = vmap(
            grad_and_value(matching, argnums=1, has_aux=True), in_dims=(pdims, 0, 0, 0, 0)
        )
        self.rr_lin = [
            sum((r[w].square().sum() for w in lin), torch.zeros((), dtype=torch.float64)).to(
                self.device
            )
            for r in self.refs
        ]
        # Matching loss of a zero gradient: the scale of "near zero" for each target.
        self.scale = [
            float(dist.direct([torch.zeros_like(r[n]) for n in names], [r[n] for n in names]))
            for r in self.refs
        ]
        self.low_rank = _factor_refs(self.refs, list(lin))
        self.layer_step: _LayerStep | None = None
        if layerwise and self.shared and lin:
            self._try_layerwise(dist, tv_weight, tv_reduction, tv_dims, set(lin))

    def _try_layerwise(
        self,
        dist: GradientDistance,
        tv_weight: float,
        tv_reduction: str,
        tv_dims: int,
        factored: set[str],
    ) -> None:
        """Switch to :class:`_LayerStep` if the model allows it and it agrees with ``vmap``."""
        t0 = self.targets[0]
        model = copy.deepcopy(t0.model)
        plan = _layer_plan(model, self.names)
        if plan is None:
            return
        linear = {f"{m}.weight" for m, mod in plan.items() if isinstance(mod, nn.Linear)}
        if not linear & set(self.names) <= factored:
            return
        params = {n: p.to(self.device) for n, p in t0.params.items()}
        step = _LayerStep(model, plan, self.names, params, dist, tv_weight, tv_reduction, tv_dims)
        if not step.calls_once(t0.input_shape):
            return
        # A model whose samples interact (batch statistics, say) fails this check.
        k = min(2, len(self.targets))
        packed = self.pack(list(range(k)))
        gen = torch.Generator().manual_seed(12345)
        u = torch.randn((k, t0.batch_size, *t0.input_shape), generator=gen).to(self.device)
        g_ref, (_, d_ref) = self.vmap_step(packed[0], u, *packed[1:])
        g_new, (_, d_new) = step(packed[0], u, *packed[1:])
        tol = 1e-3
        if torch.allclose(d_new, d_ref, rtol=tol, atol=tol * float(d_ref.abs().max())) and (
            torch.allclose(g_new, g_ref, rtol=tol, atol=tol * float(g_ref.abs().max()))
        ):
            self.layer_step = step

    @property
    def layerwise(self) -> bool:
        """Whether :class:`_LayerStep` steps small batches (it passed the check against vmap)."""
        return self.layer_step is not None

    def step_fn(
        self,
        params: dict[str, torch.Tensor],
        u: torch.Tensor,
        y: torch.Tensor,
        ref: dict[str, torch.Tensor],
        rr_lin: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(grad_u, (objective, matching loss))`` of the ``n`` stacked jobs ``u``."""
        if self.layer_step is not None and u.shape[0] <= _LAYER_MAX:
            return self.layer_step(params, u, y, ref, rr_lin)
        if self.plan is not None:
            return self._job_loop(params, u, y, ref, rr_lin)
        return self.vmap_step(params, u, y, ref, rr_lin)

    def _job_loop(
        self,
        params: dict[str, torch.Tensor],
        u: torch.Tensor,
        y: torch.Tensor,
        ref: dict[str, torch.Tensor],
        rr_lin: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The step of unrolled targets: one job after another with plain autograd.

        ``vmap`` of a replay's nested gradients cost twice the time per job of this loop
        (kws CNN, batch 1, 2 and 4 local steps: per-job weights after the first step turn
        every convolution into a grouped one), and larger batches did not amortise it.
        """
        u = u.detach().requires_grad_(True)
        objs, ds = [], []
        for i in range(u.shape[0]):
            own = params if self.shared else {n: p[i] for n, p in params.items()}
            obj, d = self.matching(own, u[i], y[i], {k: r[i] for k, r in ref.items()}, rr_lin[i])
            objs.append(obj)
            ds.append(d)
        obj_all = torch.stack(objs)
        (g_u,) = torch.autograd.grad(obj_all.sum(), u)
        return g_u, (obj_all.detach(), torch.stack(ds).detach())

    def pack(
        self, idx: list[int]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Stacked parameters, labels, reference gradients and ``||R||^2`` of factored layers."""
        if self.shared:
            params = {n: self.targets[0].params[n].to(self.device) for n in self.names}
        else:
            params = {
                n: torch.stack([self.targets[i].params[n] for i in idx]).to(self.device)
                for n in self.names
            }
        y = torch.stack([self.labels[i] for i in idx])
        ref = {n: torch.stack([self.refs[i][n] for i in idx]) for n in self.refs[0]}
        return params, y, ref, torch.stack([self.rr_lin[i] for i in idx])


def reconstruct_batched(
    targets: Sequence[AttackTarget],
    labels: Sequence[torch.Tensor],
    settings: Stage1Settings,
    *,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[int, Reconstruction], None] | None = None,
) -> list[Reconstruction]:
    """Stage 1 of ``targets`` in this process; see :func:`attacks.features.reconstruct`.

    The caller has checked that ``labels`` fit ``targets``. Targets of the same
    architecture, input shape and batch size are optimised together (one group each).

    Returns
    -------
    list[Reconstruction]
        One per target, in input order; ``features`` is the best iterate of the best
        restart, ``seconds`` the group's wall time split evenly across its targets. For a
        replayed update ``labels`` are in step order (:mod:`attacks.features.step_order`),
        and ``iterations`` and ``seconds`` include the pass that ordered them.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault(_group_key(t), []).append(i)
    outcomes = [_Outcome() for _ in targets]
    # Replayed updates: which label trained at which step (step_order); its cost is counted.
    labels, ordering, ordered_clips = order_labels(targets, labels, settings, reconstruct_batched)
    for i, (steps, seconds) in ordering.items():
        outcomes[i].iterations += steps
        outcomes[i].before = seconds
    finished = 0

    group_start = time.perf_counter()
    group_size = 1

    def report(i: int) -> None:
        nonlocal finished
        outcomes[i].done = True
        finished += 1
        if on_result is not None:
            elapsed = (time.perf_counter() - group_start) / group_size
            outcomes[i].seconds = outcomes[i].before + elapsed
            on_result(i, _result(labels[i], outcomes[i]))
        if progress is not None:
            progress(finished, len(targets))

    for members in groups.values():
        start = group_start = time.perf_counter()
        group_size = len(members)
        # One plan per group (_group_key), hence one distance.
        unrolled = targets[members[0]].local_training is not None
        dist = DISTANCES.get(resolve_distance(settings.distance, unrolled))
        group = _Group(
            [targets[i] for i in members],
            [labels[i] for i in members],
            dist,
            settings.tv_weight,
            settings.tv_reduction,
            settings.factored,
            settings.layerwise,
        )
        if settings.unrolled_start == "averaged":
            group.starts = [ordered_clips.get(i) for i in members]
        _run_group(group, settings, [outcomes[i] for i in members], members, report)
        share = (time.perf_counter() - start) / len(members)
        for i in members:
            outcomes[i].seconds = outcomes[i].before + share

    return [_result(y, out) for y, out in zip(labels, outcomes, strict=True)]


def _result(y: torch.Tensor, out: _Outcome) -> Reconstruction:
    assert out.features is not None
    return Reconstruction(
        features=out.features.cpu(),
        labels=y.to(torch.long).cpu(),
        matching_loss=out.loss,
        iterations=out.iterations,
        restarts_run=out.restarts,
        seconds=out.seconds,
    )


def _new_job(
    group: _Group, k: int, restart: int, s: Stage1Settings, cap: int | None = None
) -> _Job:
    t = group.targets[k]
    start = group.starts[k] if restart == 0 else None
    if start is not None:
        u = start.detach().clone().to(group.device)
    else:
        u = initial_features(
            (t.batch_size, *t.input_shape), s.seed, restart, group.device, t.init_std
        )
    return _Job(
        target=k,
        restart=restart,
        u=u,
        m=torch.zeros_like(u),
        v=torch.zeros_like(u),
        lr=s.first_lr,
        cap=s.iterations if cap is None else cap,
    )


def _run_group(
    group: _Group,
    s: Stage1Settings,
    outcomes: list[_Outcome],
    members: list[int],
    report: Callable[[int], None],
) -> None:
    """Optimise every restart of ``group`` with continuous batching."""
    queue = [_new_job(group, k, 0, s) for k in range(len(group.targets))]
    active: list[_Job] = []
    while queue or active:
        while queue and len(active) < s.max_batch:
            active.append(queue.pop(0))
        finished = _optimise(group, s, active)
        still = []
        for job in active:
            if job in finished:
                if _retire(group, s, job, outcomes[job.target], queue):
                    report(members[job.target])
            else:
                still.append(job)
        active = still


def _retire(
    group: _Group,
    s: Stage1Settings,
    job: _Job,
    out: _Outcome,
    queue: list[_Job],
) -> bool:
    """Record a finished restart; queue the next one or return True when the target is done."""
    out.iterations += job.steps
    out.restarts += 1
    if job.best_u is not None and (out.features is None or job.best_loss < out.loss):
        out.features, out.loss = job.best_u, job.best_loss
    if out.loss <= s.skip_below * group.scale[job.target]:
        return True
    nxt = job.restart + 1
    if nxt < s.restarts:
        queue.append(_new_job(group, job.target, nxt, s))
        return False
    # An extra restart shorter than the stop rule's patience could not even plateau.
    left = s.restarts * s.iterations - out.iterations
    if nxt < s.restarts + s.extra_restarts and left >= s.patience:
        queue.append(_new_job(group, job.target, nxt, s, cap=min(s.iterations, left)))
        return False
    return True


def _optimise(group: _Group, s: Stage1Settings, jobs: list[_Job]) -> set[_Job]:
    """Step ``jobs`` together until at least one finishes; their state is written back."""
    params, y, ref, rr_lin = group.pack([j.target for j in jobs])
    n = len(jobs)
    dev = group.device
    u = torch.stack([j.u for j in jobs])
    m = torch.stack([j.m for j in jobs])
    v = torch.stack([j.v for j in jobs])
    steps = torch.tensor([j.steps for j in jobs], device=dev, dtype=torch.float64)
    adam_from = torch.tensor([j.adam_from for j in jobs], device=dev, dtype=torch.float64)
    best_u = torch.stack([j.best_u if j.best_u is not None else j.u for j in jobs])
    best = torch.tensor([j.best_loss for j in jobs], device=dev, dtype=torch.float64)
    mark = torch.tensor([j.mark for j in jobs], device=dev, dtype=torch.float64)
    mark_step = torch.tensor([j.mark_step for j in jobs], device=dev, dtype=torch.float64)
    scale = torch.tensor([group.scale[j.target] for j in jobs], device=dev, dtype=torch.float64)
    lr = torch.tensor([j.lr for j in jobs], device=dev, dtype=torch.float64)
    # A hair above lr: "at the final step size" despite rounding in the products.
    final_lr = s.lr * (1 + 1e-9)
    cap = torch.tensor([j.cap for j in jobs], device=dev, dtype=torch.float64)
    view = (n,) + (1,) * (u.dim() - 1)
    done: set[_Job] = set()
    while not done:
        for _ in range(s.check_every):
            g_u, (_, d) = group.step_fn(params, u, y, ref, rr_lin)
            d = d.detach().double()
            better = d < best
            best = torch.where(better, d, best)
            best_u = torch.where(better.view(view), u, best_u)
            big = best < mark * (1.0 - s.tol)
            mark = torch.where(big, best, mark)
            mark_step = torch.where(big, steps, mark_step)
            # Adam, exactly as torch.optim.Adam computes it, with one step count per job.
            steps = steps + 1
            m = _BETA1 * m + (1 - _BETA1) * g_u
            v = _BETA2 * v + (1 - _BETA2) * g_u.square()
            c1 = (1 - _BETA1 ** (steps - adam_from)).view(view).to(u.dtype)
            c2 = (1 - _BETA2 ** (steps - adam_from)).view(view).to(u.dtype)
            u = u - (lr.view(view).to(u.dtype) / c1) * m / (v.sqrt() / c2.sqrt() + _EPS)
            if bool((steps >= cap).any()):
                break
        if s.first_lr > s.lr:
            decay = (lr > final_lr) & (steps - mark_step >= s.decay_patience)
            lr = torch.where(decay, (lr * s.lr_decay).clamp(min=s.lr), lr)
            if s.decay_from_best and bool(decay.any()):
                # The smaller step continues from the best iterate with fresh moments: a
                # large step can leave the basin of its best point and never return to it,
                # and moments from the large steps would shrink the small ones.
                back = decay.view(view)
                u = torch.where(back, best_u, u)
                m = torch.where(back, torch.zeros_like(m), m)
                v = torch.where(back, torch.zeros_like(v), v)
                adam_from = torch.where(decay, steps, adam_from)
            # Improvement is counted afresh at the new step size.
            mark = torch.where(decay, best, mark)
            mark_step = torch.where(decay, steps, mark_step)
        stop = (
            (steps >= cap)
            | ((steps - mark_step >= s.patience) & (lr <= final_lr))
            | (best <= s.floor * scale)
            | ~torch.isfinite(best)
        )
        for i in torch.nonzero(stop).flatten().tolist():
            done.add(jobs[i])
    best_l, mark_l, mark_step_l = best.tolist(), mark.tolist(), mark_step.tolist()
    lr_l = lr.tolist()
    for i, job in enumerate(jobs):
        job.u, job.m, job.v, job.lr = u[i], m[i], v[i], lr_l[i]
        job.steps = int(steps[i])
        job.best_u, job.best_loss = best_u[i], best_l[i]
        job.mark, job.mark_step = mark_l[i], int(mark_step_l[i])
        job.adam_from = int(adam_from[i])
    return done

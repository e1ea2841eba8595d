"""AASIST and AASIST-L spoofing countermeasures on raw waveforms.

Jung, Heo, Tak, Shim, Chung, Lee, Yu and Evans, "AASIST: Audio anti-spoofing using
integrated spectro-temporal graph attention networks", ICASSP 2022.

Pipeline, for a waveform ``(B, T)`` at 16 kHz:

1. fixed sinc band-pass filterbank (70 Mel-spaced filters, 129 taps), ``|·|``,
   max-pool 3×3 over (filter, time), BN, SELU: ``(B, 1, 23, T')``;
2. six 2-D residual blocks (conv, BN, SELU, conv, shortcut), each ending in a (1, 3)
   max-pool: ``(B, C, 23, T'')``;
3. spectral graph (23 nodes: max over time, plus a positional embedding) and temporal
   graph (``T''`` nodes: max over frequency), each through a graph attention layer and
   graph pooling;
4. two branches of two heterogeneous stacking graph attention layers (HS-GAL) with a
   learnable master node, graph pooling in between; element-wise max over the branches;
5. readout ``[max|T|, mean T, max|S|, mean S, master]``, dropout, linear to the logits.

The published configurations have 297,866 (AASIST) and 85,306 (AASIST-L) parameters, and
these modules match them exactly. Loaded with the authors' checkpoints
(:func:`fedspeech.models.reference.load_reference_weights`), AASIST and AASIST-L give the
authors' implementation's logits to float32 rounding (``tests/models/test_reference_weights.py``).
Logit index 1 is bona fide, 0 spoof.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedspeech.errors import ConfigError

__all__ = [
    "AASIST",
    "AASISTL",
    "AASISTXS",
    "AasistConfig",
    "GraphAttentionLayer",
    "GraphPool",
    "HSGraphAttentionLayer",
    "ResidualBlock",
    "SincFilterbank",
]


@dataclass(frozen=True)
class AasistConfig:
    """Architecture settings, named as in the reference configuration files.

    Parameters
    ----------
    first_conv : int
        Sinc filter length; an even value is made odd (128 → 129 taps).
    filts : tuple
        ``(n_sinc_filters, (c_in, c_out) × 4)``: the first four residual blocks; blocks
        five and six repeat the fourth.
    gat_dims : tuple[int, int]
        Output width of the GAT layers and of the HS-GAL layers.
    pool_ratios : tuple[float, ...]
        Kept fractions for the spectral pool, the temporal pool and the HS-GAL pools (the
        fourth entry is unused, as in the reference).
    temperatures : tuple[float, ...]
        Softmax temperatures of GAT-S, GAT-T and the HS-GAL layers (the fourth entry is
        unused: the reference gives every HS-GAL the third).
    sample_rate : int
        Sampling rate the sinc filters are designed for.
    dropout : bool
        True (the reference) keeps every dropout layer; False sets their rates to 0. Dropout
        masks are drawn on the client and never shared, so a server attacking a shared
        gradient cannot reproduce the network the gradient came from; without dropout it can
        (used to measure the gradient-inversion audit's best case, ``--no-dropout``).
    pre_activation : bool
        Run each residual block's BN + SELU before its first convolution (fedspeech's
        ``aasist-xs``, as it was measured). False (the published models): the block's
        convolution reads its input itself, as the authors' implementation does.
    float32_sinc : bool
        Build the sinc filters in float32, as the published weights' filters were (True);
        False: exactly in float64 (``aasist-xs``, as it was measured).
    channels_last : bool
        Keep the convolution weights in channels-last layout, so that the CPU convolutions
        of the residual blocks run in it (about 0.6x the time of a forward and backward pass
        of AASIST-L, ``benchmarks/bench_aasist.py``). The values are those of the standard
        layout to float32 rounding; ``aasist-xs`` keeps the standard layout, as measured.
    """

    first_conv: int = 128
    filts: tuple[Any, ...] = (70, (1, 32), (32, 32), (32, 64), (64, 64))
    gat_dims: tuple[int, int] = (64, 32)
    pool_ratios: tuple[float, ...] = (0.5, 0.7, 0.5, 0.5)
    temperatures: tuple[float, ...] = (2.0, 2.0, 100.0, 100.0)
    sample_rate: int = 16000
    dropout: bool = True
    pre_activation: bool = False
    float32_sinc: bool = True
    channels_last: bool = True

    def updated(self, overrides: Mapping[str, Any]) -> AasistConfig:
        """A copy with ``overrides`` applied; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown AASIST setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        cfg = replace(self, **overrides)
        if len(cfg.filts) != 5 or any(len(f) != 2 for f in cfg.filts[1:]):
            raise ConfigError(f"filts must be (n_sinc, (in, out) × 4), got {cfg.filts!r}")
        if cfg.filts[1][0] != 1:
            raise ConfigError("the first residual block must take 1 input channel")
        if len(cfg.gat_dims) != 2 or len(cfg.pool_ratios) < 3 or len(cfg.temperatures) < 4:
            raise ConfigError("gat_dims needs 2 entries, pool_ratios 3+, temperatures 4")
        return cfg


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class SincFilterbank(nn.Module):
    """Fixed band-pass sinc filters with Mel-spaced cut-offs (RawNet2 / AASIST front end).

    Filter ``i`` passes ``[f_i, f_{i+1}]`` where the edges are equally spaced on the Mel
    scale from 0 Hz to Nyquist; each ideal band-pass impulse response is the difference of
    two low-pass sincs, Hamming-windowed. The filters are a non-persistent buffer, not
    parameters, as in the AASIST reference (which keeps them fixed).

    Parameters
    ----------
    out_channels : int
        Number of filters.
    kernel_size : int
        Filter length; even lengths are increased by one so the filters are symmetric.
    sample_rate : int
        Sampling rate in Hz.
    """

    filters: torch.Tensor

    def __init__(
        self,
        out_channels: int,
        kernel_size: int,
        sample_rate: int = 16000,
        float32_design: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            kernel_size += 1
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        edges = _mel_to_hz(
            np.linspace(0.0, _hz_to_mel(np.array(sample_rate / 2.0)), out_channels + 1)
        )
        # The sinc arguments are rounded to float32 before the sinc, and the windowed product
        # is taken in float32: the precision the published weights' filters were built in.
        # Filters exact in float64 differ from those by up to 1.5e-7, which the trained
        # network amplifies to 6e-5 in its logits.
        if not float32_design:
            n = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2.0
            low, high = edges[:-1, None] / sample_rate, edges[1:, None] / sample_rate
            exact = 2.0 * high * np.sinc(2.0 * high * n) - 2.0 * low * np.sinc(2.0 * low * n)
            filters = torch.tensor(exact * np.hamming(kernel_size)[None, :], dtype=torch.float32)
            self.register_buffer("filters", filters.unsqueeze(1), persistent=False)
            return
        taps = np.arange(kernel_size, dtype=np.float32) - np.float32((kernel_size - 1) / 2)

        def lowpass(cutoff: np.ndarray) -> np.ndarray:
            """Ideal low-pass impulse responses ``(filters, taps)`` for cut-offs in Hz."""
            arg = taps * (2.0 * cutoff[:, None]).astype(np.float32) / np.float32(sample_rate)
            return 2.0 * cutoff[:, None] / sample_rate * np.sinc(arg).astype(np.float64)

        ideal = (lowpass(edges[1:]) - lowpass(edges[:-1])).astype(np.float32)
        bank = np.hamming(kernel_size).astype(np.float32)[None, :] * ideal
        self.register_buffer("filters", torch.from_numpy(bank).unsqueeze(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter ``(B, 1, T)`` into ``(B, out_channels, T - kernel_size + 1)``."""
        return F.conv1d(x, self.filters.to(x.dtype))


class ResidualBlock(nn.Module):
    """2-D residual block as published: conv(2,3), BN, SELU, conv(2,3), + shortcut, pool.

    The two (2, 3) convolutions pad the frequency axis once, so frequency size is kept; a
    (1, 3) convolution matches channels on the shortcut; a (1, 3) max-pool divides time
    by three.

    Every block but the first has a BN + SELU "pre-activation" (``pre``) whose output the
    reference implementation computes and then discards: its first convolution reads the
    block input itself. The published weights were trained that way, so ``pre`` holds
    checkpoint weights (and counts towards the published parameter counts) but is not run:
    it changes no output, and its running statistics stay as loaded.
    :meth:`AASIST.forward` links its parameters to the logits with a zero term, so that their
    gradient is an exact zero rather than missing.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    first : bool
        No ``pre`` (the published first block has none).
    pre_activation : bool
        Run ``pre`` before the first convolution (``aasist-xs``: a pre-activation block);
        False, the published wiring, leaves it unread.
    """

    def __init__(
        self, in_channels: int, out_channels: int, first: bool = False, pre_activation: bool = False
    ) -> None:
        super().__init__()
        self.pre_activation = pre_activation
        self.pre: nn.Module = (
            nn.Identity() if first else nn.Sequential(nn.BatchNorm2d(in_channels), nn.SELU())
        )
        self.conv1 = nn.Conv2d(in_channels, out_channels, (2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.SELU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, (2, 3), padding=(0, 1))
        self.shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, (1, 3), padding=(0, 1))
            if in_channels != out_channels
            else nn.Identity()
        )
        self.pool = nn.MaxPool2d((1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, F, T)`` → ``(B, C_out, F, T // 3)``."""
        inp = self.pre(x) if self.pre_activation else x
        out = self.conv2(self.act(self.bn2(self.conv1(inp))))
        return self.pool(out + self.shortcut(x))


def _node_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over all nodes of all graphs: ``(B, N, D)`` → ``(B, N, D)``."""
    b, n, d = x.shape
    return bn(x.reshape(b * n, d)).reshape(b, n, d)


def _pairwise_products(x: torch.Tensor) -> torch.Tensor:
    """Element-wise products of every node pair: ``(B, N, D)`` → ``(B, N, N, D)``."""
    return x.unsqueeze(2) * x.unsqueeze(1)


def _xavier_vector(dim: int) -> nn.Parameter:
    weight = torch.empty(dim, 1)
    nn.init.xavier_normal_(weight)
    return nn.Parameter(weight)


class GraphAttentionLayer(nn.Module):
    """Graph attention on a fully connected graph (GAT-S / GAT-T of AASIST).

    The attention logit of the edge ``(i, j)`` is ``w · tanh(W_a (h_i ⊙ h_j)) / τ``,
    normalised by softmax over ``j``; the output is
    ``SELU(BN(W_1 Σ_j a_ij h_j + W_2 h_i))``.

    Parameters
    ----------
    in_dim, out_dim : int
        Node feature sizes.
    temperature : float
        Softmax temperature ``τ``.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = _xavier_vector(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(0.2)
        self.act = nn.SELU()
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, in_dim)`` → ``(B, N, out_dim)``."""
        x = self.input_drop(x)
        logits = torch.tanh(self.att_proj(_pairwise_products(x))) @ self.att_weight
        att = torch.softmax(logits.squeeze(-1) / self.temperature, dim=-1)
        out = self.proj_with_att(att @ x) + self.proj_without_att(x)
        return self.act(_node_batch_norm(self.bn, out))


class HSGraphAttentionLayer(nn.Module):
    """Heterogeneous stacking graph attention layer (HS-GAL) with a master node.

    Temporal and spectral nodes are projected to a common space and stacked into one
    graph; the attention vector depends on the edge type (T–T, S–S or T–S). A master node
    attends to every node (its own attention vector) and is updated without BN.

    Parameters
    ----------
    in_dim, out_dim : int
        Node feature sizes.
    temperature : float
        Softmax temperature of both attentions.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_proj_master = nn.Linear(in_dim, out_dim)
        self.att_weight11 = _xavier_vector(out_dim)
        self.att_weight22 = _xavier_vector(out_dim)
        self.att_weight12 = _xavier_vector(out_dim)
        self.att_weight_master = _xavier_vector(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_att_master = nn.Linear(in_dim, out_dim)
        self.proj_without_att_master = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(0.2)
        self.act = nn.SELU()
        self.temperature = temperature

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, master: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update ``x1 (B, N1, in)``, ``x2 (B, N2, in)`` and ``master (B or 1, 1, in)``.

        Returns ``(B, N1, out)``, ``(B, N2, out)`` and ``(B, 1, out)``; ``master``
        defaults to the mean of all nodes.
        """
        n1, n2 = x1.shape[1], x2.shape[1]
        x = torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1)
        if master is None:
            master = x.mean(dim=1, keepdim=True)
        x = self.input_drop(x)

        # One attention vector per edge type: 0 = type1-type1, 1 = mixed, 2 = type2-type2.
        node_type = torch.cat([x.new_zeros(n1, dtype=torch.long), x.new_ones(n2, dtype=torch.long)])
        edge_type = node_type[:, None] + node_type[None, :]
        weights = torch.cat([self.att_weight11, self.att_weight12, self.att_weight22], dim=1)
        hidden = torch.tanh(self.att_proj(_pairwise_products(x)))
        logits = (hidden * weights.t()[edge_type]).sum(-1)
        att = torch.softmax(logits / self.temperature, dim=-1)

        m_hidden = torch.tanh(self.att_proj_master(x * master))
        m_att = torch.softmax((m_hidden @ self.att_weight_master) / self.temperature, dim=1)
        master = self.proj_with_att_master(m_att.transpose(1, 2) @ x) + (
            self.proj_without_att_master(master)
        )

        out = self.proj_with_att(att @ x) + self.proj_without_att(x)
        out = self.act(_node_batch_norm(self.bn, out))
        return out[:, :n1], out[:, n1:], master


class GraphPool(nn.Module):
    """Graph pooling (Gao and Ji's gPool): keep the top-scoring fraction of nodes.

    Scores are ``sigmoid(w · h)``; kept nodes are multiplied by their score so the
    projection gets gradients.

    Parameters
    ----------
    ratio : float
        Fraction of nodes kept (at least one).
    in_dim : int
        Node feature size.
    dropout : float
        Dropout on the scorer's input.
    """

    def __init__(self, ratio: float, in_dim: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.ratio = ratio
        self.proj = nn.Linear(in_dim, 1)
        self.drop: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` → ``(B, max(int(N · ratio), 1), D)``."""
        scores = torch.sigmoid(self.proj(self.drop(h)))
        keep = max(int(h.shape[1] * self.ratio), 1)
        idx = torch.topk(scores, keep, dim=1).indices.expand(-1, -1, h.shape[2])
        return torch.gather(h * scores, 1, idx)


class AASIST(nn.Module):
    """AASIST spoofing countermeasure on raw waveforms (Jung et al., ICASSP 2022).

    Parameters
    ----------
    num_classes : int
        Output logits; 2 for spoof (0) / bona fide (1).
    num_samples : int
        Nominal clip length (64600 in the paper, about 4 s); ``forward`` accepts any
        length of at least :attr:`min_samples`.
    **overrides
        Fields of :class:`AasistConfig` (``filts``, ``gat_dims``, ``pool_ratios``,
        ``temperatures``, ``first_conv``, ``sample_rate``, ``dropout``).

    Examples
    --------
    >>> model = AASIST()
    >>> sum(p.numel() for p in model.parameters())
    297866
    >>> model.eval()(torch.zeros(1, 4000)).shape
    torch.Size([1, 2])
    """

    DEFAULTS: ClassVar[AasistConfig] = AasistConfig()

    def __init__(self, num_classes: int = 2, num_samples: int = 64600, **overrides: Any) -> None:
        super().__init__()
        cfg = self.DEFAULTS.updated(overrides)
        self.config = cfg
        self.num_samples = num_samples
        n_sinc, *blocks = cfg.filts
        channels = int(blocks[-1][1])
        gat1, gat2 = cfg.gat_dims
        ratios, temps = cfg.pool_ratios, cfg.temperatures

        self.sinc = SincFilterbank(int(n_sinc), cfg.first_conv, cfg.sample_rate, cfg.float32_sinc)
        self.first_bn = nn.BatchNorm2d(1)
        self.selu = nn.SELU()
        specs: Sequence[Sequence[int]] = [*blocks, blocks[-1], blocks[-1]]
        self.encoder = nn.Sequential(
            *(
                ResidualBlock(int(c[0]), int(c[1]), first=i == 0, pre_activation=cfg.pre_activation)
                for i, c in enumerate(specs)
            )
        )
        self.num_spectral_nodes = int(n_sinc) // 3
        self.pos_spectral = nn.Parameter(torch.randn(1, self.num_spectral_nodes, channels))
        self.master1 = nn.Parameter(torch.randn(1, 1, gat1))
        self.master2 = nn.Parameter(torch.randn(1, 1, gat1))

        self.gat_spectral = GraphAttentionLayer(channels, gat1, temps[0])
        self.gat_temporal = GraphAttentionLayer(channels, gat1, temps[1])
        self.pool_spectral = GraphPool(ratios[0], gat1)
        self.pool_temporal = GraphPool(ratios[1], gat1)
        self.hs_gal11 = HSGraphAttentionLayer(gat1, gat2, temps[2])
        self.hs_gal12 = HSGraphAttentionLayer(gat2, gat2, temps[2])
        self.hs_gal21 = HSGraphAttentionLayer(gat1, gat2, temps[2])
        self.hs_gal22 = HSGraphAttentionLayer(gat2, gat2, temps[2])
        self.pool_hs1 = GraphPool(ratios[2], gat2)
        self.pool_ht1 = GraphPool(ratios[2], gat2)
        self.pool_hs2 = GraphPool(ratios[2], gat2)
        self.pool_ht2 = GraphPool(ratios[2], gat2)

        self.drop_way = nn.Dropout(0.2)
        self.drop = nn.Dropout(0.5)
        self.out_layer = nn.Linear(5 * gat2, num_classes)
        if not cfg.dropout:
            for mod in self.modules():
                if isinstance(mod, nn.Dropout):
                    mod.p = 0.0
        if cfg.channels_last:
            # Only the 4-D convolution weights change layout; values and names are the same.
            for conv in self.encoder.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.data = conv.weight.data.contiguous(
                        memory_format=torch.channels_last
                    )

        if num_samples < self.min_samples:
            raise ConfigError(
                f"AASIST needs clips of at least {self.min_samples} samples, got {num_samples}"
            )

    @property
    def min_samples(self) -> int:
        """Shortest input leaving one temporal node after the front end and six blocks."""
        # Time is divided by 3 in the front-end pool and in each of the six blocks.
        return self.sinc.kernel_size - 1 + 3 ** (1 + len(self.encoder))

    def _branch(
        self,
        out_t: torch.Tensor,
        out_s: torch.Tensor,
        master: torch.Tensor,
        layers: tuple[HSGraphAttentionLayer, HSGraphAttentionLayer, GraphPool, GraphPool],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first, second, pool_s, pool_t = layers
        t, s, m = first(out_t, out_s, master)
        s, t = pool_s(s), pool_t(t)
        t_aug, s_aug, m_aug = second(t, s, m)
        return t + t_aug, s + s_aug, m + m_aug

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden layer ``(B, 5 · gat_dims[1])`` from waveforms ``(B, T)`` or ``(B, 1, T)``.

        ``[max|T|, mean T, max|S|, mean S, master]``, before the readout dropout.
        """
        if x.dim() == 3:
            x = x.squeeze(1)
        if x.shape[-1] < self.min_samples:
            raise ValueError(f"AASIST needs at least {self.min_samples} samples, got {x.shape[-1]}")
        h = self.sinc(x.unsqueeze(1)).unsqueeze(1)  # (B, 1, filters, T')
        h = self.selu(self.first_bn(F.max_pool2d(h.abs(), (3, 3))))
        e = self.encoder(h)  # (B, C, spectral nodes, temporal nodes)

        e_s = e.abs().amax(dim=3).transpose(1, 2) + self.pos_spectral
        out_s = self.pool_spectral(self.gat_spectral(e_s))
        e_t = e.abs().amax(dim=2).transpose(1, 2)
        out_t = self.pool_temporal(self.gat_temporal(e_t))

        t1, s1, m1 = self._branch(
            out_t,
            out_s,
            self.master1,
            (self.hs_gal11, self.hs_gal12, self.pool_hs1, self.pool_ht1),
        )
        t2, s2, m2 = self._branch(
            out_t,
            out_s,
            self.master2,
            (self.hs_gal21, self.hs_gal22, self.pool_hs2, self.pool_ht2),
        )
        d = self.drop_way
        out_t = torch.maximum(d(t1), d(t2))
        out_s = torch.maximum(d(s1), d(s2))
        master = torch.maximum(d(m1), d(m2))

        return torch.cat(
            [
                out_t.abs().amax(dim=1),
                out_t.mean(dim=1),
                out_s.abs().amax(dim=1),
                out_s.mean(dim=1),
                master.squeeze(1),
            ],
            dim=1,
        )

    def _unread_parameters_zero(self) -> torch.Tensor:
        """An exact zero that depends on every parameter the forward pass does not read.

        Those are the residual blocks' ``pre`` layers (see :class:`ResidualBlock`). Adding
        this to the logits gives them a zero gradient instead of none, so that
        ``torch.autograd.grad`` over all parameters (``compute_gradient``) works as before.
        An empty slice's sum is zero whatever the weights hold, NaN included.
        """
        zero = self.out_layer.bias.new_zeros(())
        for block in self.encoder:
            assert isinstance(block, ResidualBlock)
            if block.pre_activation:
                continue
            for p in block.pre.parameters():
                zero = zero + p.reshape(-1)[:0].sum()
        return zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from waveforms ``(B, T)`` or ``(B, 1, T)``."""
        logits = self.out_layer(self.drop(self.embed(x)))
        return logits + self._unread_parameters_zero()  # type: ignore[no-any-return]


class AASISTL(AASIST):
    """AASIST-L, the light AASIST of the same paper (85,306 parameters).

    Same architecture with 24-channel late residual blocks, ``gat_dims (24, 32)`` and
    pool ratios ``(0.4, 0.5, 0.7, 0.5)``; see :class:`AASIST` for the arguments.

    Examples
    --------
    >>> sum(p.numel() for p in AASISTL().parameters())
    85306
    """

    DEFAULTS: ClassVar[AasistConfig] = AasistConfig(
        filts=(70, (1, 32), (32, 32), (32, 24), (24, 24)),
        gat_dims=(24, 32),
        pool_ratios=(0.4, 0.5, 0.7, 0.5),
    )


class AASISTXS(AASIST):
    """AASIST-XS: fedspeech's reduced AASIST for CPU-only federated simulations (24,922 params).

    Not a published configuration. Same architecture as :class:`AASIST` with 40 sinc filters
    of 65 taps (13 spectral nodes instead of 23), 8/16-channel residual blocks, ``gat_dims
    (16, 16)`` and AASIST-L's pool ratios. One forward and backward pass of 16 half-second
    clips takes about 0.35 s on one CPU thread, against about 5 s for AASIST-L, which is what
    makes a 50-client ``--task sdd`` run fit in minutes; use ``aasist-l`` or ``aasist`` for
    the published models.

    Examples
    --------
    >>> sum(p.numel() for p in AASISTXS().parameters())
    24922
    """

    DEFAULTS: ClassVar[AasistConfig] = AasistConfig(
        first_conv=64,
        filts=(40, (1, 8), (8, 8), (8, 16), (16, 16)),
        gat_dims=(16, 16),
        pool_ratios=(0.4, 0.5, 0.7, 0.5),
        # As measured in docs/results: pre-activation blocks, float64 sinc design.
        pre_activation=True,
        float32_sinc=False,
        channels_last=False,
    )

"""LiverUNet's forward pass in bounded memory: the full-resolution layers a slab of rows at a time.

At the input's resolution a layer's output is 20-40 channels of the whole 189 x 162 x 162 tile, 0.4-0.7 GiB
in float32, and the plain forward holds up to four of them at once (2.2 GiB for one tile, whatever the
study's size). Each layer is a convolution, which is local (output rows need the input rows next to them),
followed by a normalisation over the whole map, which is global (a mean and a variance per channel). So
here each full-resolution map is computed slab by slab (rows along a0) while its statistics are gathered,
and normalised on the fly as the next layer reads it: down1a is recomputed per slab instead of stored, the
upsampled path per slab from its 1/3-resolution map, and the skip connection (down1b, cropped to the
output window) per slab from the input when up1a reads it; a stored map's slabs are dropped as soon as the
next layer has read past them. The largest thing alive is one 40-channel map of the output window (up1a's,
0.45 GiB). Recomputing down1a and down1b adds about a fifth to the arithmetic, which the smaller working
set pays back (one tile on one core: 16-18 s, as the plain forward). The levels below (1/27 of the voxels
and fewer) run as in LiverUNet.forward. Same arithmetic per voxel; only the
statistics are summed in another order (float64), which moves the output by about 1e-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ai.ct_liver.network import _EPS, _SLOPE, INPUT_MULTIPLE, SHRINK, LiverUNet, norm_act, upsample

SLAB = 9                        # rows per slab: a multiple of 3, so that each slab max-pools on its own


class _Stats:
    """Mean and variance per channel of a map seen slab by slab (Chan et al.'s pairwise update, in float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, slab: torch.Tensor) -> None:
        """slab: (C, rows, a1, a2)."""
        x = slab.float()
        n = x[0].numel()
        if n == 0:
            return
        mean = x.mean(dim=(1, 2, 3), dtype=torch.float32)
        m2 = (x - mean[:, None, None, None]).square_().sum(dim=(1, 2, 3))
        mean, m2 = mean.double(), m2.double()
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.n * n / total)
        self.n = total

    def norm_act_(self, slab: torch.Tensor) -> torch.Tensor:
        """norm_act of these rows with the whole map's statistics, in place."""
        assert self.mean is not None and self.m2 is not None, "statistics of an empty map"
        mean = self.mean.to(slab.dtype)[:, None, None, None]
        std = (self.m2 / self.n).sqrt().add(_EPS).to(slab.dtype)[:, None, None, None]
        return F.leaky_relu_(slab.sub_(mean).div_(std), _SLOPE)


class _Rows:
    """A map of `n` rows kept as slabs (start row, tensor of shape (C, rows, a1, a2))."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[tuple[int, torch.Tensor]] = []

    def put(self, start: int, part: torch.Tensor) -> None:
        self.parts.append((start, part))

    def get(self, lo: int, hi: int, stats: _Stats) -> torch.Tensor:
        """norm_act of rows [lo, hi), zero outside the map (the next convolution's 'same' padding)."""
        a, b = max(lo, 0), min(hi, self.n)
        first = self.parts[0][1]
        out = first.new_empty((first.shape[0], b - a, *first.shape[2:]))
        for start, part in self.parts:
            i, j = max(a, start), min(b, start + part.shape[1])
            if i < j:
                out[:, i - a:j - a] = part[:, i - start:j - start]
        return _pad_rows(stats.norm_act_(out), lo, hi, a, b)

    def drop_before(self, row: int) -> None:
        self.parts = [(s, p) for s, p in self.parts if s + p.shape[1] > row]

    def stats(self) -> _Stats:
        st = _Stats()
        for _, part in self.parts:
            st.add(part)
        return st


def _conv(conv: nn.Conv3d, rows: torch.Tensor, weight: torch.Tensor | None = None, with_bias: bool = True,
          pad_in_plane: bool = True) -> torch.Tensor:
    """`conv` over (C, r + 2h, a1, a2) rows whose a0 halo h is already there: (Cout, r, a1, a2); without
    pad_in_plane, the rows carry their in-plane halo too."""
    pad = conv.padding
    assert isinstance(pad, tuple)
    w = conv.weight if weight is None else weight
    return F.conv3d(rows[None], w, conv.bias if with_bias else None,
                    padding=(0, pad[1], pad[2]) if pad_in_plane else 0)[0]


def _pad_rows(rows: torch.Tensor, lo: int, hi: int, a: int, b: int) -> torch.Tensor:
    """Rows [a, b) as rows [lo, hi), zero where they are missing."""
    return rows if (a, b) == (lo, hi) else F.pad(rows, (0, 0, 0, 0, a - lo, hi - b))


def _zero_outside(rows: torch.Tensor, lo: int, n: int) -> torch.Tensor:
    """Zero the rows of (C, r, ...) that start at `lo` and fall outside [0, n)."""
    if lo < 0:
        rows[:, :-lo] = 0
    if lo + rows.shape[1] > n:
        rows[:, n - lo:] = 0
    return rows


def lean_forward(net: LiverUNet, x: torch.Tensor, slab: int = SLAB) -> torch.Tensor:
    """net(x[None, None])[0, 0] for one (a0, a1, a2) tile, in bounded memory (module docstring)."""
    if x.ndim != 3 or any(n % INPUT_MULTIPLE for n in x.shape):
        raise ValueError(f"input size {tuple(x.shape)} must be 3-D and a multiple of {INPUT_MULTIPLE} per axis")
    if slab < 3 or slab % 3:
        raise ValueError(f"slab must be a positive multiple of 3, got {slab}")
    convs = net.convs
    a0 = x.shape[0]
    out_size = tuple(n - SHRINK for n in x.shape)
    crop = SHRINK // 2
    image = x[None]

    def input_rows(lo: int, hi: int) -> torch.Tensor:
        rows = image.new_zeros((1, hi - lo, *image.shape[2:]))
        rows[:, max(lo, 0) - lo:min(hi, a0) - lo] = image[:, max(lo, 0):min(hi, a0)]
        return rows

    def down1a_rows(lo: int, hi: int) -> torch.Tensor:
        return _conv(convs["down1a"], input_rows(lo - 1, hi + 1))

    d1a = _Stats()
    for lo in range(0, a0, slab):
        d1a.add(down1a_rows(lo, min(lo + slab, a0)))

    def down1b_rows(lo: int, hi: int, window: bool = False) -> torch.Tensor:
        """down1b's rows [lo, hi); with `window`, only the output window's part of them in plane."""
        below = _zero_outside(d1a.norm_act_(down1a_rows(lo - 1, hi + 1)), lo - 1, a0)
        if not window:
            return _conv(convs["down1b"], below)
        cut = below[:, :, crop - 1:crop + out_size[1] + 1, crop - 1:crop + out_size[2] + 1]
        return _conv(convs["down1b"], cut, pad_in_plane=False)

    # down1b slab by slab: its 1/3 max-pool, and the statistics of its crop to the output window (up1a's skip)
    pooled: list[torch.Tensor] = []
    skip_stats = _Stats()
    for lo in range(0, a0, slab):
        hi = min(lo + slab, a0)
        d1b = down1b_rows(lo, hi)
        pooled.append(F.max_pool3d(d1b[None], 3)[0])
        a, b = max(lo, crop), min(hi, crop + out_size[0])
        if a < b:
            skip_stats.add(d1b[:, a - lo:b - lo, crop:crop + out_size[1], crop:crop + out_size[2]])
        del d1b
    path3 = _middle(net, torch.cat(pooled, dim=1)[None])[0]
    del pooled

    def skip_rows(lo: int, hi: int) -> torch.Tensor:
        """norm_act of rows [lo, hi) of the cropped skip, zero outside it (its 'same' padding)."""
        a, b = max(lo, 0), min(hi, out_size[0])
        return _pad_rows(skip_stats.norm_act_(down1b_rows(a + crop, b + crop, window=True)), lo, hi, a, b)

    def up_rows(lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) of upsample(path3), inside the map."""
        r0, r1 = lo // 3, (hi + 1) // 3 + 1
        near = F.interpolate(path3[None, :, r0:r1], scale_factor=3, mode="nearest")
        return F.avg_pool3d(near[:, :, lo - 3 * r0:hi + 2 - 3 * r0], 3, stride=1)[0]

    up_stats = _Stats()
    for lo in range(0, out_size[0], slab):
        up_stats.add(up_rows(lo, min(lo + slab, out_size[0])))
    # up1a: one convolution over [skip, path] split in two, as LiverUNet._skip_conv does
    conv = convs["up1a"]
    n_skip = convs["down1b"].out_channels
    up1a = _Rows(out_size[0])
    for lo in range(0, out_size[0], slab):
        hi = min(lo + slab, out_size[0])
        out = _conv(conv, skip_rows(lo - 1, hi + 1), conv.weight[:, :n_skip])
        a, b = max(lo - 1, 0), min(hi + 1, out_size[0])
        path = _pad_rows(up_stats.norm_act_(up_rows(a, b)), lo - 1, hi + 1, a, b)
        out += _conv(conv, path, conv.weight[:, n_skip:], with_bias=False)
        del path
        up1a.put(lo, out)
    up1a_stats = up1a.stats()
    up1b = _Rows(out_size[0])
    for lo in range(0, out_size[0], slab):
        hi = min(lo + slab, out_size[0])
        up1b.put(lo, _conv(convs["up1b"], up1a.get(lo - 1, hi + 1, up1a_stats)))
        up1a.drop_before(hi - 1)
    up1b_stats = up1b.stats()
    prob = x.new_empty(out_size)
    for lo in range(0, out_size[0], slab):
        hi = min(lo + slab, out_size[0])
        prob[lo:hi] = torch.sigmoid(_conv(convs["head"], up1b.get(lo, hi, up1b_stats)))[0]
        up1b.drop_before(hi)
    return prob


def _middle(net: LiverUNet, pooled: torch.Tensor) -> torch.Tensor:
    """From down1b's max-pool (1, C, a0/3, ...) to up3b's output, as in LiverUNet.forward."""
    c = net._c
    s3 = c("down3b", norm_act(c("down3a", norm_act(pooled))))
    s9 = c("down9b", norm_act(c("down9a", norm_act(F.max_pool3d(s3, 3)))))
    path = c("bottom_b", norm_act(c("bottom_a", norm_act(F.max_pool3d(s9, 3)))))
    path = c("up9b", norm_act(net._skip_conv("up9a", s9, upsample(path))))
    return c("up3b", norm_act(net._skip_conv("up3a", s3, upsample(path))))

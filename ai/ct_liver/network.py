"""The liver network of pyliverlesionseg 0.3, written in torch.

Axis order of every tensor here: (batch, channel, a0, a1, a2), where (a0, a1, a2) are the Keras
model's (x, y, z): a0 grows toward patient right, a1 toward anterior, a2 toward head (RAS), z being
the slice axis. The (3, 3, 1) kernels are therefore in-plane.

Shape of the network (as trained): four resolutions (1, 3, 9, 27 voxels at 3 mm), max pooling 3
stride 3 down; on the way up nearest-neighbour x3 followed by a 3x3x3 average pool with stride 1 and
no padding, so each up step loses 2 voxels and the output is 26 voxels smaller than the input per axis;
the skip connections are centre-cropped to fit. Convolutions pad 'same'. Before every activation
(LeakyReLU 0.01) each channel is normalised over space, without parameters: (x - mean) / (std + 1e-7).
The input must be a multiple of 27 voxels per axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_MULTIPLE = 27
SHRINK = 26                      # output = input - SHRINK per axis
_EPS = 1e-7                      # Keras backend epsilon, added to the standard deviation
_SLOPE = 0.01

# (name, in, out, kernel) in the order of the Keras layers conv3d_1..conv3d_15
CONVS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("down1a", 1, 20, (3, 3, 1)), ("down1b", 20, 40, (3, 3, 3)),
    ("down3a", 40, 40, (3, 3, 1)), ("down3b", 40, 80, (3, 3, 3)),
    ("down9a", 80, 80, (3, 3, 1)), ("down9b", 80, 160, (3, 3, 3)),
    ("bottom_a", 160, 160, (3, 3, 3)), ("bottom_b", 160, 160, (3, 3, 3)),
    ("up9a", 320, 160, (3, 3, 3)), ("up9b", 160, 80, (3, 3, 1)),
    ("up3a", 160, 80, (3, 3, 3)), ("up3b", 80, 40, (3, 3, 1)),
    ("up1a", 80, 40, (3, 3, 3)), ("up1b", 40, 20, (3, 3, 1)),
    ("head", 20, 1, (1, 1, 1)),
)


def norm_act(x: torch.Tensor) -> torch.Tensor:
    """Per-channel normalisation over space, then LeakyReLU, in place: pass a tensor nothing else needs."""
    # statistics in float32 even under CUDA autocast (fp16 cannot hold the 1e-7, nor sums over millions of voxels)
    var, mean = torch.var_mean(x.float(), dim=(2, 3, 4), keepdim=True, correction=0)
    x.sub_(mean.to(x.dtype)).div_(var.sqrt_().add_(_EPS).to(x.dtype))
    return F.leaky_relu_(x, _SLOPE)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest x3, then a 3x3x3 mean with stride 1 and no padding (size 3n - 2)."""
    return F.avg_pool3d(F.interpolate(x, scale_factor=3, mode="nearest"), 3, stride=1)


def center_crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    crops = [(a - b) // 2 for a, b in zip(x.shape[2:], like.shape[2:], strict=True)]
    return x[:, :, crops[0]:crops[0] + like.shape[2], crops[1]:crops[1] + like.shape[3],
             crops[2]:crops[2] + like.shape[4]]


class LiverUNet(nn.Module):
    """Input (N, 1, a0, a1, a2), each a multiple of 27; output the liver probability, 26 voxels smaller."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({
            name: nn.Conv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel))
            for name, cin, cout, kernel in CONVS})

    def _c(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.convs[name](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % INPUT_MULTIPLE for s in x.shape[2:]):
            raise ValueError(f"input size {tuple(x.shape[2:])} must be a multiple of {INPUT_MULTIPLE} per axis")
        c = self._c
        skips = [c("down1b", norm_act(c("down1a", x)))]          # the first convolution sees the raw input
        for level in ("3", "9"):
            skips.append(c(f"down{level}b", norm_act(c(f"down{level}a", norm_act(F.max_pool3d(skips[-1], 3))))))
        path = c("bottom_b", norm_act(c("bottom_a", norm_act(F.max_pool3d(skips[-1], 3)))))
        for level in ("9", "3", "1"):
            path = upsample(path)
            path = c(f"up{level}b", norm_act(self._skip_conv(f"up{level}a", skips.pop(), path)))
        return torch.sigmoid(c("head", norm_act(path)))

    def _skip_conv(self, name: str, skip: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
        """conv(norm_act(cat([crop(skip), path]))) without the concatenated tensor: the normalisation is per
        channel, so the convolution splits into one over the skip channels plus one over the path channels."""
        conv = self.convs[name]
        n_skip = skip.shape[1]
        part = norm_act(center_crop(skip, path).contiguous())
        del skip
        out = F.conv3d(part, conv.weight[:, :n_skip], conv.bias, padding=conv.padding)
        del part
        out += F.conv3d(norm_act(path), conv.weight[:, n_skip:], None, padding=conv.padding)
        return out

"""Image encoders of the Cal-QL / SAC learner: DrQ random shift, a GroupNorm ResNet with a learned spatial embedding.

Input convention: images arrive as stored in replay, channels-last ``[B, H, W, C]``, square ``H == W ==
image_size``. ``uint8`` images are scaled to ``[0, 1]``; floating images are taken to be in ``[0, 1]`` already.
The encoder moves channels first itself. Pure PyTorch: nothing here knows about replay, processes or configs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def random_shift(images: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """DrQ random shift (arXiv 2004.13649): replicate-pad by ``pad``, crop back to ``H x W`` at a random offset.

    ``images [B, C, H, W]`` (any dtype). Each sample gets its own integer offsets ``(dy, dx)``, each uniform in
    ``[0, 2 * pad]``, drawn from ``generator`` (None: the global torch RNG; it must live on ``images.device``).
    The result equals ``F.pad(images, (pad,) * 4, mode="replicate")[b, :, dy:dy + H, dx:dx + W]`` exactly.
    ``pad=0`` returns ``images`` itself.
    """
    if pad < 0:
        raise ValueError(f"random_shift: pad must be >= 0, got {pad}")
    if images.dim() != 4:
        raise ValueError(f"random_shift: images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if pad == 0:
        return images
    b, c, h, w = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=images.device)
    # Replicate padding is index clamping, so two gathers on the unpadded image give the exact integer crop
    # without materialising the padded copy (and, unlike grid_sample, with no interpolation to round off).
    rows = (offsets[:, :1] - pad + torch.arange(h, device=images.device)).clamp_(0, h - 1)  # [B, H]
    cols = (offsets[:, 1:] - pad + torch.arange(w, device=images.device)).clamp_(0, w - 1)  # [B, W]
    out = images.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


class _ResidualBlock(nn.Module):
    """``x -> act(x + GN(conv(act(GN(conv(x))))))`` with two 3x3 convs at constant width and resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))


class SpatialLearnedEmbeddings(nn.Module):
    """``[B, C, H, W] -> [B, C * K]``: per channel, ``K`` learned spatial weightings summed over ``H x W``.

    ``out[b, c * K + k] = sum_{h, w} x[b, c, h, w] * embed[c, h, w, k]`` (BridgeData V2 / PTR). Unlike global
    average pooling this keeps *where* a feature fired, which manipulation needs (PTR, arXiv 2210.05178, Sec. 4).
    """

    def __init__(self, channels: int, height: int, width: int, num_blocks: int) -> None:
        super().__init__()
        # Std 1/sqrt(H*W): each output sums H*W terms, so O(1) feature maps give O(1) embeddings at init.
        self.embed = nn.Parameter(torch.randn(channels, height, width, num_blocks) / math.sqrt(height * width))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,chwk->bck", x, self.embed).flatten(1)


class ImageEncoder(nn.Module):
    """GroupNorm ResNet + learned spatial embedding + ``Linear -> LayerNorm -> tanh`` to ``out_dim`` features.

    Architecture (PTR, arXiv 2210.05178: ResNet with GroupNorm in place of BatchNorm, since batch statistics mix
    offline and online samples and break target networks, and a learned spatial embedding in place of global
    average pooling): per entry of ``channels``, a stride-2 3x3 conv + GroupNorm + ReLU that halves the
    resolution, then one residual block; after ``len(channels)`` stages the map is ``[C_last, S, S]`` with
    ``S = image_size / 2**len(channels)``; ``SpatialLearnedEmbeddings`` gives ``C_last * num_spatial_blocks``
    features, projected by ``Linear -> LayerNorm -> tanh`` (the DrQ / SAC-AE head: a bounded, normalised code
    for the actor and critic MLPs). Defaults at 128x128: map ``[256, 8, 8]``, 2048 embedded features, ``out_dim``
    256.

    Args:
        in_channels: image channels ``C`` (3 for RGB).
        image_size: ``H == W``; must be divisible by ``2 ** len(channels)``.
        channels: output width of each stage.
        groups: GroupNorm groups; must divide every entry of ``channels``.
        num_spatial_blocks: ``K``, learned spatial weightings per channel.
        out_dim: feature size of ``forward``'s output.
        shift_pad: DrQ ``random_shift`` padding applied when ``forward(..., augment=True)``; 0 disables it.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 128, channels: Sequence[int] = (32, 64, 128, 256),
                 groups: int = 8, num_spatial_blocks: int = 8, out_dim: int = 256, shift_pad: int = 4) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if in_channels < 1:
            raise ValueError(f"ImageEncoder: in_channels must be >= 1, got {in_channels}")
        if not channels or min(channels) < 1:
            raise ValueError(f"ImageEncoder: channels must be a non-empty sequence of positive ints, got {channels}")
        if groups < 1 or any(c % groups for c in channels):
            raise ValueError(f"ImageEncoder: groups={groups} must divide every entry of channels={channels}")
        factor = 2 ** len(channels)
        if image_size < factor or image_size % factor:
            raise ValueError(f"ImageEncoder: image_size={image_size} must be a positive multiple of "
                             f"2**len(channels) = {factor}")
        if num_spatial_blocks < 1 or out_dim < 1 or shift_pad < 0:
            raise ValueError(f"ImageEncoder: need num_spatial_blocks >= 1, out_dim >= 1, shift_pad >= 0; got "
                             f"{num_spatial_blocks}, {out_dim}, {shift_pad}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.shift_pad = shift_pad
        self.out_dim = out_dim

        stages: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            stages += [nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=False), nn.GroupNorm(groups, width),
                       nn.ReLU(), _ResidualBlock(width, groups)]
            prev = width
        self.trunk = nn.Sequential(*stages)
        side = image_size // factor
        self.spatial = SpatialLearnedEmbeddings(prev, side, side, num_spatial_blocks)
        self.head = nn.Sequential(nn.Linear(prev * num_spatial_blocks, out_dim), nn.LayerNorm(out_dim), nn.Tanh())

    def forward(self, images: Tensor, augment: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``images [B, H, W, C]`` (uint8, or float in [0, 1]) -> ``[B, out_dim]`` in ``(-1, 1)``.

        ``augment=True`` applies ``random_shift(pad=shift_pad)`` with ``generator`` (learner updates only; never
        at act time, where the policy must see the frame as it is).
        """
        expected = (self.image_size, self.image_size, self.in_channels)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"ImageEncoder: expected images [B, {', '.join(map(str, expected))}] (channels-last), "
                             f"got shape {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2)
        # Scale before shifting: the crop is exact on any dtype, but the convs need float anyway.
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if augment and self.shift_pad > 0:
            x = random_shift(x, self.shift_pad, generator)
        return self.head(self.spatial(self.trunk(x)))


class MultiImageEncoder(nn.Module):
    """One ``ImageEncoder`` per image key; features concatenated in sorted key order -> ``[B, sum(out_dim)]``.

    ``encoder_kwargs`` go to every ``ImageEncoder`` (the views share an architecture, not weights). With
    ``augment=True`` each view is shifted independently, drawing from ``generator`` in sorted key order.
    """

    def __init__(self, keys: Sequence[str], **encoder_kwargs: object) -> None:
        super().__init__()
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"MultiImageEncoder: keys must be non-empty and distinct, got {list(keys)}")
        bad = [k for k in keys if not k or "." in k]
        if bad:
            raise ValueError(f"MultiImageEncoder: keys must be non-empty and contain no '.', got {bad}")
        self.keys: tuple[str, ...] = tuple(sorted(keys))
        self.encoders = nn.ModuleDict({k: ImageEncoder(**encoder_kwargs) for k in self.keys})  # type: ignore[arg-type]
        self.out_dim: int = sum(enc.out_dim for enc in self.encoders.values())

    def forward(self, obs: Mapping[str, Tensor], augment: bool = False,
                generator: torch.Generator | None = None) -> Tensor:
        """``obs[k]`` for ``k`` in ``keys`` (other keys ignored) -> ``[B, out_dim]``."""
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"MultiImageEncoder: obs lacks image keys {missing} (has {sorted(obs)})")
        return torch.cat([self.encoders[k](obs[k], augment, generator) for k in self.keys], dim=-1)

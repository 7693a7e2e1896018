"""Which observation keys are images, and the image encoder built for them from :class:`EncoderConfig`."""

from __future__ import annotations

import numpy as np

from fleetrl.config import EncoderConfig
from fleetrl.learners.encoders import MultiImageEncoder
from fleetrl.types import TransitionSpec


def image_obs_keys(spec: TransitionSpec) -> list[str]:
    """Observation keys holding images: uint8 arrays shaped ``(H, W, C)``, sorted."""
    return sorted(k for k, s in spec.obs.items() if s.dtype == np.uint8 and len(s.shape) == 3)


def build_image_encoder(spec: TransitionSpec, cfg: EncoderConfig) -> MultiImageEncoder | None:
    """One CNN per image key of ``spec`` (None when it has none: the state-only path).

    Raises ``ValueError`` naming the key when an image is not square or its size does not fit ``cfg.channels``.
    """
    keys = image_obs_keys(spec)
    if not keys:
        return None
    shapes = {spec.obs[k].shape for k in keys}
    if len(shapes) != 1:
        raise ValueError(f"image observations must share one shape, got {({k: spec.obs[k].shape for k in keys})}")
    h, w, c = shapes.pop()
    if h != w:
        raise ValueError(f"obs[{keys[0]!r}]: images must be square for the encoder, got {h}x{w}")
    try:
        return MultiImageEncoder(keys, in_channels=c, image_size=h, channels=cfg.channels, groups=cfg.groups,
                                 num_spatial_blocks=cfg.spatial_blocks, out_dim=cfg.out_dim, shift_pad=cfg.shift_pad)
    except ValueError as exc:
        raise ValueError(f"learner.encoder: {exc} (image keys {keys}, size {h}x{w})") from exc

"""Tests of the image encoders: DrQ random shift, the GroupNorm ResNet encoder and the multi-view wrapper (CPU)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from fleetrl.learners.encoders import ImageEncoder, MultiImageEncoder, random_shift

SMALL = {"channels": (8, 16), "groups": 4, "num_spatial_blocks": 4, "out_dim": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def uint8_images(batch: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, channels), generator=g, dtype=torch.uint8)


def crop_offsets(images: torch.Tensor, out: torch.Tensor, pad: int) -> list[list[tuple[int, int]]]:
    """Per sample, every ``(dy, dx)`` in ``[0, 2*pad]^2`` whose crop of the replicate-padded input equals ``out``."""
    _, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    crops = padded.unfold(2, h, 1).unfold(3, w, 1)  # [B, C, 2p+1, 2p+1, H, W]: every integer crop
    match = (crops == out[:, :, None, None]).flatten(4).all(-1).all(1)  # [B, 2p+1, 2p+1], exact equality
    return [[(int(dy), int(dx)) for dy, dx in m.nonzero().tolist()] for m in match]


# ---------------------------------------------------------------------------------------------- random_shift


def test_random_shift_is_an_exact_crop_with_offsets_covering_the_range() -> None:
    pad = 4
    g = torch.Generator().manual_seed(0)
    images = torch.rand(512, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    out = random_shift(images, pad, generator=g)
    assert out.shape == images.shape and out.dtype == images.dtype
    offsets = crop_offsets(images, out, pad)
    # Continuous random pixels: exactly one offset reproduces each sample.
    assert all(len(o) == 1 for o in offsets)
    dys = {o[0][0] for o in offsets}
    dxs = {o[0][1] for o in offsets}
    # Both ends of [0, 2*pad] are reached, per axis, and the offsets differ across the batch.
    assert dys == dxs == set(range(2 * pad + 1))
    assert len({o[0] for o in offsets}) > 40


def test_random_shift_uint8_and_small_batch_are_exact_crops() -> None:
    images = torch.randint(0, 256, (6, 2, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = random_shift(images, 2, generator=torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8
    assert all(len(o) >= 1 for o in crop_offsets(images, out, 2))


def test_random_shift_seeding_and_pad_zero() -> None:
    images = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = random_shift(images, 4, generator=torch.Generator().manual_seed(7))
    b = random_shift(images, 4, generator=torch.Generator().manual_seed(7))
    c = random_shift(images, 4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert random_shift(images, 0, generator=torch.Generator().manual_seed(7)) is images
    with pytest.raises(ValueError, match="pad"):
        random_shift(images, -1)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_shift(images[0], 4)


# ---------------------------------------------------------------------------------------------- ImageEncoder


@pytest.mark.parametrize("size", [128, 64])
def test_image_encoder_default_output_shape(size: int) -> None:
    enc = ImageEncoder(image_size=size)
    assert enc.out_dim == 256
    assert enc.spatial.embed.shape == (256, size // 16, size // 16, 8)
    with torch.no_grad():
        out = enc(uint8_images(2, size))
    assert out.shape == (2, 256) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() < 1.0


def test_image_encoder_uint8_equals_float_in_unit_range() -> None:
    enc = ImageEncoder(image_size=32, **SMALL)
    images = uint8_images(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(images), enc(images.float() / 255.0))


def test_image_encoder_validates_arguments_and_input_shape() -> None:
    with pytest.raises(ValueError, match="image_size"):
        ImageEncoder(image_size=100)  # not a multiple of 2**4
    with pytest.raises(ValueError, match="image_size"):
        ImageEncoder(image_size=8, channels=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="groups"):
        ImageEncoder(groups=5)
    with pytest.raises(ValueError, match="channels"):
        ImageEncoder(channels=())
    enc = ImageEncoder(image_size=32, **SMALL)
    with pytest.raises(ValueError, match="channels-last"):
        enc(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))  # channels-first is rejected, not silently misread
    with pytest.raises(ValueError, match="channels-last"):
        enc(uint8_images(2, 64))


def test_augment_false_is_deterministic_and_augment_true_follows_the_generator() -> None:
    enc = ImageEncoder(image_size=32, **SMALL)
    images = uint8_images(8, 32)
    with torch.no_grad():
        plain = enc(images, augment=False)
        assert torch.equal(plain, enc(images, augment=False, generator=torch.Generator().manual_seed(0)))
        a = enc(images, augment=True, generator=torch.Generator().manual_seed(0))
        b = enc(images, augment=True, generator=torch.Generator().manual_seed(1))
        a2 = enc(images, augment=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, plain)
    assert torch.equal(a, a2)
    no_shift = ImageEncoder(image_size=32, shift_pad=0, **SMALL)
    no_shift.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert torch.equal(no_shift(images, augment=True, generator=torch.Generator().manual_seed(0)), plain)


def test_gradients_reach_every_parameter() -> None:
    enc = ImageEncoder(image_size=32, **SMALL)
    out = enc(uint8_images(4, 32), augment=True, generator=torch.Generator().manual_seed(0))
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    names = [name for name, _ in enc.named_parameters()]
    assert "spatial.embed" in names
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _square_batch(g: torch.Generator, n: int, size: int = 32, side: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` black uint8 ``[size, size, 3]`` images, each with a white square; targets: its (y, x) in [-1, 1]."""
    pos = torch.randint(0, size - side + 1, (n, 2), generator=g)
    ar = torch.arange(size)
    in_y = (ar >= pos[:, :1]) & (ar < pos[:, :1] + side)
    in_x = (ar >= pos[:, 1:]) & (ar < pos[:, 1:] + side)
    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    images[in_y[:, :, None] & in_x[:, None, :]] = 255
    return images, pos.float() / (size - side) * 2 - 1


def test_encoder_learns_to_locate_a_square() -> None:
    torch.manual_seed(0)
    enc = ImageEncoder(image_size=32, **SMALL)
    head = torch.nn.Linear(enc.out_dim, 2)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(1)
    test_x, test_y = _square_batch(torch.Generator().manual_seed(2), 256)
    with torch.no_grad():
        initial = F.mse_loss(head(enc(test_x)), test_y).item()
    for _ in range(120):
        x, y = _square_batch(g, 32)
        loss = F.mse_loss(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = F.mse_loss(head(enc(test_x)), test_y).item()
    # Predicting the mean position already scores ~1/3 per coordinate; held-out images need real localisation.
    assert final < 0.1 * initial and final < 0.02, (initial, final)


def test_state_dict_roundtrip_gives_identical_outputs() -> None:
    torch.manual_seed(0)
    enc = ImageEncoder(image_size=32, **SMALL)
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    other = ImageEncoder(image_size=32, **SMALL)
    images = uint8_images(4, 32)
    with torch.no_grad():
        assert not torch.allclose(enc(images), other(images))
        other.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(enc(images), other(images))


# ---------------------------------------------------------------------------------------------- MultiImageEncoder


def test_multi_image_encoder_concatenates_in_sorted_key_order() -> None:
    torch.manual_seed(0)
    multi = MultiImageEncoder(["wrist_image", "image"], image_size=32, **SMALL)
    assert multi.keys == ("image", "wrist_image")
    assert multi.out_dim == 64
    obs = {"wrist_image": uint8_images(3, 32, seed=1), "image": uint8_images(3, 32, seed=2),
           "state": torch.zeros(3, 5)}
    with torch.no_grad():
        out = multi(obs, augment=False)
        assert out.shape == (3, 64)
        torch.testing.assert_close(out[:, :32], multi.encoders["image"](obs["image"]))
        torch.testing.assert_close(out[:, 32:], multi.encoders["wrist_image"](obs["wrist_image"]))
        a = multi(obs, augment=True, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, multi(obs, augment=True, generator=torch.Generator().manual_seed(0)))
        assert not torch.allclose(a, out)
    # Views share the architecture, not the weights.
    assert not torch.equal(multi.encoders["image"].spatial.embed, multi.encoders["wrist_image"].spatial.embed)
    with pytest.raises(KeyError, match="wrist_image"):
        multi({"image": obs["image"]})
    with pytest.raises(ValueError, match="keys"):
        MultiImageEncoder(["image", "image"], image_size=32, **SMALL)

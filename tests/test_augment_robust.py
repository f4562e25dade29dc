"""The robustness levers (gamma, saturation, blur/sharpening, JPEG) against references written here in
float64 or with PIL and scipy, and without changing the draws of the settings that were there before."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from retino_utils.data.transforms import AugmentChoices, augment_batch, jpeg_roundtrip, sample_choices

NONE = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # normalisation that leaves 0-255 values as they are


def batch(n=3, size=24, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def choices(n, **draws) -> AugmentChoices:
    still = AugmentChoices(torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), torch.zeros(n))
    for name, value in draws.items():
        setattr(still, name, torch.as_tensor(value, dtype=torch.float32))
    return still


def test_gamma_and_saturation_match_their_formulas():
    x = batch()
    gamma = np.array([0.7, 1.0, 1.5])
    out = augment_batch(x, choices(3, gamma=gamma), *NONE).numpy()
    reference = 255 * (x.numpy() / 255.0) ** gamma[:, None, None, None]
    np.testing.assert_allclose(out, reference, atol=1e-2)
    factor = np.array([0.0, 1.0, 1.6])
    out = augment_batch(x, choices(3, saturation=factor), *NONE).numpy()
    grey = x.numpy().astype(np.float64).mean(axis=1, keepdims=True)
    reference = np.clip(grey + factor[:, None, None, None] * (x.numpy() - grey), 0, 255)
    np.testing.assert_allclose(out, reference, atol=1e-3)
    assert np.allclose(out[0], out[0][:1])  # saturation 0: grey


def test_blur_matches_scipy_and_a_negative_sigma_sharpens():
    x = batch(2, size=32)
    sigma = np.array([1.2, -0.8])
    out = augment_batch(x, choices(2, blur=sigma), *NONE).numpy()
    pixels = x.numpy().astype(np.float64)
    blurred = ndimage.gaussian_filter(pixels[0], (0, 1.2, 1.2), mode="nearest", truncate=3.0)
    inner = np.s_[:, 4:-4, 4:-4]  # away from the edges, where the two pad differently
    np.testing.assert_allclose(out[0][inner], blurred[inner], atol=0.6)
    soft = ndimage.gaussian_filter(pixels[1], (0, 0.8, 0.8), mode="nearest")
    np.testing.assert_allclose(out[1][inner], np.clip(2 * pixels[1] - soft, 0, 255)[inner], atol=1.2)


def test_jpeg_roundtrip_is_pils_and_is_applied_to_the_drawn_half():
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=40)
    assert np.array_equal(jpeg_roundtrip(pixels, 40), np.asarray(Image.open(buffer).convert("RGB")))
    drawn = sample_choices(2000, torch.Generator().manual_seed(0), jpeg=30)
    re_encoded = drawn.jpeg > 0
    assert 0.45 < re_encoded.float().mean() < 0.55
    assert drawn.jpeg[re_encoded].min() >= 30 and drawn.jpeg.max() <= 95


def test_the_new_levers_leave_earlier_draws_unchanged():
    before = sample_choices(300, torch.Generator().manual_seed(7), rotation=180.0, color=0.2)
    after = sample_choices(300, torch.Generator().manual_seed(7), rotation=180.0, color=0.2, gamma=0.4,
                           saturation=0.5, blur=1.0, jpeg=30)
    for name in ("hflip", "vflip", "angle", "brightness", "contrast"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    assert before.gamma is None and after.gamma.min() >= np.exp(-0.4) - 1e-6


@pytest.mark.heavy
@pytest.mark.parametrize("lever", ["gamma", "saturation", "blur", "jpeg"])
def test_each_lever_trains(tiny_dataset, tmp_path, lever):
    from retino_utils.train.cli import fit
    from retino_utils.train.config import TrainConfig

    value = {"gamma": 0.4, "saturation": 0.5, "blur": 1.0, "jpeg": 30}[lever]
    history = fit(TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                              image_size=32, device="cpu", progress=False, bootstrap=0, **{lever: value}))
    assert np.isfinite(history["train_loss"]).all()

"""The levers of the CPU recipe, each against an independent reference: zoom/shift against torchvision's
affine, recolouring against a float64 formula, the balanced-to-natural sampling schedule, fusing the two
eyes by hand, the moving average of the weights against its recursion, progressive resizing in a run,
and a run using all of them reproduced by the predict command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.functional as TF

from retino_utils.data.transforms import recolour, sample_choices, warp
from retino_utils.errors import RetinoError
from retino_utils.evaluation.eyes import fuse_eyes, partner_indices
from retino_utils.models.losses.class_weights import scheduled_sample_weights
from retino_utils.models.losses.ordinal import frequency_thresholds, scores_to_grades
from retino_utils.synthetic import generate_dataset
from retino_utils.train.checkpoint import load_checkpoint, scored_weights
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig
from retino_utils.train.ema import moving_average, warmed_decay
from retino_utils.train.optim import build_optimizer


@pytest.mark.parametrize("angle,scale,shift", [(0.0, 1.2, (0.0, 0.0)), (0.0, 0.8, (0.1, -0.05)),
                                               (-30.0, 1.1, (-0.08, 0.12))])
def test_warp_matches_torchvision_affine(angle, scale, shift):
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    ours = warp(x, torch.tensor([angle]), torch.tensor([scale]), torch.tensor([shift[0]]), torch.tensor([shift[1]]))
    # torchvision: translate in pixels, then rotate and scale about the centre (its angle is clockwise).
    theirs = TF.affine(x[0], angle=-angle, translate=[shift[0] * 20, shift[1] * 20], scale=scale, shear=[0.0],
                       interpolation=TF.InterpolationMode.BILINEAR)
    inner = (slice(None), slice(3, -3), slice(3, -3))  # the borders differ by how each pads outside the image
    torch.testing.assert_close(ours[0][inner], theirs[inner], rtol=0, atol=1e-4)


def test_recolour_is_brightness_then_contrast_about_the_mean():
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 255
    brightness, contrast = torch.tensor([1.2, 0.7]), torch.tensor([0.8, 1.3])
    ours = recolour(x.float(), brightness, contrast)
    for k in range(2):
        bright = x[k] * float(brightness[k])
        expected = ((bright - bright.mean()) * float(contrast[k]) + bright.mean()).clamp(0, 255)
        np.testing.assert_allclose(ours[k].numpy(), expected.numpy(), atol=1e-3)


def test_new_draws_leave_the_flip_and_rotation_draws_alone_and_stay_in_range():
    plain = sample_choices(500, torch.Generator().manual_seed(5), rotation=180.0)
    rich = sample_choices(500, torch.Generator().manual_seed(5), rotation=180.0, scale=0.1, shift=0.05, color=0.2)
    assert torch.equal(plain.hflip, rich.hflip) and torch.equal(plain.angle, rich.angle)
    assert plain.scale is None and plain.brightness is None
    assert rich.scale.min() >= 0.9 and rich.scale.max() <= 1.1 and rich.scale.std() > 0.04
    assert rich.shift_x.abs().max() <= 0.05 and not torch.equal(rich.shift_x, rich.shift_y)
    assert rich.contrast.min() >= 0.8 and rich.contrast.max() <= 1.2
    assert len(rich[:7]) == 7 and rich[:7].scale.shape == (7,) and rich[:7].angle.shape == (7,)


def test_sampling_moves_from_balanced_to_natural():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    share = {progress: np.bincount(labels, weights=scheduled_sample_weights(labels, progress).numpy())
             for progress in (0.0, 0.5, 1.0)}
    natural = np.bincount(labels) / len(labels)
    np.testing.assert_allclose(share[0.0], [1 / 3] * 3)
    np.testing.assert_allclose(share[1.0], natural)
    np.testing.assert_allclose(share[0.5], (np.full(3, 1 / 3) + natural) / 2)
    with pytest.raises(RetinoError, match="progress"):
        scheduled_sample_weights(labels, 1.5)


def test_eyes_are_paired_by_patient_and_blended():
    names = ["10_left", "10_right", "11_left", "12_RIGHT.jpeg", "12_left", "odd", "13_left"]
    assert partner_indices(names).tolist() == [1, 0, -1, 4, 3, -1, -1]
    scores = torch.tensor([0.0, 2.0, 1.0, 4.0, 3.0, 5.0, 6.0])
    fused = fuse_eyes(scores, names, 0.25)
    expected = [0.5, 1.5, 1.0, 3.75, 3.25, 5.0, 6.0]
    np.testing.assert_allclose(fused.numpy(), expected)
    logits = torch.arange(14.0).view(7, 2)
    np.testing.assert_allclose(fuse_eyes(logits, names, 0.4)[0].numpy(), (0.6 * logits[0] + 0.4 * logits[1]).numpy())
    assert torch.equal(fuse_eyes(scores, names, 0.0), scores)


def train_with_averages(model, averages, steps=40):
    """Train ``model`` for ``steps`` seeded SGD steps, updating each moving average after every step."""
    torch.manual_seed(1)
    optimizer = build_optimizer(model.parameters(), TrainConfig(lr=0.1))
    for _ in range(steps):
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        for average in averages:
            average.update_parameters(model)


def floats(averaged) -> dict:
    return {k: v for k, v in averaged.module.state_dict().items() if v.is_floating_point()}


def test_moving_average_matches_torchs_own_once_warmed_up():
    """torch's exponential moving average (swa_utils.get_ema_multi_avg_fn) is the reference: below the warm-up's
    floor (a decay of 0.1, which every warm-up step exceeds) the two agree from the first step; with a decay of 0.5
    they agree from the step the warm-up reaches it, and before it ours is nearer the current weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ours, torchs = moving_average(model, 0.1), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.1),
                                                             use_buffers=True)
    train_with_averages(model, [ours, torchs])
    for key, value in floats(torchs).items():
        torch.testing.assert_close(floats(ours)[key], value)

    warming, plain = moving_average(model, 0.5), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5),
                                                               use_buffers=True)
    train_with_averages(model, [warming, plain], steps=1)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in floats(warming).items())  # no past yet
    warmed = next(step for step in range(100) if warmed_decay(0.5, step) == 0.5)
    train_with_averages(model, [warming, plain], steps=warmed - 1)  # the updates before the decay reaches 0.5
    weights = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}

    def distance(average):
        return sum(float((floats(average)[k] - w).norm()) for k, w in weights.items())

    assert distance(warming) < distance(plain)  # warming up, it forgets the first random weights faster
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    reference.load_state_dict(warming.state_dict())
    train_with_averages(model, [warming, reference])
    for key, value in floats(reference).items():
        torch.testing.assert_close(floats(warming)[key], value)


def test_size_stages_and_their_refusals():
    config = TrainConfig(epochs=10, image_size=64, sizes="32:3, 48:2")
    assert config.size_stages() == [(32, 3), (48, 2), (64, 5)]
    assert [config.size_at(e) for e in range(1, 11)] == [32] * 3 + [48] * 2 + [64] * 5
    for bad in ("48:2,32:3", "32:10", "64:2", "32", "32:0"):
        with pytest.raises(RetinoError, match="sizes"):
            TrainConfig(epochs=10, image_size=64, sizes=bad)
    with pytest.raises(RetinoError, match="fuse_eyes"):
        TrainConfig(fuse_eyes=0.5)


def test_an_image_size_given_replaces_the_recipes_size_schedule():
    """The recipe's schedule leads up to its own size; a size given with it is the one size trained at."""
    from retino_utils.report.runner import ReportContext, load_pipeline, plan, run_config
    from retino_utils.train.config import RECIPES

    recipe = TrainConfig.with_recipe("best-cpu", epochs=40)
    assert recipe.sizes == RECIPES["best-cpu"]["sizes"] and recipe.size_stages()[-1] == (256, 16)
    assert TrainConfig.with_recipe("best-cpu", image_size=128).size_stages() == [(128, 40)]
    assert TrainConfig.with_recipe("best-cpu", image_size=128, sizes="64:5").size_stages() == [(64, 5), (128, 35)]
    # So the profiles need not switch the schedule off: every run of every profile trains at one size.
    pipeline = load_pipeline()
    for profile in pipeline["profiles"]:
        for step in plan(pipeline, profile, ReportContext(profile, Path("data"), Path("out"), Path("fig"), "cpu")):
            if step.run is not None:
                assert run_config(step, Path("data")).size_stages()[:-1] == [], (profile, step.name)


@pytest.fixture(scope="module")
def paired_dataset(tmp_path_factory):
    """Synthetic photos named <patient>_left/right, both eyes of a patient in the same split."""
    return generate_dataset(tmp_path_factory.mktemp("paired") / "data", 40, 20, size=48, progress=False)


@pytest.fixture(scope="module")
def lever_run(tmp_path_factory, paired_dataset):
    out = tmp_path_factory.mktemp("levers") / "run"
    fit(TrainConfig(data=str(paired_dataset), out=str(out), epochs=3, sizes="24:1", image_size=32, batch_size=8,
                    device="cpu", progress=False, bootstrap=100, loss="mse", sampler="weighted_to_natural",
                    optimizer="adamw", ema=0.9, scale=0.1, shift=0.05, color=0.2, fuse_eyes=0.25, tta=True,
                    cut_points="frequencies", val_fraction=0.25, best_metric="qwk"))
    return out


def test_progressive_resizing_trains_small_first_and_keeps_a_full_size_epoch(lever_run):
    history = pd.read_csv(lever_run / "history.csv")
    assert history["image_size"].tolist() == [24, 32, 32]
    metrics = json.loads((lever_run / "metrics.json").read_text())
    assert metrics["best_epoch"] in (2, 3)
    kept = load_checkpoint(lever_run / "best.pt")
    assert kept.ema is not None and set(scored_weights(kept)) == set(kept.model)
    assert any(not torch.equal(scored_weights(kept)[k], kept.model[k]) for k in kept.model
               if kept.model[k].is_floating_point())


def test_predict_reproduces_a_run_with_every_lever(lever_run, paired_dataset, tmp_path):
    """The moving-average weights, the two eyes fused and the flip-averaged scores, as training scored them."""
    result = subprocess.run([sys.executable, "-m", "retino_utils.predict", str(lever_run), str(paired_dataset),
                             "--out", str(tmp_path / "g.csv"), "--tta"], capture_output=True, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr
    ours, own = pd.read_csv(tmp_path / "g.csv"), pd.read_csv(lever_run / "predictions.csv")
    assert (partner_indices(own["name"]) >= 0).sum() > 0  # the tiny set has pairs, so fusion is exercised
    assert ours["name"].tolist() == own["name"].tolist()
    np.testing.assert_allclose(ours["score"], own["score"], atol=2e-6)
    assert ours["pred_grade"].tolist() == own["pred_grade"].tolist()


def test_frequency_cut_points_give_each_grade_its_training_share():
    rng = np.random.default_rng(3)
    train_labels = rng.choice(5, 2000, p=[0.73, 0.07, 0.15, 0.03, 0.02])
    scores = rng.normal(size=997)
    grades = scores_to_grades(scores, frequency_thresholds(scores, train_labels))
    expected = np.bincount(train_labels, minlength=5) / len(train_labels) * len(scores)
    assert np.abs(np.bincount(grades, minlength=5) - expected).max() <= 1.5
    # Heavily tied scores still give increasing cut points.
    tied = np.repeat([0.0, 1.0], [900, 97])
    thresholds = frequency_thresholds(tied, train_labels)
    assert np.all(np.diff(thresholds) > 0)

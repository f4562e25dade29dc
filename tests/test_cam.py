"""Grad-CAM against a float64 computation by hand, for both ResNets, both implementations and both heads;
the overlay and the pointing-game share on made-up maps."""

import numpy as np
import pytest
import torch

from retino_utils.evaluation.cam import grad_cam, lesion_share, overlay, target_label, target_scores
from retino_utils.models.networks import build_model


def reference_cam(model, x, target):
    """Grad-CAM written out in float64: the stages by hand, then autograd on layer4's output."""
    model = model.double().eval()
    x = x.double()
    a = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    a = model.layer4(model.layer3(model.layer2(model.layer1(a))))
    out = model.fc(torch.flatten(model.avgpool(a), 1))
    if out.shape[1] == 1:
        score = out[:, 0]
    elif target == "grade":
        score = out[torch.arange(len(out)), out.argmax(1)]
    else:
        score = torch.logsumexp(out[:, 2:], 1) - torch.logsumexp(out, 1)
    grads = torch.autograd.grad(score.sum(), a)[0]
    cam = torch.relu((grads.mean((2, 3))[:, :, None, None] * a).sum(1))
    return cam / cam.flatten(1).amax(1)[:, None, None]


@pytest.mark.heavy
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("impl", ["torchvision", "native"])
@pytest.mark.parametrize("classes, target", [(5, "grade"), (5, "referable"), (1, "grade")])
def test_grad_cam_matches_the_float64_reference(arch, impl, classes, target):
    torch.manual_seed(0)
    model = build_model(arch, None, num_classes=classes, impl=impl).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    ours = grad_cam(model, x, target)
    twin = build_model(arch, None, num_classes=classes, impl=impl)
    twin.load_state_dict(model.state_dict())
    expected = reference_cam(twin, x, target)
    assert ours.shape == (2, 2, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    assert float(ours.max()) == pytest.approx(1.0)
    assert grad_cam(model.float(), x.float(), target).dtype == torch.float32  # the model's own precision


def test_referable_target_is_log_probability_of_grade_two_or_worse():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0]], dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    assert float(target_scores(logits, "referable")) == pytest.approx(float(torch.log(probs[0, 2:].sum())))
    assert float(target_scores(logits, "grade")) == 2.0


def test_a_regression_heads_map_is_its_severity_score_whichever_the_target():
    """One output: the grade and referable maps are one map, and its title says what it explains."""
    torch.manual_seed(0)
    model = build_model("resnet18", None, num_classes=1).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(grad_cam(model, x, "grade"), grad_cam(model, x, "referable"))
    assert {target_label(target, regression=True) for target in ("grade", "referable")} == {
        "the severity score (the regression output)"}
    assert target_label("referable", regression=False) != target_label("grade", regression=False)


def test_overlay_keeps_the_photo_where_the_map_is_blue_and_marks_the_hot_spot():
    photo = np.full((32, 32, 3), 100, dtype=np.uint8)
    heat = np.zeros((32, 32))
    heat[10, 10] = 1.0
    picture = np.asarray(overlay(photo, heat))
    assert picture.shape == (32, 32, 3)
    assert picture[10, 10, 0] > picture[0, 0, 0] and picture[0, 0, 2] > picture[0, 0, 0]  # red spot, blue elsewhere


def test_lesion_share_against_counting():
    field = np.zeros((10, 10), dtype=bool)
    field[1:9, 1:9] = True
    lesions = np.zeros_like(field)
    lesions[2:4, 2:4] = True  # 4 of the field's 64 pixels
    heat = np.zeros((10, 10))
    heat[2:4, 2:4] = 1.0
    heat[6, 6] = 4.0
    heat[0, 0] = 100.0  # outside the field: ignored
    on_lesions, area = lesion_share(heat, lesions, field)
    assert on_lesions == pytest.approx(4 / 8) and area == pytest.approx(4 / 64)

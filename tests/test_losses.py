
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import cohen_kappa_score
from sklearn.utils.class_weight import compute_class_weight

from retino_utils.errors import RetinoError
from retino_utils.models.losses import (
    FocalLoss,
    RegressionLoss,
    build_loss,
    inverse_frequency_weights,
    report002_weights,
    sample_weights,
    scores_to_grades,
    tune_thresholds,
)

EYEPACS_COUNTS = [20656, 1955, 4210, 698, 581]  # EyePACS training labels, N = 28100


def _batch(seed, n=64, k=5, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * scale
    target = torch.randint(0, k, (n,), generator=generator)
    return logits, target


def _focal_numpy(logits, target, gamma, alpha=None):
    """Per-sample float64 reference: -alpha_y (1 - p_y)^gamma log p_y and the weight alpha_y."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_pt = log_p[np.arange(len(target)), target]
    weight = np.ones_like(log_pt) if alpha is None else alpha[target]
    return -weight * (1 - np.exp(log_pt)) ** gamma * log_pt, weight


# --- focal -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy(reduction, weighted):
    logits, target = _batch(0)
    alpha = torch.tensor([0.2, 1.0, 3.0, 0.5, 2.0], dtype=torch.float64) if weighted else None
    focal = FocalLoss(gamma=0.0, alpha=alpha, reduction=reduction)
    expected = F.cross_entropy(logits, target, weight=alpha, reduction=reduction)
    torch.testing.assert_close(focal(logits, target), expected)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_focal_matches_float64_numpy_reference(gamma, with_alpha):
    logits, target = _batch(int(gamma * 10))
    alpha = np.array([0.3, 2.0, 1.0, 4.0, 0.7]) if with_alpha else None
    per_sample, weight = _focal_numpy(logits.numpy(), target.numpy(), gamma, alpha)
    loss = FocalLoss(gamma=gamma, alpha=alpha, reduction="none").to(torch.float64)
    np.testing.assert_allclose(loss(logits, target).numpy(), per_sample, rtol=1e-6)
    mean = FocalLoss(gamma=gamma, alpha=alpha)(logits, target).item()
    assert mean == pytest.approx(per_sample.sum() / weight.sum(), rel=1e-6)
    assert FocalLoss(gamma=gamma, alpha=alpha, reduction="sum")(logits, target).item() == pytest.approx(
        per_sample.sum(), rel=1e-6)


def test_focal_modulates_each_sample_unlike_the_reference_batch_mean_formula():
    # nine easy samples (p_t ~ 1) and one hard one (p_t ~ 0): per-sample focal keeps the hard
    # sample's full loss, the batch-mean formula shrinks everything by one small factor
    logits = torch.tensor([[10.0, 0, 0, 0, 0]] * 10, dtype=torch.float64)
    target = torch.tensor([0] * 9 + [4])
    gamma = 2.0
    ce = F.cross_entropy(logits, target)
    reference_reports = ((1 - torch.exp(-ce)) ** gamma * ce).item()
    per_sample, _ = _focal_numpy(logits.numpy(), target.numpy(), gamma)
    ours = FocalLoss(gamma=gamma)(logits, target).item()
    assert ours == pytest.approx(per_sample.mean(), rel=1e-9)
    assert ours > 2 * reference_reports


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradients_are_finite_even_for_huge_logits(gamma):
    logits = torch.tensor([[1e4, -1e4, 0, 0, 0], [-1e4, 1e4, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5]],
                          requires_grad=True)
    target = torch.tensor([0, 0, 4])  # confidently right, confidently wrong, uncertain
    alpha = torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0])
    loss = FocalLoss(gamma=gamma, alpha=alpha)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() > 1e3  # the confidently wrong sample dominates: its loss is ~2e4


def test_focal_alpha_moves_with_the_module():
    loss = FocalLoss(alpha=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert "alpha" in dict(loss.named_buffers())
    assert loss.to(torch.float64).alpha.dtype == torch.float64


def test_focal_rejects_bad_arguments():
    with pytest.raises(RetinoError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(RetinoError, match="mean, sum, none"):
        FocalLoss(reduction="avg")


# --- class weights -----------------------------------------------------------------------------------

def test_report002_weights_reproduce_the_published_numbers():
    weights = report002_weights(EYEPACS_COUNTS)
    np.testing.assert_allclose(weights.numpy(), [1.0, 3.5122, 3.2093, 3.6811, 3.6968], atol=1e-4)


def test_inverse_frequency_weights_match_sklearn_balanced():
    labels = np.repeat(np.arange(5), EYEPACS_COUNTS)
    expected = compute_class_weight("balanced", classes=np.arange(5), y=labels)
    np.testing.assert_allclose(inverse_frequency_weights(EYEPACS_COUNTS).numpy(), expected, rtol=1e-6)
    counts = np.array(EYEPACS_COUNTS, dtype=float)
    np.testing.assert_allclose(inverse_frequency_weights(counts).numpy(), counts.sum() / (5 * counts), rtol=1e-6)


def test_inverse_frequency_weights_give_absent_classes_zero():
    weights = inverse_frequency_weights([6, 3, 0, 1, 0]).numpy()
    present = np.array([0, 1, 3])
    labels = np.repeat(np.arange(5), [6, 3, 0, 1, 0])
    np.testing.assert_allclose(weights[present], compute_class_weight("balanced", classes=present, y=labels))
    assert weights[2] == 0 and weights[4] == 0


@pytest.mark.parametrize("counts", [[0, 0, 0, 0, 0], [5, -1, 2, 0, 0], []])
def test_class_weights_reject_bad_counts(counts):
    with pytest.raises(RetinoError, match="class counts"):
        inverse_frequency_weights(counts)


def test_sample_weights_draw_every_grade_equally_often():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 4])
    weights = sample_weights(labels).numpy()
    np.testing.assert_allclose(weights, 1.0 / np.bincount(labels)[labels])
    per_grade = np.bincount(labels, weights=weights)
    np.testing.assert_allclose(per_grade[per_grade > 0], 1.0)
    custom = sample_weights(labels, class_weights=[1.0, 2.0, 3.0, 4.0, 5.0]).numpy()
    np.testing.assert_allclose(custom, np.array([1.0, 2.0, 3.0, 4.0, 5.0])[labels])


# --- ordinal -----------------------------------------------------------------------------------------

def test_regression_loss_takes_column_or_flat_outputs():
    output = torch.tensor([[0.5], [2.0], [3.5]])
    target = torch.tensor([0, 2, 4])
    expected_mse = F.mse_loss(output.squeeze(1), target.float())
    torch.testing.assert_close(RegressionLoss("mse")(output, target), expected_mse)
    torch.testing.assert_close(RegressionLoss("mse")(output.squeeze(1), target), expected_mse)
    torch.testing.assert_close(RegressionLoss("smooth_l1")(output, target),
                               F.smooth_l1_loss(output.squeeze(1), target.float()))
    with pytest.raises(RetinoError, match="num_classes=1"):
        RegressionLoss()(torch.zeros(3, 5), target)


def test_scores_to_grades_matches_numpy_digitize():
    scores = np.random.default_rng(0).uniform(-1, 5, 1000)
    thresholds = np.array([0.4, 1.7, 2.2, 3.9])
    scores[:4] = thresholds  # ties go up, as np.digitize does
    np.testing.assert_array_equal(scores_to_grades(scores, thresholds), np.digitize(scores, thresholds))


def _synthetic_scores(seed, n):
    """Biased, squeezed regression scores: the default cut points are clearly not optimal."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n, p=[0.73, 0.07, 0.15, 0.025, 0.025])
    scores = 0.6 * labels + 0.4 + rng.normal(0, 0.5, n)
    return scores, labels


def _qwk(labels, scores, thresholds):
    return cohen_kappa_score(labels, scores_to_grades(scores, thresholds), weights="quadratic")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tune_thresholds_never_worse_than_init_and_increasing(seed):
    scores, labels = _synthetic_scores(seed, 3000)
    for init in [(0.5, 1.5, 2.5, 3.5), (0.1, 0.2, 3.0, 10.0)]:
        tuned = tune_thresholds(scores, labels, init=init)
        assert tuned.shape == (4,) and np.all(np.diff(tuned) > 0)
        assert _qwk(labels, scores, tuned) >= _qwk(labels, scores, init) - 1e-12
    default = (0.5, 1.5, 2.5, 3.5)
    assert _qwk(labels, scores, tune_thresholds(scores, labels)) > _qwk(labels, scores, default) + 0.01


def test_tuned_thresholds_are_a_point_no_single_move_improves_by_sklearns_kappa():
    """The search's fast kappa (from per-bin counts) against sklearn's: at the cut points it settles on, moving
    any one of them to any other candidate between its neighbours gains nothing by sklearn's QWK."""
    from retino_utils.models.losses.ordinal import CANDIDATE_QUANTILES, DEFAULT_THRESHOLDS

    scores, labels = _synthetic_scores(3, 400)
    tuned = tune_thresholds(scores, labels)
    best = _qwk(labels, scores, tuned)
    candidates = np.unique(np.concatenate([np.quantile(scores, np.linspace(0, 1, CANDIDATE_QUANTILES)),
                                           DEFAULT_THRESHOLDS]))
    for k in range(4):
        low = tuned[k - 1] if k else -np.inf
        high = tuned[k + 1] if k < 3 else np.inf
        for value in candidates[(candidates > low) & (candidates < high)]:
            moved = tuned.copy()
            moved[k] = value
            assert _qwk(labels, scores, moved) <= best + 1e-12, (k, value)
    assert best > _qwk(labels, scores, DEFAULT_THRESHOLDS) + 0.01


def test_tune_thresholds_rejects_mismatched_input():
    with pytest.raises(RetinoError, match="scores"):
        tune_thresholds([0.1, 0.2], [0])
    with pytest.raises(RetinoError, match="increasing thresholds"):
        tune_thresholds([0.1, 0.2], [0, 1], init=(1.0, 0.5, 2.0, 3.0))


# --- build_loss ----------------------------------------------------------------------------------------

def test_build_loss_by_name():
    counts = EYEPACS_COUNTS
    assert type(build_loss("ce")) is torch.nn.CrossEntropyLoss and build_loss("ce").weight is None
    torch.testing.assert_close(build_loss("wce", class_counts=counts).weight, inverse_frequency_weights(counts))
    torch.testing.assert_close(build_loss("wce", class_counts=counts, class_weighting="report002").weight,
                               report002_weights(counts))
    focal = build_loss("focal", class_counts=counts, focal_gamma=1.5, focal_alpha="report002")
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    torch.testing.assert_close(focal.alpha, report002_weights(counts))
    assert build_loss("focal").alpha is None
    assert build_loss("smooth_l1").kind == "smooth_l1"


def test_build_loss_errors_name_the_problem():
    with pytest.raises(RetinoError, match="ce, wce, focal, mse, smooth_l1"):
        build_loss("hinge")
    with pytest.raises(RetinoError, match="class counts"):
        build_loss("wce")
    with pytest.raises(RetinoError, match="class counts"):
        build_loss("focal", focal_alpha="inverse")
    with pytest.raises(RetinoError, match="inverse, report002"):
        build_loss("wce", class_counts=EYEPACS_COUNTS, class_weighting="sqrt")


def test_the_losses_declare_their_names_and_the_settings_read_them_without_torch():
    import subprocess
    import sys

    from retino_utils.models.losses import CLASS_WEIGHTINGS, LOSSES, REGRESSION_LOSSES
    from retino_utils.train.config import TrainConfig, choices

    assert choices()["loss"] == LOSSES and choices()["class_weighting"] == CLASS_WEIGHTINGS
    logits, grades = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    for name in LOSSES:  # every declared name builds a loss that computes, with the head its kind needs
        regression = name in REGRESSION_LOSSES
        assert TrainConfig(loss=name).is_regression == regression
        loss = build_loss(name, class_counts=[5, 4, 3, 2, 1])
        value = loss(logits[:, 0] if regression else logits, grades)
        assert value.ndim == 0 and torch.isfinite(value), name
    probe = "import sys, retino_utils.train.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"

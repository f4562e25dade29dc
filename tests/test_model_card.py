"""RUN/model_card.md: written when a run finishes, every figure read from the run's own record."""

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, recall_score

from retino_utils import GRADE_NAMES
from retino_utils.evaluation.model_card import RARELY_FOUND, main
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("card") / "run"
    fit(TrainConfig(data=str(tiny_dataset), out=str(out), epochs=2, batch_size=8, image_size=32, device="cpu",
                    progress=False, bootstrap=50, select_on="test"))
    return out


def test_a_finished_run_has_a_card_whose_figures_are_its_predictions(finished):
    card = (finished / "model_card.md").read_text()
    table = pd.read_csv(finished / "predictions.csv")
    true, pred = table["true_grade"].to_numpy(), table["pred_grade"].to_numpy()
    assert f"| accuracy | {accuracy_score(true, pred):.1%} [" in card
    assert f"| QWK | {cohen_kappa_score(true, pred, weights='quadratic'):.3f} [" in card
    recalls = recall_score(true, pred, labels=range(5), average=None, zero_division=0)
    for grade, recall in enumerate(recalls):
        assert re.search(rf"\| {grade} {GRADE_NAMES[grade]} \| {recall:.2f}( \[|\s*\|)", card), grade
    test_counts = np.bincount(true, minlength=5)
    for grade, count in enumerate(test_counts):
        assert re.search(rf"\| {grade} {GRADE_NAMES[grade]} \| \d+ \| \d+ \| {count} \|", card), grade
    rarely = [f"{g} {GRADE_NAMES[g]} ({r:.2f})" for g, r in enumerate(recalls) if r < RARELY_FOUND]
    assert ("Grades it finds in fewer than" in card) == bool(rarely)
    assert all(entry in card for entry in rarely)
    assert "chosen on the TEST split" in card and "not a medical device" in card


def test_the_card_is_written_again_from_the_record_and_refuses_an_unfinished_folder(finished, tmp_path, capsys):
    (finished / "model_card.md").unlink()
    assert main([str(finished)]) == 0
    assert (finished / "model_card.md").is_file()
    with pytest.raises(Exception, match="holds no finished run"):
        main([str(tmp_path)])

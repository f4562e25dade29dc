"""A real-data regression guard: trained a few minutes on eyepacs-dev, a model grades another camera's photos.

ResNet-18 from scratch with ``--recipe best-cpu`` for a few epochs at 128 px on the ``retina`` copy of
eyepacs-dev's training photos, then every photo of clinical-ext-dev (raw photos of another camera and
population, never trained on) graded as ``predict --preprocess`` grades them. Prepared as the run's own
photos were, the referable AUC must clear ``FLOOR``; shown the same photos unprepared (the mismatch this
project once shipped), it must not. The floor sits between what this very protocol gave on the 2-core
AMD EPYC (bf16) on 2026-12-05, with the recipe's saturation: prepared 0.787; the same model shown the photos
unprepared 0.510 (Graham-prepared 0.589); a model trained on shuffled labels 0.448 prepared (0.572 at most,
unprepared). Before saturation joined the recipe (2026-12-04): 0.766, 0.566 (0.635), shuffled 0.552 (0.601).
The training takes about 5 minutes on 2 cores.
"""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from retino_utils.data import SPLITS, read_split
from retino_utils.data.preprocess import preprocess_dataset
from retino_utils.predict.predictor import Predictor
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig

FLOOR = 0.68  # external referable AUC
EPOCHS = 10
SIZE = 128


@pytest.mark.slow
def test_a_few_minutes_on_eyepacs_grade_another_cameras_photos_once_prepared(shared_data, tmp_path):
    external = shared_data / "clinical-ext-dev"
    if not external.is_dir():
        pytest.skip(f"no external set at {external}")
    copy = tmp_path / "retina"
    assert not preprocess_dataset(shared_data / "eyepacs-dev", copy, SIZE, prepare="retina", progress=False).failed
    config = TrainConfig.with_recipe("best-cpu", data=str(copy), out=str(tmp_path / "run"), image_size=SIZE,
                                     epochs=EPOCHS, bootstrap=0, progress=False)
    fit(config)

    splits = [read_split(external, split) for split in SPLITS]
    photos = [path for split in splits for path in split.paths]
    referable = np.concatenate([split.labels for split in splits]) >= 2
    predictor = Predictor.from_run(config.out)
    assert predictor.preparation == "retina"
    prepared = roc_auc_score(referable, predictor(photos, prepare=predictor.preparation)["score"])
    unprepared = roc_auc_score(referable, predictor(photos, prepare=None)["score"])
    assert prepared >= FLOOR, f"external referable AUC {prepared:.3f} under the floor {FLOOR} (unprepared {unprepared:.3f})"
    assert unprepared < FLOOR, f"unprepared photos graded as well ({unprepared:.3f}): the guard cannot tell"

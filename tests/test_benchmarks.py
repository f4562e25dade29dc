"""The benchmark scripts' --smoke modes, so they keep running as the package changes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score

from retino_utils.paths import REPO_ROOT


def run_benchmark(script, *args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    result = run_benchmark("throughput.py", "--smoke", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ours/ref" in result.stdout
    figures = json.loads(out.read_text())
    arch = figures["archs"]["resnet18"]
    for key in ("reference_images_per_s", "ours_images_per_s", "ceiling_images_per_s"):
        assert arch[key] > 0
    assert figures["cache_build_images_per_s"] > 0


@pytest.mark.slow
def test_real_data_smoke(tmp_path):
    out = tmp_path / "real.json"
    result = run_benchmark("real_data.py", "--smoke", "--out", tmp_path / "runs", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "majority grade" in result.stdout and "best-cpu" in result.stdout
    figures = json.loads(out.read_text())
    assert set(figures["runs"]) == {"reports", "best-cpu"}
    for run in figures["runs"].values():
        assert 1 <= run["epochs"] <= 2  # what the probe found the budget affords, capped by --max-epochs
        predictions = pd.read_csv(Path(run["out"]) / "predictions.csv")
        assert run["accuracy"] == pytest.approx(accuracy_score(predictions.true_grade, predictions.pred_grade))
        assert run["qwk"] == pytest.approx(cohen_kappa_score(predictions.true_grade, predictions.pred_grade,
                                                             labels=range(5), weights="quadratic",
                                                             replace_undefined_by=0.0))
    truth = predictions.true_grade.to_numpy()
    train_labels = pd.read_csv(Path(figures["data"]) / "train_label.csv", header=None)[0].to_numpy()
    majority = np.bincount(train_labels).argmax()
    assert figures["baseline"]["accuracy"] == pytest.approx(np.mean(truth == majority))
    assert figures["baseline"]["recall"][majority] == 1.0

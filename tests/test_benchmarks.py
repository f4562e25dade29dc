"""The benchmark scripts' --smoke modes, so they keep running as the package changes."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from retino_utils.data import SPLITS, read_split
from retino_utils.evaluation.results import signed_interval
from retino_utils.paths import REPO_ROOT
from retino_utils.train.config import RECIPES, TrainConfig
from retino_utils.train.loaders import read_splits

BENCHMARKS = REPO_ROOT / "benchmarks"


def run_benchmark(script, *args, environment=None):
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**(os.environ if environment is None else environment), "TQDM_DISABLE": "1"})


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    result = run_benchmark("throughput.py", "--smoke", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    arch = figures["archs"]["resnet18"]
    # Each rate is the median of its interleaved repeats, the ratios are of those medians, and the table prints them.
    for name in ("reference", "ours", "ceiling"):
        assert len(arch["repeats"][name]) == 3 and min(arch["repeats"][name]) > 0
        assert arch[f"{name}_images_per_s"] == pytest.approx(np.median(arch["repeats"][name]))
    assert arch["speedup"] == pytest.approx(arch["ours_images_per_s"] / arch["reference_images_per_s"])
    assert arch["efficiency"] == pytest.approx(arch["ours_images_per_s"] / arch["ceiling_images_per_s"])
    row = next(line for line in result.stdout.splitlines() if line.startswith("resnet18 ")).split()
    printed = [arch["reference_images_per_s"], arch["ours_images_per_s"], arch["ceiling_images_per_s"]]
    assert [float(v) for v in row[1:4]] == [round(v, 1) for v in printed]
    assert float(row[4].rstrip("x")) == round(arch["speedup"], 2)


@pytest.mark.slow
def test_throughput_compile_smoke(tmp_path):
    """Eager against compiled in one run: rates, the compilation's seconds, and the payback they imply; the cold
    compile cache it made for itself is gone with it."""
    out, temporary = tmp_path / "throughput.json", tmp_path / "tmp"
    temporary.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    result = run_benchmark("throughput.py", "--smoke", "--compile", "--json", out,
                           environment={**environment, "TMPDIR": str(temporary)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(temporary.glob("throughput-inductor-*"))
    assert "pays back after" in result.stdout
    arch = json.loads(out.read_text())["archs"]["resnet18"]
    assert arch["compiled_images_per_s"] > 0 and arch["ours_images_per_s"] > 0 and "reference_images_per_s" not in arch
    assert arch["compile_s"] > 1  # a cold compilation of a ResNet takes seconds, not a cache hit
    assert arch["compile_speedup"] == pytest.approx(arch["compiled_images_per_s"] / arch["ours_images_per_s"])


def test_compile_payback_is_where_the_two_timelines_cross(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from throughput import compile_payback

    figures = compile_payback(compile_s=30.0, eager_rate=100.0, compiled_rate=125.0)
    n = figures["payback_images"]
    assert n / 100.0 == pytest.approx(30.0 + n / 125.0)  # eager time = compilation + compiled time
    assert figures["compile_speedup"] == pytest.approx(1.25)
    assert compile_payback(30.0, 100.0, 95.0)["payback_images"] is None  # slower compiled: never


@pytest.mark.slow
def test_loading_smoke(tmp_path):
    """The cache's size is photos x size^2 x 3 bytes; the cores needed follow from the measured rate."""
    out = tmp_path / "loading.json"
    result = run_benchmark("loading.py", "--smoke", "--photos", 1000, "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["cache_bytes"] == 1000 * 64 * 64 * 3
    rates = figures["pil_images_per_s"]
    assert all(value > 0 for value in rates.values()) and figures["cache_images_per_s"] > 0
    per_core = rates[str(figures["cores"])] / figures["cores"]
    assert figures["pil_images_per_s_per_core"] == pytest.approx(per_core)
    a100 = figures["gpus"]["A100"]
    assert a100["resnet50"] == pytest.approx(2470 * (224 / 64) ** 2)
    assert a100["pil_cores_needed"]["resnet18"] == pytest.approx(a100["resnet18"] / per_core)


@pytest.mark.slow
def test_real_data_smoke(tmp_path):
    out = tmp_path / "real.json"
    result = run_benchmark("real_data.py", "--smoke", "--out", tmp_path / "runs", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "majority grade" in result.stdout and "best-cpu" in result.stdout
    figures = json.loads(out.read_text())
    assert set(figures["runs"]) == {"reports", "best-cpu", "best-cpu-graham", "best-cpu-retina",
                                    "best-cpu-retina-no-saturation"}
    # The previous recipe differs from today's in saturation alone, and is paired with it on both views.
    previous, current = (yaml.safe_load((Path(figures["runs"][name]["out"]) / "config.yaml").read_text())
                         for name in ("best-cpu-retina-no-saturation", "best-cpu-retina"))
    assert {k for k in current if current[k] != previous[k]} == {"saturation", "out"}
    assert (previous["saturation"], current["saturation"]) == (0.0, RECIPES["best-cpu"]["saturation"]) != (0.0, 0.0)
    assert {"best-cpu-retina - best-cpu-retina-no-saturation"} <= set(figures["differences"]) & set(
        figures["external_differences"])
    normalised = yaml.safe_load((Path(figures["runs"]["best-cpu-graham"]["out"]) / "config.yaml").read_text())["data"]
    assert json.loads((Path(normalised) / ".retino-preprocess.json").read_text())["prepare"] == "graham"
    paired = figures["differences"]["best-cpu-graham - best-cpu"]
    for figure in ("accuracy", "qwk"):
        expected = figures["runs"]["best-cpu-graham"]["record"][figure] - figures["runs"]["best-cpu"]["record"][figure]
        assert paired[figure]["difference"] == pytest.approx(expected)
    # The external set (in the smoke run, the synthetic photos graded raw) is graded as predict grades it.
    from retino_utils.predict.predictor import Predictor

    retina = figures["runs"]["best-cpu-retina"]
    photos = [read_split(figures["data"], split) for split in SPLITS]
    graded = Predictor.from_run(retina["out"])([p for split in photos for p in split.paths], prepare="retina")
    referable = np.concatenate([split.labels for split in photos]) >= 2
    assert retina["external"]["referable_auc"] == pytest.approx(roc_auc_score(referable, graded["referable_score"]))
    assert "best-cpu-retina - best-cpu-graham" in figures["external_differences"]
    for run in figures["runs"].values():
        record = run["record"]
        assert run["epochs"] == 2 and record["intervals"]["qwk"][0] <= record["qwk"] <= record["intervals"]["qwk"][1]
        predictions = pd.read_csv(Path(run["out"]) / "predictions.csv")
        assert record["accuracy"] == pytest.approx(accuracy_score(predictions.true_grade, predictions.pred_grade))
        assert record["qwk"] == pytest.approx(cohen_kappa_score(predictions.true_grade, predictions.pred_grade,
                                                             labels=range(5), weights="quadratic",
                                                             replace_undefined_by=0.0))
    truth = predictions.true_grade.to_numpy()
    train_labels = pd.read_csv(Path(figures["data"]) / "train_label.csv", header=None)[0].to_numpy()
    majority = np.bincount(train_labels).argmax()
    assert figures["baseline"]["scores"]["accuracy"] == pytest.approx(np.mean(truth == majority))
    assert figures["baseline"]["scores"]["recall"][majority] == 1.0


@pytest.mark.slow
def test_cpu_levers_smoke(tmp_path):
    """Every variant trains and is scored on validation with cross-fitted cut points, never on the test split."""
    out = tmp_path / "levers.json"
    result = run_benchmark("cpu_levers.py", "--smoke", "--out", tmp_path / "runs", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    variants = figures["variants"]
    assert {"base", "progressive", "ema", "graham", "base+tta", "progressive+fuse", "adamw+frequencies"} <= set(variants)
    for name, row in variants.items():
        low, high = row["qwk_interval"]
        assert -1 <= low <= high <= 1, name
        assert ("qwk_difference" in row) == (name != "base")
        assert row["compared_with"] == ("base" if "+" not in name else name.split("+")[0])
    assert "validation split" in result.stdout


def test_cross_fitted_grades_never_use_a_photos_own_label(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from cpu_levers import cross_fitted_grades

    rng = np.random.default_rng(0)
    names = [f"{p}_{eye}" for p in range(100) for eye in ("left", "right")]
    labels = np.repeat(rng.integers(0, 5, 100), 2)
    scores = labels + rng.normal(0, 0.3, len(labels))
    grades = cross_fitted_grades(scores, labels, names)
    assert np.mean(grades == labels) > 0.8
    # Relabel one patient at random: only other patients' grades may move, never that patient's own.
    for patient in rng.choice(100, 10, replace=False):
        changed = labels.copy()
        changed[2 * patient: 2 * patient + 2] = (labels[2 * patient] + 2) % 5
        regraded = cross_fitted_grades(scores, changed, names)
        assert regraded[2 * patient] == grades[2 * patient] and regraded[2 * patient + 1] == grades[2 * patient + 1]


def test_a_lever_study_trains_the_levers_and_what_each_is_compared_with_only(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from transfer_levers import VARIANTS, study_variants

    assert study_variants(["retina+jpeg", "retina+gamma"]) == ["retina", "retina+gamma", "retina+jpeg"]
    assert study_variants(["green", "retina+jpeg"]) == ["graham", "retina", "green", "retina+jpeg"]
    assert study_variants(["graham"]) == ["graham"]
    assert study_variants(VARIANTS) == list(VARIANTS)


def test_each_lever_is_judged_on_the_footing_it_was_chosen_on_even_after_it_joined_the_recipe(monkeypatch, tmp_path):
    """Saturation is in ``best-cpu`` now; the study's variants still train without it unless they add it, so
    ``retina+saturation`` differs from ``retina`` in saturation alone, as when it was measured."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr("transfer_levers.prepared_copy", lambda args, prepare: tmp_path / prepare)
    from types import SimpleNamespace

    from transfer_levers import VARIANTS, variant_config

    args = SimpleNamespace(out=tmp_path, image_size=128, epochs=20, smoke=False, seed=0, progress=False, device="cpu")
    configs = {name: variant_config(name, args) for name in VARIANTS}
    assert RECIPES["best-cpu"]["saturation"] > 0
    assert configs["retina"].saturation == configs["graham"].saturation == 0
    lever, base = (dataclasses.asdict(configs[name]) for name in ("retina+saturation", "retina"))
    assert {key for key in lever if lever[key] != base[key]} == {"saturation", "out"}
    assert lever["saturation"] == 0.5


@pytest.mark.slow
def test_transfer_levers_smoke(tmp_path):
    """Each variant is trained with the one it changes, judged on both views, paired with it on each."""
    out = tmp_path / "transfer.json"
    result = run_benchmark("transfer_levers.py", "--smoke", "--only", "retina+jpeg", "green", "--out",
                           tmp_path / "runs", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    variants = json.loads(out.read_text())["variants"]
    assert list(variants) == ["graham", "retina", "green", "retina+jpeg"]
    assert [row["compared_with"] for row in variants.values()] == [None, "graham", "graham", "retina"]
    for name, row in variants.items():
        trained_on = yaml.safe_load((tmp_path / "runs" / name / "config.yaml").read_text())["data"]
        assert json.loads((Path(trained_on) / ".retino-preprocess.json").read_text())["prepare"] == row["prepare"]
        for view in ("internal", "external"):
            figures = row[view]
            low, high = figures["auc_interval"]
            assert low <= figures["referable_auc"] <= high, (name, view)
            assert ("auc_difference" in figures) == (row["compared_with"] is not None), (name, view)
    assert yaml.safe_load((tmp_path / "runs" / "retina+jpeg" / "config.yaml").read_text())["jpeg"] == 30
    for key in ("qwk_difference", "auc_difference"):  # the printed table shows both paired differences
        assert signed_interval(variants["retina+jpeg"]["external"][key]) in result.stdout


@pytest.mark.slow
def test_transfer_levers_cross_validated_judges_every_training_photo_once(tmp_path):
    """With --folds each variant trains once per fold; each training photo is graded by the run that held it out."""
    out = tmp_path / "folds.json"
    result = run_benchmark("transfer_levers.py", "--smoke", "--only", "retina+jpeg", "--folds", "2", "--out",
                           tmp_path / "runs", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["folds"] == 2 and list(results["variants"]) == ["retina", "retina+jpeg"]
    held_out = []
    for fold in range(2):
        run = tmp_path / "runs" / "2-folds" / "retina+jpeg" / f"fold{fold}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["folds"], config["fold"], config["jpeg"]) == (2, fold, 30)
        assert f"validation split (fold {fold} of 2 over the training patients)" in (run / "model_card.md").read_text()
        held_out += read_splits(TrainConfig.from_dict(config))[1].names
    trained_on = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert sorted(held_out) == sorted(read_split(trained_on, "train").names)
    assert results["validation_photos"] == len(held_out)
    assert results["external_photos"] == sum(len(read_split(results["external"], split)) for split in SPLITS)
    row = results["variants"]["retina+jpeg"]
    for view in ("internal", "external"):
        low, high = row[view]["qwk_interval"]
        assert low <= row[view]["qwk"] <= high and "qwk_difference" in row[view]
    assert "each of 2 folds" in result.stdout

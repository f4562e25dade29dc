"""The training engine end to end on a tiny dataset: outputs, resume, bad input, frozen phases."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.metrics import accuracy_score, cohen_kappa_score

from retino_utils.errors import RetinoError
from retino_utils.evaluation.record import RECORD_VERSION
from retino_utils.train.checkpoint import CHECKPOINT_VERSION, Checkpoint
from retino_utils.train.cli import config_from_args, fit
from retino_utils.train.config import RECIPES, TrainConfig
from retino_utils.train.run_folder import HISTORY_COLUMNS

TIMING_COLUMNS = ["seconds", "images_per_s"]


def cli(*args, env=None, timeout=300):
    full_env = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "retino_utils.train", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def small_config(data, out, **overrides):
    values = dict(data=str(data), out=str(out), arch="resnet18", epochs=2, batch_size=8, image_size=32,
                  device="cpu", progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.heavy
def test_cli_writes_every_run_file(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = cli("--data", tiny_dataset, "--arch", "resnet18", "--weights", "none", "--epochs", 2,
                 "--image-size", 32, "--batch-size", 8, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "history.csv", "best.pt", "last.pt", "predictions.csv", "metrics.json"):
        assert (out / name).is_file(), name
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert list(history.epoch) == [1, 2]
    # metrics.json agrees with predictions.csv, recomputed independently with sklearn
    predictions = pd.read_csv(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(predictions) == 20 == metrics["n"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(predictions.true_grade, predictions.pred_grade))
    qwk = cohen_kappa_score(predictions.true_grade, predictions.pred_grade, weights="quadratic")
    assert metrics["qwk"] == pytest.approx(0.0 if np.isnan(qwk) else qwk)
    probs = predictions[[f"p{g}" for g in range(5)]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == predictions.pred_grade).all()
    best_epoch = metrics["best_epoch"]
    assert metrics["accuracy"] == pytest.approx(history.test_acc[best_epoch - 1])
    # the checkpoint is one dict readable with weights_only
    state = torch.load(out / "last.pt", weights_only=True)
    assert set(state) == {field.name for field in dataclasses.fields(Checkpoint)}  # every key declared
    assert state["epoch"] == 2 and state["schema_version"] == CHECKPOINT_VERSION
    assert metrics["schema_version"] == RECORD_VERSION


def test_imagenet_without_cached_file_fails_before_training(tiny_dataset, tmp_path):
    result = cli("--data", tiny_dataset, "--weights", "imagenet", "--epochs", 1, "--image-size", 32,
                 "--out", tmp_path / "run", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "resnet18-f37072fd.pth" in lines[0] and str(tmp_path / "torch") in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("args, needle", [
    (["--arch", "resnet34"], "resnet34"),
    (["--loss", "hinge"], "hinge"),
    (["--device", "tpu"], "tpu"),
])
@pytest.mark.heavy
def test_unknown_choices_are_one_line_errors(tiny_dataset, tmp_path, args, needle):
    result = cli("--data", tiny_dataset, "--out", tmp_path / "run", *args)
    assert result.returncode == 2
    assert needle in result.stderr


def test_config_errors_name_the_value(tiny_dataset, tmp_path):
    with pytest.raises(RetinoError, match="tpu"):
        fit(small_config(tiny_dataset, tmp_path / "r", device="tpu"))
    with pytest.raises(RetinoError, match="hinge"):
        small_config(tiny_dataset, tmp_path / "r", loss="hinge")


def test_recipes_fill_only_what_the_command_line_leaves_open(tmp_path):
    common = ["--data", str(tmp_path), "--out", str(tmp_path / "run")]
    reports = config_from_args(common)  # the engine's defaults are the reference reports' optimiser
    assert (reports.loss, reports.lr, reports.momentum, reports.weight_decay, reports.schedule, reports.sampler) == \
        ("ce", 1e-3, 0.9, 5e-4, "none", "none")
    best = config_from_args([*common, "--recipe", "best-cpu"])
    assert best.recipe == "best-cpu"
    for name, value in RECIPES["best-cpu"].items():
        assert getattr(best, name) == value
    assert best.optimizer != reports.optimizer and best.loss != reports.loss  # the recipe really changes something
    mixed = config_from_args([*common, "--recipe", "best-cpu", "--lr", "0.01", "--sampler", "none"])
    assert (mixed.lr, mixed.sampler, mixed.loss) == (0.01, "none", RECIPES["best-cpu"]["loss"])


def test_weights_file_of_another_architecture(tiny_dataset, tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(RetinoError, match="r50.pth"):
        fit(small_config(tiny_dataset, tmp_path / "run", weights=str(path)))


def test_empty_split_and_missing_image_fail_before_training(tiny_dataset, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns(".retino-cache"))
    (data / "test_img.csv").write_text("")
    (data / "test_label.csv").write_text("")
    with pytest.raises(RetinoError, match="test"):
        fit(small_config(data, tmp_path / "run1"))
    shutil.rmtree(data)
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns(".retino-cache"))
    first = (data / "train_img.csv").read_text().split()[0]
    (data / "images" / f"{first}.jpeg").unlink()
    with pytest.raises(RetinoError, match=first):
        fit(small_config(data, tmp_path / "run2"))
    assert not (tmp_path / "run2" / "last.pt").exists()


def test_resume_refuses_another_config(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    fit(small_config(tiny_dataset, out, epochs=1))
    with pytest.raises(RetinoError, match="already holds"):
        fit(small_config(tiny_dataset, out, epochs=1))
    with pytest.raises(RetinoError, match="lr"):
        fit(small_config(tiny_dataset, out, epochs=1, lr=0.1, resume=True))
    # the same config resumes a finished run without training again
    history = fit(small_config(tiny_dataset, out, epochs=1, resume=True))
    assert len(history) == 1


def _strip_timing(frame):
    return frame.drop(columns=TIMING_COLUMNS)


@pytest.mark.parametrize("levers", [[], ["--sizes", "24:1", "--ema", "0.9", "--sampler", "weighted_to_natural",
                                     "--optimizer", "adamw", "--scale", "0.1", "--color", "0.2"]],
                         ids=["plain", "cpu-levers"])
@pytest.mark.heavy
def test_killed_run_resumes_to_the_same_history(tiny_dataset, tmp_path, levers):
    """Killed after epoch 1 (with the CPU levers: at the small size, the moving average half-built)."""
    args = ["--data", tiny_dataset, "--epochs", 3, "--image-size", 32, "--batch-size", 8, "--device", "cpu",
            "--deterministic", "--schedule", "onecycle", "--lr", "0.01", *levers]
    reference = tmp_path / "uninterrupted"
    assert cli(*args, "--out", reference).returncode == 0

    out = tmp_path / "interrupted"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "retino_utils.train", *map(str, args), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(pd.read_csv(history)) >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(pd.read_csv(history)) == 1

    resumed = cli(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    pd.testing.assert_frame_equal(_strip_timing(pd.read_csv(out / "history.csv")),
                                  _strip_timing(pd.read_csv(reference / "history.csv")))
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv"), pd.read_csv(reference / "predictions.csv"))


@pytest.mark.heavy
def test_both_loaders_train_the_same_run(tiny_dataset, tmp_path):
    """The per-image decoding path shares the cache path's sampling and augmentation: same history."""
    settings = dict(epochs=2, rotation=20.0, sampler="weighted", deterministic=True)
    cached = fit(small_config(tiny_dataset, tmp_path / "cache", loader="cache", **settings))
    decoded = fit(small_config(tiny_dataset, tmp_path / "pil", loader="pil", **settings))
    pd.testing.assert_frame_equal(_strip_timing(cached), _strip_timing(decoded))


def test_feature_extraction_phase_keeps_the_backbone_frozen(tiny_dataset, tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=1000)
    source.train()
    source(torch.randn(4, 3, 32, 32))  # non-default BatchNorm statistics, so a reset would show
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    out = tmp_path / "run"
    history = fit(small_config(tiny_dataset, out, weights=str(path), epochs=1, fe_epochs=1))
    assert list(history.phase) == ["fe"]
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    expected = source.state_dict()
    for key, value in trained.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(value, expected[key]), key
    assert trained["fc.weight"].shape == (5, 512)


def test_regression_head_writes_scores_and_thresholds(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    fit(small_config(tiny_dataset, out, loss="mse", epochs=1))
    metrics = json.loads((out / "metrics.json").read_text())
    thresholds = metrics["thresholds"]
    assert len(thresholds) == 4 and thresholds == sorted(thresholds)
    predictions = pd.read_csv(out / "predictions.csv")
    assert "score" in predictions
    expected = np.digitize(predictions.score, thresholds)
    assert (predictions.pred_grade == expected).all()


@pytest.mark.slow
def test_torchrun_two_processes(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "retino_utils.train", "--data", str(tiny_dataset),
         "--epochs", "2", "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    history = pd.read_csv(out / "history.csv")
    assert list(history.epoch) == [1, 2]
    predictions = pd.read_csv(out / "predictions.csv")
    test_names = (tiny_dataset / "test_img.csv").read_text().split()
    assert sorted(predictions.name) == sorted(test_names)  # the whole test set, each image once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(accuracy_score(predictions.true_grade, predictions.pred_grade))
    # One process grading the kept checkpoint reproduces what the two gathered, photo for photo and figure for figure.
    single = subprocess.run([sys.executable, "-m", "retino_utils.predict", str(out), str(tiny_dataset), "--out",
                             str(tmp_path / "single.csv")], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    alone = pd.read_csv(tmp_path / "single.csv")
    for column in ("name", "true_grade", "pred_grade"):
        assert alone[column].tolist() == predictions[column].tolist(), column
    np.testing.assert_allclose(alone["referable_score"], predictions["referable_score"], atol=2e-6)
    scored = json.loads((tmp_path / "single.metrics.json").read_text())
    for figure in ("accuracy", "qwk", "referable_auc"):
        assert scored[figure] == pytest.approx(metrics[figure]), figure


@pytest.mark.slow
def test_two_processes_train_as_one_process_on_the_same_batches(tiny_dataset, tmp_path):
    """Two processes with batch 8 each see, step by step, the 16 photos one process with batch 16 sees (the ranks
    take every other photo of one seeded order) and average their gradients: the same training. Only the head
    trains (a feature-extraction run: frozen batch norms, whose per-process statistics would differ), in fp32."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "backbone.pth")
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    common = ["-m", "retino_utils.train", "--data", str(tiny_dataset), "--weights", str(tmp_path / "backbone.pth"),
              "--fe-epochs", "2", "--epochs", "2", "--lr", "0.005", "--image-size", "32", "--precision", "fp32",
              "--device", "cpu", "--bootstrap", "0"]
    runs = {"one": [sys.executable, *common, "--batch-size", "16", "--out", str(tmp_path / "one")],
            "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *common,
                    "--batch-size", "8", "--out", str(tmp_path / "two")]}
    for name, command in runs.items():
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, (name, result.stderr[-3000:])
    one, two = (pd.read_csv(tmp_path / name / "history.csv") for name in runs)
    assert abs(one["train_loss"].iloc[1] - one["train_loss"].iloc[0]) > 1e-2  # the head moved: there is a path to match
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(two[["val_loss", "test_loss"]], one[["val_loss", "test_loss"]], rtol=1e-4)
    a, b = (pd.read_csv(tmp_path / name / "predictions.csv") for name in runs)
    assert a[["name", "true_grade"]].equals(b[["name", "true_grade"]])
    np.testing.assert_allclose(b[[f"p{g}" for g in range(5)]], a[[f"p{g}" for g in range(5)]], atol=1e-4)


def test_every_setting_explains_itself_in_the_help():
    """``train --help`` has a line of text for every TrainConfig field, read from its declaration."""
    result = cli("--help")
    assert result.returncode == 0
    flat = "".join(result.stdout.split())  # argparse wraps lines, at hyphens too
    for field in dataclasses.fields(TrainConfig):
        text = field.metadata.get("help")
        assert text, f"{field.name} has no help text"
        assert "".join(text.replace("%%", "%").split()) in flat, field.name

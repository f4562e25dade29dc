"""The commands answer a mistake with one line and lose nothing: report's --pdf and earlier failures,
train's odd sizes, a file for a folder, and a refusal whose advice is not the command that failed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig


def cli(module, *args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", f"retino_utils.{module}", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})}, timeout=timeout)


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.heavy
def test_report_pdf_without_chromium_is_refused_before_the_build(tmp_path):
    no_browser = {"PATH": str(Path(sys.executable).parent)}  # python's own folder: no chromium on it
    result = cli("report", "--profile", "smoke", "--out", tmp_path / "out", "--pdf", env=no_browser)
    message = one_line_error(result)
    assert "apt-get install chromium" in message and "--force" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.heavy
def test_an_earlier_failure_of_another_step_does_not_fail_an_only_build(tmp_path):
    out = tmp_path / "out"
    (out / "steps").mkdir(parents=True)
    (out / "steps" / "comparison.json").write_text(json.dumps(
        {"hash": "old", "status": "failed", "message": "ValueError: from a build long ago", "seconds": 1}))
    result = cli("report", "--profile", "smoke", "--out", out, "--only", "data",
                 env={"RETINO_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "failed step comparison" not in result.stdout


@pytest.mark.heavy
def test_a_last_training_batch_of_one_photo_trains(tiny_dataset, tmp_path):
    # 40 training photos, 4 held out for validation: batches of 35 leave one photo for the last batch.
    result = cli("train", "--data", tiny_dataset, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "35",
                 "--image-size", "32", "--device", "cpu", "--bootstrap", "0", "--val-fraction", "0.1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_train_refuses_a_tiny_image_size_and_a_file_for_data(tiny_dataset, tmp_path):
    message = one_line_error(cli("train", "--data", tiny_dataset, "--out", tmp_path / "a", "--image-size", "1"))
    assert "image_size must be at least 16" in message
    photo = next((tiny_dataset / "images").iterdir())
    message = one_line_error(cli("train", "--data", photo, "--out", tmp_path / "b"))
    assert "is a file, not a folder" in message
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.heavy
def test_a_refused_resume_does_not_advise_the_command_that_failed(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_dataset), out=str(run), epochs=1, batch_size=8, image_size=32, device="cpu",
                    progress=False, bootstrap=0))
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "lr": 0.05}))
    message = one_line_error(cli("train", "--config", run / "config.yaml", "--resume"))
    assert "lr: 0.001 -> 0.05" in message and "edited since it trained" in message
    shutil.rmtree(run)

"""Nothing trained is lost and nothing stale passes as current: pipeline typos stop the build before it
touches anything, changed runs are moved aside (never deleted), one trainer per run folder, and a run
records the data it learned from."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from retino_utils.errors import RetinoError
from retino_utils.report.pipeline import PIPELINE_FILE
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig, load_config

RUN = "resnet18_scratch"
LOCK_FILE, SUPERSEDED_DIR = ".lock", ".superseded"  # as the README tells users


def run_cli(module, *args, cwd=None, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", f"retino_utils.{module}", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
                          timeout=timeout)


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def edited_pipeline(tmp_path: Path, name: str, edit) -> Path:
    pipeline = yaml.safe_load(PIPELINE_FILE.read_text())
    edit(pipeline)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def small_config(data, out, **overrides):
    values = dict(data=str(data), out=str(out), epochs=2, batch_size=8, image_size=32, device="cpu",
                  progress=False, bootstrap=50)
    return TrainConfig(**{**values, **overrides})


# -- 1 and 3: the report never deletes a run; typos touch nothing; changed data is a changed run -------------
@pytest.mark.slow
def test_pipeline_edits_typos_and_undo_never_delete_a_trained_run(tmp_path):
    out = tmp_path / "out"
    env = {"RETINO_CACHE": str(tmp_path / "cache")}

    def build(pipeline=PIPELINE_FILE, *extra):
        return run_cli("report", "--pipeline", pipeline, "--profile", "smoke", "--out", out, "--device", "cpu",
                       "--only", f"train/{RUN}", *extra, env=env)

    first = build()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    run_dir, superseded = out / "runs" / RUN, out / "runs" / SUPERSEDED_DIR
    original = hashlib.sha256((run_dir / "best.pt").read_bytes()).hexdigest()
    (run_dir / "my_notes.txt").write_text("a file the user put there")
    before = digests(out / "runs")

    typos = {
        "lrr": (lambda p: p["runs"][RUN].update(lrr=0.01), "unknown key 'lrr' (did you mean 'lr'?"),
        "msee": (lambda p: p["runs"][RUN].update(loss="msee"), "unknown loss 'msee'"),
        "trian": (lambda p: p["profiles"]["smoke"].update(trian=p["profiles"]["smoke"].pop("train")),
                  "unknown key 'trian' (did you mean 'train'?"),
        "two": (lambda p: p["profiles"]["smoke"]["train"].update(epochs="two"), "epochs must be a whole number"),
        "run name": (lambda p: p["profiles"]["smoke"]["runs"].update({"resnet18_scrach": {"epochs": 1}}),
                     "'resnet18_scrach' names no run"),
        "top": (lambda p: p.update(runz={}), "unknown key 'runz'"),
    }
    for name, (edit, message) in typos.items():
        result = build(edited_pipeline(tmp_path, name, edit))
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert result.stdout == "", name  # stopped before any step
        assert digests(out / "runs") == before, name

    # A valid edit: the old run is moved aside with the way back, and the new settings train afresh.
    edited = build(edited_pipeline(tmp_path, "lr", lambda p: p["runs"][RUN].update(lr=0.01)))
    assert edited.returncode == 0, edited.stdout[-2000:]
    assert "lr: 0.001 -> 0.01" in edited.stdout and f"mv {superseded}" in edited.stdout
    assert load_config(run_dir / "config.yaml").lr == 0.01
    # The undo: the edited run goes aside too, and the original settings are trained again.
    undone = build()
    assert undone.returncode == 0 and "lr: 0.01 -> 0.001" in undone.stdout
    assert load_config(run_dir / "config.yaml").lr == 0.001
    # Changed labels are a changed run: no "already complete" reuse of the old predictions.
    labels = out / "data" / "test_label.csv"
    grades = labels.read_text().splitlines()
    grades[0] = str((int(grades[0]) + 1) % 5)
    labels.write_text("\n".join(grades) + "\n")
    relabelled = build()
    assert relabelled.returncode == 0 and "labels or photos changed" in relabelled.stdout
    assert pd.read_csv(run_dir / "predictions.csv")["true_grade"].iloc[0] == int(grades[0])
    # --force retrains, and moves the current run aside rather than deleting it.
    forced = build(PIPELINE_FILE, "--force")
    assert forced.returncode == 0 and "--force retrains it" in forced.stdout

    kept = sorted(superseded.iterdir())
    assert len(kept) == 4  # the original, the edit, the undo, the run on the old labels
    checkpoints = {hashlib.sha256((folder / "best.pt").read_bytes()).hexdigest() for folder in kept}
    assert original in checkpoints and len(checkpoints) == 4
    assert (kept[0] / "my_notes.txt").read_text() == "a file the user put there"
    results = json.loads((out / "results.json").read_text())
    assert results["runs"][RUN]["status"] == "done"


def test_a_typo_in_a_profile_or_run_is_refused_naming_where(tmp_path):
    from retino_utils.report.pipeline import load_pipeline

    for edit, where in (
        (lambda p: p["profiles"]["demo"]["runs"]["resnet50_*"].update(epocs=3), "profile demo runs resnet50_*"),
        (lambda p: p["profiles"]["demo"]["synthetic"].update(sed=1), "profile demo synthetic"),
        (lambda p: p["notebooks"][0].update(parameter={}), "notebooks entry 1"),
        (lambda p: p["runs"]["ablation_augmented"].update(rotation="thirty"), "run ablation_augmented"),
        (lambda p: p["profiles"]["cpu"].update(prepare={"preparation": "retinal", "size": 256}),
         "profile cpu prepare: unknown preparation 'retinal'"),
    ):
        with pytest.raises(RetinoError, match=where):
            load_pipeline(edited_pipeline(tmp_path, "bad", edit))


# -- 2: one trainer per run folder ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_training_into_a_busy_run_folder_is_refused_and_a_killed_ones_lock_is_stale(tiny_dataset,
                                                                                               tmp_path):
    out = tmp_path / "run"

    def args(epochs):
        return ["--data", tiny_dataset, "--out", out, "--epochs", epochs, "--batch-size", "8", "--image-size",
                "32", "--device", "cpu", "--no-progress", "--bootstrap", "0"]

    first = subprocess.Popen([sys.executable, "-m", "retino_utils.train", *map(str, args(200))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        deadline = time.time() + 300
        while not (out / "last.pt").exists():  # training, not only starting
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.5)
        second = run_cli("train", *args(200), "--resume")
        assert second.returncode == 2
        assert f"process {first.pid}" in second.stderr and "in use" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the kill...
    resumed = run_cli("train", *args(2), "--resume")
    assert "in use" not in resumed.stderr  # ...and recognised as stale: the next command gets the folder
    assert "another config (epochs: 200 -> 2)" in resumed.stderr
    assert not (out / LOCK_FILE).exists()


# -- 3: train --resume refuses a run whose data changed ---------------------------------------------------
@pytest.mark.heavy
def test_resume_on_changed_labels_is_refused(tiny_dataset, tmp_path):
    import shutil

    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    config = small_config(data, tmp_path / "run")
    fit(config)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data_fingerprint"]
    fit(TrainConfig(**{**config.to_dict(), "resume": True}))  # unchanged data: reused
    labels = (data / "test_label.csv").read_text().splitlines()
    labels[0] = str((int(labels[0]) + 1) % 5)
    (data / "test_label.csv").write_text("\n".join(labels) + "\n")
    with pytest.raises(RetinoError, match="trained on other data.*labels or photos edited"):
        fit(TrainConfig(**{**config.to_dict(), "resume": True}))


# -- 6: paths are stored absolute -------------------------------------------------------------------------
@pytest.mark.heavy
def test_a_run_started_with_relative_paths_resumes_and_predicts_from_elsewhere(tiny_dataset, tmp_path):
    import shutil

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(tiny_dataset, here / "g")
    common = ["--epochs", "2", "--batch-size", "8", "--image-size", "32", "--device", "cpu", "--bootstrap", "50"]
    started = run_cli("train", "--data", "g", "--out", "runs/r", *common, cwd=here)
    assert started.returncode == 0, started.stderr
    saved = load_config(here / "runs" / "r" / "config.yaml")
    assert saved.data == str(here / "g") and saved.out == str(here / "runs" / "r")
    resumed = run_cli("train", "--config", here / "runs" / "r" / "config.yaml", "--resume", cwd=elsewhere)
    assert resumed.returncode == 0 and "already complete" in resumed.stdout, resumed.stderr
    graded = run_cli("predict", here / "runs" / "r", here / "g", "--out", "grades.csv", cwd=elsewhere)
    assert graded.returncode == 0, graded.stderr
    assert pd.read_csv(elsewhere / "grades.csv")["name"].tolist() == \
        pd.read_csv(here / "runs" / "r" / "predictions.csv")["name"].tolist()

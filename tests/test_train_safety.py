"""Training never trains on leaked or repeated photos, and loses nothing to a full disk, a kill or Ctrl-C."""

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from retino_utils.errors import DiskFullError, RetinoError
from retino_utils.paths import REPO_ROOT
from retino_utils.train.cli import fit, resume_command
from retino_utils.train.config import TrainConfig


def small_config(data, out, **overrides):
    values = dict(data=str(data), out=str(out), arch="resnet18", epochs=2, batch_size=8, image_size=32,
                  device="cpu", progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def data(tiny_dataset, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data", ignore=shutil.ignore_patterns(".retino-cache")))


def cli(*args, env=None, **kwargs):
    full_env = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "retino_utils.train", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=300, **kwargs)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_training_refuses_a_repeated_photo(data, tmp_path, skip_bad):
    names = (data / "train_img.csv").read_text().split()
    names[5] = names[0]
    (data / "train_img.csv").write_text("\n".join(names) + "\n")
    with pytest.raises(RetinoError, match=rf"train_img.csv line 6: name '{names[0]}' repeats train_img.csv line 1"):
        fit(small_config(data, tmp_path / "run", skip_bad=skip_bad))
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.heavy
def test_training_refuses_a_photo_in_both_splits_even_with_skip_bad(data, tmp_path):
    train_names = (data / "train_img.csv").read_text().split()
    test_names = (data / "test_img.csv").read_text().split()
    test_names[2] = train_names[7]
    (data / "test_img.csv").write_text("\n".join(test_names) + "\n")
    result = cli("--data", data, "--out", tmp_path / "run", "--epochs", 1, "--image-size", 32, "--skip-bad")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message
    assert f"test_img.csv line 3: name '{train_names[7]}' is also in the train split (train_img.csv line 8)" in message
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.heavy
def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_write_bytes = Path.write_bytes
    saved_epochs = []

    def write_bytes(path, payload):
        if path.name.startswith(".last.pt."):
            saved_epochs.append(path)
            if len(saved_epochs) == 2:  # the second epoch's last.pt: the disk fills up half way
                real_write_bytes(path, bytes(payload)[: len(payload) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(path, payload)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(DiskFullError) as info:
        fit(small_config(data, out, epochs=3))
    message = str(info.value)
    assert "\n" not in message and "enforce fail" not in message
    assert f"the disk under {out} is full: writing last.pt (needs " in message and " MB)" in message
    assert "last.pt still holds epoch 1" in message and "--resume" in message
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    history = fit(small_config(data, out, epochs=3, resume=True))
    assert history["epoch"].tolist() == [1, 2, 3]


@pytest.mark.heavy
def test_history_is_rebuilt_from_the_checkpoint_after_a_crash(data, tmp_path):
    """A crash after last.pt of the final epoch and before history.csv: the resumed run still has every row."""
    out = tmp_path / "run"
    fit(small_config(data, out))
    full = pd.read_csv(out / "history.csv")
    full.iloc[:1].to_csv(out / "history.csv", index=False)
    (out / "metrics.json").unlink()
    (out / "predictions.csv").unlink()
    fit(small_config(data, out, resume=True))
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), full)
    assert (out / "metrics.json").is_file()


@pytest.mark.heavy
def test_stale_checkpoint_temp_files_are_removed_on_the_next_run(data, tmp_path):
    out = tmp_path / "run"
    fit(small_config(data, out, epochs=1))
    stale = out / ".best.pt.k3j_x9q2.tmp"
    stale.write_bytes(b"\0" * 4096)
    fit(small_config(data, out, epochs=1, resume=True))
    assert not stale.exists()


@pytest.mark.heavy
def test_resume_accepts_another_spelling_of_the_same_data_folder(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(small_config(data, out, epochs=1))
    monkeypatch.chdir(data.parent)
    for spelling in ("./data/", "data", f"{data}/"):
        assert len(fit(small_config(spelling, out, epochs=1, resume=True))) == 1


@pytest.mark.heavy
def test_damaged_last_checkpoint_says_what_is_kept(data, tmp_path):
    out = tmp_path / "run"
    fit(small_config(data, out, epochs=2, best_metric="last"))
    (out / "metrics.json").unlink()
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    with pytest.raises(RetinoError) as info:
        fit(small_config(data, out, epochs=2, best_metric="last", resume=True))
    message = str(info.value)
    assert f"{last} is damaged" in message and "best.pt (after epoch 2) is intact" in message
    assert "delete" not in message and "weights_only" not in message
    (out / "best.pt").write_bytes(b"junk")
    with pytest.raises(RetinoError, match="no intact best.pt") as info:
        fit(small_config(data, out, epochs=2, best_metric="last", resume=True))
    assert "delete" not in str(info.value)


@pytest.mark.heavy
def test_another_config_is_refused_without_advice_to_delete(data, tmp_path):
    out = tmp_path / "run"
    fit(small_config(data, out, epochs=1))
    with pytest.raises(RetinoError) as info:
        fit(small_config(data, out, epochs=1, lr=0.5, resume=True))
    message = str(info.value)
    assert "lr: 0.001 -> 0.5" in message and "delete" not in message
    assert f"--config {out / 'config.yaml'} --resume" in message


def test_garbage_weights_file_never_suggests_unsafe_loading(data, tmp_path):
    junk = tmp_path / "weights.pt"
    junk.write_text("this is not a checkpoint")
    with pytest.raises(RetinoError) as info:
        fit(small_config(data, tmp_path / "run", weights=str(junk)))
    message = str(info.value)
    assert f"weights file {junk} is not a state dict or checkpoint of resnet18" in message
    assert "weights_only" not in message and "\n" not in message


def test_resume_command_adds_resume_once():
    assert resume_command(["--data", "a b", "--out", "r"]) == "python -m retino_utils.train --data 'a b' --out r --resume"
    assert resume_command(["--out", "r", "--resume"]).count("--resume") == 1


def test_a_ctrl_c_whose_exception_was_swallowed_still_ends_as_interrupted():
    """CPython drops an exception raised inside a finalizer: the command must not then pass as finished."""
    program = ("import os, signal\nfrom retino_utils.errors import run_cli\n"
               "def main(argv):\n"
               "    try:\n"
               "        os.kill(os.getpid(), signal.SIGINT)\n"
               "        sum(range(10 ** 6))\n"
               "    except KeyboardInterrupt:\n"
               "        pass  # swallowed, as in a __del__\n"
               "    return 0\n"
               "run_cli(main, [])\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 130 and done.stderr.strip() == "interrupted: rerun the same command to resume"


@pytest.mark.heavy
def test_ctrl_c_prints_the_command_that_continues_and_it_does(data, tmp_path):
    out = tmp_path / "run"
    # Enough epochs that the interrupt lands mid-run: three tiny ones once finished before it arrived.
    args = ["--data", str(data), "--out", str(out), "--epochs", "20", "--image-size", "32", "--batch-size", "8"]
    proc = subprocess.Popen([sys.executable, "-m", "retino_utils.train", *args], text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (out / "last.pt").exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    command = err.strip().splitlines()[-1].removeprefix("interrupted: continue with: ")
    assert command == resume_command(args)
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "retino_utils.train"]
    resumed = cli(*words[3:])
    assert resumed.returncode == 0, resumed.stderr
    assert len(pd.read_csv(out / "history.csv")) == 20


def test_missing_imagenet_weights_are_reported_before_torch_is_imported(data, tmp_path):
    """The CLI answers from the cache folder alone: a torch that cannot be imported is never reached."""
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch imported before the weights check')\n")
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO_ROOT}", "TORCH_HOME": str(tmp_path / "torch-home"),
           "RETINO_OFFLINE": "1"}
    result = cli("--data", data, "--weights", "imagenet", "--arch", "resnet50", "--out", tmp_path / "run", env=env)
    assert result.returncode == 2, result.stderr
    assert "ImageNet weights for resnet50 are not cached" in result.stderr
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in result.stderr
    assert "torch imported" not in result.stderr

"""Extending the project takes one declaration: a setting is one line in config.py, an architecture one
entry in architectures.py, a run group and a notebook that reads it are entries in pipeline.yaml.
Checked on temporary copies, through real processes and kernels."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from retino_utils.paths import NOTEBOOKS_DIR, PACKAGE_DIR
from retino_utils.report.pipeline import PIPELINE_FILE

NEW_SETTING = '    blur_radius: float = setting(0.0, "a setting added by a test")\n'


NEW_ARCHITECTURE = '''    Architecture("resnet34", "ResNet-34", "ResNet34_Weights",
                 "https://download.pytorch.org/models/resnet34-b627a593.pth", "basic", (3, 4, 6, 3)),
'''


def package_with(tmp_path, module: str, anchor: str, addition: str) -> dict:
    """A copy of the package with ``addition`` after ``anchor`` in ``module``; an environment that imports it."""
    root = tmp_path / "pkg"
    shutil.copytree(PACKAGE_DIR, root / "retino_utils", ignore=shutil.ignore_patterns("__pycache__"))
    source = root / "retino_utils" / module
    text = source.read_text()
    assert anchor in text
    source.write_text(text.replace(anchor, anchor + addition))
    return {**os.environ, "PYTHONPATH": str(root), "TQDM_DISABLE": "1"}


@pytest.fixture
def package_with_new_setting(tmp_path):
    anchor = '    seed: int = setting(0, "seed of the weights, batches, augmentation and bootstrap")\n'
    return package_with(tmp_path, "train/config.py", anchor, NEW_SETTING)


@pytest.mark.slow
def test_an_architecture_added_in_one_place_trains_and_is_named(tmp_path, tiny_dataset, monkeypatch):
    """torchvision's resnet34 declared in architectures.py only: the CLI offers it, both implementations
    train it an epoch with its own layout of blocks, the tables name it, and its ImageNet file is the one
    torchvision fetches."""
    anchor = "ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in (\n"
    env = package_with(tmp_path, "models/architectures.py", anchor, NEW_ARCHITECTURE)
    env["RETINO_OFFLINE"], env["TORCH_HOME"] = "1", str(tmp_path / "torch-home")
    train = [sys.executable, "-m", "retino_utils.train"]
    assert "resnet34" in run([*train, "--help"], env, cwd=tmp_path).stdout
    for impl in ("torchvision", "native"):
        out = tmp_path / impl
        result = run([*train, "--data", str(tiny_dataset), "--out", str(out), "--arch", "resnet34", "--impl", impl,
                      "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--bootstrap", "0"], env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        state = torch.load(out / "best.pt", weights_only=False)["model"]
        reference = torchvision.models.resnet34(num_classes=5).state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}, impl
    label = run([sys.executable, "-c", "from retino_utils.evaluation import results; import sys; "
                 "print(results.load_runs({'r': sys.argv[1]})[0]['r'].label)", str(out)], env, cwd=tmp_path)
    assert label.stdout.strip() == "ResNet-34, scratch", label.stderr[-2000:]
    refused = run([*train, "--data", str(tiny_dataset), "--out", str(tmp_path / "pretrained"), "--arch", "resnet34",
                   "--weights", "imagenet", "--epochs", "1"], env, cwd=tmp_path)
    assert refused.returncode != 0 and "resnet34-b627a593.pth" in refused.stderr
    assert torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url.endswith("resnet34-b627a593.pth")


def run(args, env, cwd=None, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, cwd=cwd, **kwargs)


@pytest.mark.slow
def test_a_setting_added_in_config_reaches_the_cli_the_notebook_and_config_yaml(
        package_with_new_setting, tiny_dataset, tmp_path):
    env = package_with_new_setting
    train = [sys.executable, "-m", "retino_utils.train"]
    # Run from the temporary folder: `python -m` puts the working directory first on sys.path.
    help_text = run([*train, "--help"], env, cwd=tmp_path).stdout
    assert "--blur-radius BLUR_RADIUS" in help_text and "a setting added by a test" in help_text

    cli_run = tmp_path / "cli-run"
    result = run([*train, "--data", str(tiny_dataset), "--out", str(cli_run), "--epochs", "1", "--image-size", "32",
                  "--blur-radius", "1.5"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load((cli_run / "config.yaml").read_text())["blur_radius"] == 1.5

    notebook_run = tmp_path / "notebook-run"
    papermill = Path(sys.executable).with_name("papermill")
    settings = {"blur_radius": 2.5, "epochs": 1, "image_size": 32, "device": "cpu"}
    result = run([str(papermill), str(NOTEBOOKS_DIR / "02_training.ipynb"), str(tmp_path / "out.ipynb"),
                  "-p", "data_dir", str(tiny_dataset), "-p", "run_dir", str(notebook_run),
                  "-p", "figures_dir", str(tmp_path / "figures"), "-y", f"settings: {json.dumps(settings)}",
                  "--no-progress-bar"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load((notebook_run / "config.yaml").read_text())["blur_radius"] == 2.5


EXTRA_NOTEBOOK_CODE = """
from retino_utils.evaluation import results

runs, missing = results.load_runs(run_dirs)
print("accuracy by run:", {name: round(run.metrics.accuracy, 3) for name, run in runs.items()}, "missing:", missing)
"""


@pytest.mark.slow
def test_a_run_group_and_a_notebook_that_reads_it_need_no_python_change(tmp_path):
    book = new_notebook(cells=[new_code_cell('run_dirs = {}\nfigures_dir = ""'), new_code_cell(EXTRA_NOTEBOOK_CODE)])
    book.cells[0].metadata["tags"] = ["parameters"]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, tmp_path / "extra.ipynb")
    pipeline = yaml.safe_load(PIPELINE_FILE.read_text())
    pipeline["runs"] = {"extra_run": {"groups": ["extra"], "arch": "resnet18", "loss": "wce"}}
    pipeline["profiles"] = {"smoke": pipeline["profiles"]["smoke"]}
    pipeline["notebooks"] = [
        next(entry for entry in pipeline["notebooks"] if entry.get("per_run")),
        {"step": "extra", "notebook": str(tmp_path / "extra.ipynb"), "parameters": {"figures_dir": "{figures}"},
         "run_groups": {"run_dirs": "extra"}},
    ]
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    out = tmp_path / "out"
    result = run([sys.executable, "-m", "retino_utils.report", "--pipeline", str(tmp_path / "pipeline.yaml"),
                  "--profile", "smoke", "--out", str(out), "--device", "cpu"],
                 {**os.environ, "TQDM_DISABLE": "1", "RETINO_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "[2/2] extra: done" in result.stdout
    executed = nbformat.read(out / "notebooks" / "extra.ipynb", as_version=4)
    printed = "".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", []))
    metrics = json.loads((out / "runs" / "extra_run" / "metrics.json").read_text())
    assert f"accuracy by run: {{'extra_run': {round(metrics['accuracy'], 3)}}} missing: []" in printed
    assert metrics["config"]["loss"] == "wce"

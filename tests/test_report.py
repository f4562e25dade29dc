"""The report: notebook hygiene, the runner's error paths, and the smoke profile end to end through real kernels."""

import ast
import base64
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision
import yaml

from retino_utils.errors import RetinoError
from retino_utils.paths import NOTEBOOKS_DIR
from retino_utils.report.html import _summary_table
from retino_utils.report.pipeline import setting_differences
from retino_utils.report.runner import (
    ReportContext,
    build_report,
    check_parameters,
    load_pipeline,
    plan,
    resolve_context,
)
from retino_utils.synthetic.second_camera import generate_second_camera
from retino_utils.train.config import RECIPES, TrainConfig

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED_FIGURES = [
    "data_grades.png", "data_samples.png", "comparison_resnet18.png", "comparison_resnet50.png",
    "confusion_grid.png", "imbalance_confusion.png", "imbalance_recall.png", "screening_roc.png",
    "screening_calibration.png", "ablation.png", "external_validation.png", "external_confusion.png",
    "external_calibration.png",
    *[f"explanations_{run}.png" for run in ("resnet18_scratch", "resnet50_imagenet", "imbalance_regression")],
    *[f"confusion_{run}.png" for run in ("resnet18_scratch", "resnet18_imagenet", "resnet50_scratch",
                                         "resnet50_imagenet")],
]


def run_report(*args, env=None, timeout=900):
    full_env = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "retino_utils.report", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


# -- notebook hygiene ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "outputs stored in git"
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    for cell in code:
        tree = ast.parse(cell.source)
        defined = [node for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defined, f"{path.name} defines logic in a notebook: {cell.source[:80]!r}"


def code_lines(path) -> list[str]:
    """A notebook's code, cell after cell, without blank lines, comments or indentation."""
    nb = nbformat.read(path, as_version=4)
    lines = (line.strip() for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def shared_blocks(notebooks: dict[str, list[str]], size: int = 6) -> list[tuple[str, str, str]]:
    """(first notebook, second notebook, first line) for every run of ``size`` code lines found in both."""
    first_seen, shared = {}, []
    for name, lines in notebooks.items():
        for start in range(len(lines) - size + 1):
            block = tuple(lines[start:start + size])
            owner = first_seen.setdefault(block, name)
            if owner != name:
                shared.append((owner, name, block[0]))
    return shared


def test_notebooks_copy_no_code_from_each_other():
    """Logic repeated across notebooks belongs in the package: no 6 code lines in a row appear in two."""
    assert shared_blocks({path.name: code_lines(path) for path in NOTEBOOKS}) == []


def test_the_copied_code_check_finds_a_block_copied_with_other_indentation(tmp_path):
    block = [f"value_{i} = results.paired(run_{i})" for i in range(6)]
    cells = {"a.ipynb": ["a = 1\n" + "\n".join(block)],
             # indented, with blank lines and a comment inside, and spread over two cells
             "b.ipynb": ["for run in runs:\n" + "\n\n    # the copy\n".join(f"    {line}" for line in block[:3]),
                         "\n".join(block[3:])],
             "c.ipynb": ["\n".join(block[:5])]}  # five lines: not enough
    for name, sources in cells.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), tmp_path / name)
    assert shared_blocks({name: code_lines(tmp_path / name) for name in cells}) == [("a.ipynb", "b.ipynb", block[0])]


def test_a_profiles_differences_from_the_reports_come_from_its_settings():
    pipeline = {"runs": {"a_x": {}, "a_y": {}, "b_z": {"lr": 0.1}},
                "profiles": {"full": {"train": {"image_size": 512}, "runs": {"a_*": {"epochs": 15}}},
                             "mine": {"train": {"image_size": 64},
                                      "runs": {"a_x": {"epochs": 15}, "a_*": {"batch_size": 4},
                                               "b_z": {"recipe": "best-cpu", "lr": 0.1}}}}}
    assert setting_differences(pipeline, "mine") == [
        "image_size: 64 instead of 512 (every run)",
        "batch_size: 4 instead of the default (a_*)",
        "epochs: the default instead of 15 (a_y)",
        "recipe: best-cpu instead of the default (b_z)",
    ]
    assert setting_differences(pipeline, "full") == []
    del pipeline["profiles"]["full"]
    assert setting_differences(pipeline, "mine") == []  # nothing to compare with


# -- the runner's error paths ----------------------------------------------------------------------
def test_unknown_and_missing_parameters_are_errors(tmp_path):
    pipeline = load_pipeline()
    ctx = ReportContext("smoke", tmp_path / "data", tmp_path / "out", tmp_path / "fig", "cpu")
    steps = plan(pipeline, "smoke", ctx)
    check_parameters(steps)  # the shipped pipeline fits its notebooks
    train = next(step for step in steps if step.run)
    train.parameters["learning_rate"] = 0.1
    with pytest.raises(RetinoError, match="unknown parameter.*learning_rate"):
        check_parameters(steps)
    del train.parameters["learning_rate"]
    del train.parameters["settings"]
    with pytest.raises(RetinoError, match="settings.*not given"):
        check_parameters(steps)


def test_plan_fills_groups_and_waits_for_their_runs(tmp_path):
    pipeline = load_pipeline()
    ctx = ReportContext("demo", tmp_path / "data", tmp_path / "out", tmp_path / "fig", "cpu")
    steps = {step.name: step for step in plan(pipeline, "demo", ctx)}
    imbalance = steps["imbalance"]
    group = [name for name, spec in pipeline["runs"].items() if "imbalance" in spec["groups"]]
    assert imbalance.parameters["run_dirs"] == {name: str(tmp_path / "out" / "runs" / name) for name in group}
    assert set(imbalance.depends) == {f"train/{name}" for name in group + ["resnet18_scratch", "resnet50_scratch"]}
    assert steps["data"].depends == []


def test_a_runs_settings_merge_in_the_declared_order(tmp_path):
    """The profile's train, then the run's own, then the profile's overrides (patterns, then names as listed)."""
    pipeline = load_pipeline()
    pipeline["runs"]["resnet50_imagenet"].update(lr=0.02, momentum=0.8)
    pipeline["profiles"]["demo"].update(
        train={"image_size": 40, "epochs": 4, "lr": 0.01, "momentum": 0.7, "weight_decay": 0.001},
        runs={"resnet50_*": {"epochs": 2, "lr": 0.03}, "resnet50_imagenet": {"fe_epochs": 1}})
    ctx = ReportContext("demo", tmp_path / "data", tmp_path / "out", tmp_path / "fig", "cpu")
    steps = {step.name: step for step in plan(pipeline, "demo", ctx)}
    assert steps["train/resnet50_imagenet"].parameters["settings"] == {
        "image_size": 40, "weight_decay": 0.001,  # the profile's, untouched
        "momentum": 0.8,  # the run's own over the profile's train
        "epochs": 2, "lr": 0.03,  # the override over both
        "fe_epochs": 1, "arch": "resnet50", "weights": "imagenet", "device": "cpu"}
    assert steps["train/resnet18_scratch"].parameters["settings"] == {
        "image_size": 40, "epochs": 4, "lr": 0.01, "momentum": 0.7, "weight_decay": 0.001, "arch": "resnet18",
        "device": "cpu"}


@pytest.mark.heavy
def test_missing_data_folder_is_a_one_line_error(tmp_path):
    result = run_report("--profile", "full", "--data", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nowhere" in result.stderr and "not found" in result.stderr
    result = run_report("--profile", "full", "--out", tmp_path / "out")
    assert result.returncode == 2 and "--data" in result.stderr


def test_relative_folders_reach_the_notebooks_as_absolute_paths(tmp_path, monkeypatch):
    """The notebooks run in another working directory: a relative --data or --out must not move."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    ctx = resolve_context(load_pipeline(), "cpu", "data", "out", "cpu")
    assert ctx.source_dir == tmp_path.resolve() / "data" and ctx.out == tmp_path.resolve() / "out"
    assert ctx.data_dir == ctx.out / "prepared" / "retina-256px"  # the cpu profile trains on a prepared copy
    assert ctx.figures.is_absolute()


def test_two_steps_that_would_write_the_same_files_are_refused(tmp_path):
    pipeline = load_pipeline()
    pipeline["notebooks"].append({**pipeline["notebooks"][-1], "step": "train_resnet18_scratch"})
    ctx = ReportContext("demo", tmp_path / "data", tmp_path / "out", tmp_path / "fig", "cpu")
    with pytest.raises(RetinoError, match=r"two steps would write the same files \(train_resnet18_scratch\.\*\)"):
        plan(pipeline, "demo", ctx)
    assert len({step.file_stem for step in plan(load_pipeline(), "demo", ctx)}) == len(plan(load_pipeline(), "demo", ctx))


def test_only_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(RetinoError, match="matches no step"):
        build_report("smoke", out=str(tmp_path / "out"), only="nonesuch")


# -- end to end --------------------------------------------------------------------------------------
def write_fake_imagenet_weights(torch_home: Path) -> None:
    """ImageNet-shaped state dicts (random, seeded) where torchvision's cache expects them."""
    from retino_utils.models.imagenet import imagenet_weights_file

    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        for arch in ("resnet18", "resnet50"):
            torch.manual_seed(0)
            path = imagenet_weights_file(arch)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(getattr(torchvision.models, arch)(num_classes=1000).state_dict(), path)
    finally:
        del os.environ["TORCH_HOME"]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    torch_home = root / "torch"
    write_fake_imagenet_weights(torch_home)
    env = {"TORCH_HOME": str(torch_home), "RETINO_CACHE": str(root / "cache")}
    clinic = generate_second_camera(root / "clinic", 12, size=64, seed=7, workers=1, progress=False)  # a user's set
    first = run_report("--profile", "smoke", "--out", root / "out", "--device", "cpu", "--external", clinic, env=env)
    second = run_report("--profile", "smoke", "--out", root / "out", "--device", "cpu", "--external", clinic, env=env)
    return root / "out", first, second


@pytest.mark.slow
def test_smoke_report_builds_everything(smoke_report):
    out, first, _ = smoke_report
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"report: {out / 'report' / 'index.html'}" in first.stdout
    pipeline = load_pipeline()
    for step in [e["step"] for e in pipeline["notebooks"] if not e.get("per_run")]:
        assert (out / "notebooks" / f"{step}.ipynb").is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == set(pipeline["runs"])
    for name, run in results["runs"].items():
        assert run["status"] == "done", name
        assert 0 <= run["metrics"]["accuracy"] <= 1
    # the pretrained runs really started from the (generated) ImageNet file, two phases
    history = results["runs"]["resnet18_imagenet"]["history"]
    assert history["phase"][0] == "fe" and history["phase"][-1] == "ft"
    figures = out / "figures"
    index = (out / "report" / "index.html").read_text()
    for name in EXPECTED_FIGURES + [f"train_{run}.png" for run in pipeline["runs"]]:
        data = (figures / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000, name
    for name in ("comparison_resnet18.png", "confusion_grid.png", "imbalance_recall.png"):
        assert base64.b64encode((figures / name).read_bytes()).decode() in index
    for step in ("data", "comparison", "confusion", "imbalance", "explanations", "ablation", "external",
                 "train_resnet50_imagenet"):
        page = out / "report" / f"{step}.html"
        assert page.is_file() and "data:image/png;base64" in page.read_text(), step
    external = (out / "report" / "external.html").read_text()
    for run in pipeline["runs"]:  # every run graded on the profile's second camera and on the set given
        assert external.count(f"<strong>{run}</strong> on synthetic second camera") == 2, run
        assert external.count(f"<strong>{run}</strong> on clinic") == 2, run
    assert "missing from this report" not in index
    for line in pipeline["profiles"]["smoke"]["differences"]:  # the profile says how it differs from the reports
        assert html.escape(line) in index
    assert html.escape("image_size: 32 instead of 512 (every run)") in index  # and its settings say the rest


@pytest.mark.slow
def test_pdf_export_holds_the_index_and_every_page(smoke_report):
    from pypdf import PdfReader

    from retino_utils.report.html import find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); report --pdf prints with it")
    out, _, _ = smoke_report
    result = run_report("--profile", "smoke", "--out", out, "--device", "cpu", "--pdf",
                        env={"RETINO_CACHE": str(out.parent / "cache"), "TORCH_HOME": str(out.parent / "torch")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pages = [p for p in (out / "report").glob("*.html") if p.name != "index.html"]
    reader = PdfReader(out / "report" / "report.pdf")
    assert len(reader.pages) > len(pages)  # the index and every notebook page, each one page or more
    first = reader.pages[0].extract_text()
    assert "Diabetic retinopathy grading with ResNets" in first and "kept" in first
    text = "".join(page.extract_text() for page in reader.pages)
    assert "Where the models look" in text and "Augmentation and normalisation" in text
    assert sum(len(page.images) for page in reader.pages) >= 10  # the figures travel with the pages


@pytest.mark.slow
def test_second_build_skips_every_step(smoke_report):
    out, _, second = smoke_report
    assert second.returncode == 0, second.stderr[-2000:]
    steps = [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert steps and all("unchanged, skipped" in line for line in steps if "[data]" not in line)


def test_the_index_table_shows_the_setting_a_run_left_at_its_default():
    """Blank cells read as "unknown": a run that leaves arch, loss or sampler out shows the value it trains with."""
    defaults = TrainConfig()
    results = {"runs": {
        "plain": {"groups": ["main"], "settings": {}, "status": "missing", "message": ""},
        "recipe": {"groups": ["imbalance"], "settings": {"recipe": "best-cpu", "arch": "resnet50"}, "status": "missing",
                   "message": ""}}}
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", _summary_table(results), re.S)]
    assert rows[0][:6] == ["plain", "main", defaults.arch, "none", defaults.loss, defaults.sampler]
    assert rows[1][:6] == ["recipe", "imbalance", "resnet50", "none", RECIPES["best-cpu"]["loss"],
                           RECIPES["best-cpu"]["sampler"]]
    assert "" not in rows[0][:6] + rows[1][:6]


@pytest.mark.slow
def test_missing_weights_are_listed_and_fail_only_a_strict_build(smoke_report, tmp_path):
    out, _, _ = smoke_report
    env = {"TORCH_HOME": str(tmp_path / "empty"), "RETINO_OFFLINE": "1", "RETINO_CACHE": str(tmp_path / "cache")}
    result = run_report("--profile", "smoke", "--out", tmp_path / "out", "--only", "train/*_imagenet", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "missing run resnet18_imagenet" in result.stdout and "resnet18-f37072fd.pth" in result.stdout
    assert "--strict makes this an error" in result.stdout
    index = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "missing from this report" in index
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in index
    strict = run_report("--profile", "smoke", "--out", tmp_path / "out", "--only", "train/*_imagenet", "--strict",
                        env=env)
    assert strict.returncode == 1 and "missing run resnet50_imagenet" in strict.stdout


@pytest.mark.slow
def test_a_failing_notebook_fails_the_build(tmp_path):
    """The runner's own failures are never excused: a notebook that raises fails the command."""
    broken = tmp_path / "broken.ipynb"
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('figures_dir = ""'),
                                           nbformat.v4.new_code_cell("raise ValueError('a bug in a notebook')")])
    book.cells[0].metadata["tags"] = ["parameters"]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, broken)
    pipeline = load_pipeline()
    pipeline["notebooks"] = [{"step": "broken", "notebook": str(broken), "parameters": {"figures_dir": "{figures}"}}]
    pipeline["runs"] = {}
    for profile in pipeline["profiles"].values():
        profile["runs"] = {}  # overrides of runs that are gone
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    result = run_report("--pipeline", tmp_path / "pipeline.yaml", "--profile", "smoke", "--out", tmp_path / "out",
                        env={"RETINO_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert "failed step broken: ValueError: a bug in a notebook" in result.stdout


@pytest.mark.slow
def test_papermill_cli_runs_the_training_notebook(smoke_report, tmp_path):
    out, _, _ = smoke_report
    papermill = Path(sys.executable).with_name("papermill")
    result = subprocess.run(
        [str(papermill), str(NOTEBOOKS_DIR / "02_training.ipynb"), str(tmp_path / "run.ipynb"),
         "-p", "data_dir", str(out / "data"), "-p", "run_dir", str(tmp_path / "run"), "-p", "figures_dir",
         str(tmp_path / "fig"), "-y", "settings: {arch: resnet50, epochs: 1, image_size: 32, device: cpu}",
         "--no-progress-bar"],
        capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["arch"] == "resnet50"
    # Its figures are named after the run folder it was given, not after the notebook's demo run.
    assert [path.name for path in (tmp_path / "fig").iterdir()] == ["train_run.png"]


@pytest.mark.slow
def test_a_profile_that_prepares_its_data_trains_on_the_prepared_copy(tmp_path):
    """A profile's `prepare` makes one copy of --data under the build folder, and the notebooks read that copy."""
    from retino_utils.data.preprocess import copy_settings
    from retino_utils.synthetic import generate_dataset

    photos = generate_dataset(tmp_path / "photos", 20, 10, size=64, progress=False)
    pipeline = load_pipeline()
    pipeline["profiles"]["smoke"]["prepare"] = {"preparation": "retina", "size": 48}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    out = tmp_path / "out"
    result = run_report("--pipeline", tmp_path / "pipeline.yaml", "--profile", "smoke", "--data", photos, "--out",
                        out, "--only", "data", env={"RETINO_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    copy = out / "prepared" / "retina-48px"
    assert copy_settings(copy).prepare == "retina" and copy_settings(copy).size == 48
    assert json.loads((out / "results.json").read_text())["data"] == str(copy)
    assert "prepared as retina at 48 px" in result.stdout
    index = (out / "report" / "index.html").read_text()  # names the data given, and the copy the runs read
    assert f"data <code>{photos.resolve()}</code>" in index and f"prepared copy <code>{copy}</code>" in index

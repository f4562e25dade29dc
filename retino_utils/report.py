"""Build the whole report: execute the notebooks with papermill, then render them to HTML.

``python -m retino_utils.report [--profile demo|full|smoke] [--data DIR] [--out DIR] [--only STEP]
[--force] [--device ...]``. The pipeline (notebooks, runs, settings per profile) is ``pipeline.yaml``
beside this file. A step whose notebook, parameters, upstream results and package code are unchanged
is skipped, so a second run is quick and an interrupted one resumes (training runs resume from their
last checkpoint). Executed notebooks go to ``OUT/notebooks``, the rendered pages to ``OUT/report``,
every run's metrics to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from . import GRADES
from .atomic import write_json
from .config import TrainConfig, load_config
from .errors import RetinoError, run_cli
from .paths import BUILD_DIR, FIGURES_DIR, NOTEBOOKS_DIR, PACKAGE_DIR
from .results import load_run

PIPELINE_FILE = PACKAGE_DIR / "pipeline.yaml"
PROFILES = ("demo", "full", "smoke")
KERNEL = "python3"
# Training-notebook parameters that are not training settings.
RUN_PATH_PARAMETERS = ("run_name", "data_dir", "run_dir", "figures_dir", "device")


@dataclass
class Step:
    name: str  # e.g. "data", "train/resnet18_scratch"
    notebook: Path
    parameters: dict
    run: str | None = None  # the training run this step produces
    depends: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    status: str  # "done", "skipped", "missing", "failed"
    message: str = ""
    seconds: float = 0.0


# -- the plan -----------------------------------------------------------------------------------------
def load_pipeline(path: Path = PIPELINE_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def run_settings(pipeline: dict, profile: str, run: str) -> dict:
    """Training settings of ``run`` under ``profile``: defaults < profile train < run < profile overrides."""
    spec = pipeline["profiles"][profile]
    settings = {**pipeline["train_defaults"], **(spec.get("train") or {})}
    settings.update({k: v for k, v in pipeline["runs"][run].items() if k != "group"})
    for pattern, overrides in (spec.get("runs") or {}).items():
        if fnmatch.fnmatchcase(run, pattern):
            settings.update(overrides)
    return settings


def runs_in_group(pipeline: dict, group: str) -> list[str]:
    return [name for name, spec in pipeline["runs"].items() if spec.get("group") == group]


def plan(pipeline: dict, profile: str, data_dir: Path, out: Path, figures: Path, device: str) -> list[Step]:
    run_dirs = {name: str(out / "runs" / name) for name in pipeline["runs"]}
    main, imbalance = runs_in_group(pipeline, "main"), runs_in_group(pipeline, "imbalance")
    train_steps = [f"train/{name}" for name in pipeline["runs"]]
    common = {"figures_dir": str(figures)}
    parameters = {
        "data": {"data_dir": str(data_dir), **common},
        "comparison": {"run_dirs": run_dirs, "main_runs": main, **common},
        "confusion": {"run_dirs": {n: run_dirs[n] for n in main}, **common},
        "imbalance": {"run_dirs": {n: run_dirs[n] for n in imbalance}, "baseline": pipeline["imbalance_baseline"],
                      "scratch_runs": {n: run_dirs[n] for n in main if "scratch" in n}, **common},
    }
    steps: list[Step] = []
    for entry in pipeline["notebooks"]:
        notebook = NOTEBOOKS_DIR / entry["notebook"]
        if entry.get("per_run"):
            for name in pipeline["runs"]:
                params = {"run_name": name, "data_dir": str(data_dir), "run_dir": run_dirs[name], "device": device,
                          **common, **run_settings(pipeline, profile, name)}
                steps.append(Step(f"{entry['step']}/{name}", notebook, params, run=name))
        else:
            depends = [] if entry["step"] == "data" else train_steps
            steps.append(Step(entry["step"], notebook, parameters[entry["step"]], depends=depends))
    return steps


def check_parameters(steps: Sequence[Step]) -> None:
    """Every notebook must declare exactly the parameters the pipeline gives it (papermill only warns)."""
    import papermill

    declared_by_notebook: dict[Path, set[str]] = {}
    for step in steps:
        if step.notebook not in declared_by_notebook:
            if not step.notebook.is_file():
                raise RetinoError(f"notebook {step.notebook} not found (step {step.name})")
            declared_by_notebook[step.notebook] = set(papermill.inspect_notebook(str(step.notebook)))
        declared = declared_by_notebook[step.notebook]
        unknown = sorted(set(step.parameters) - declared)
        missing = sorted(declared - set(step.parameters))
        if unknown:
            raise RetinoError(f"step {step.name}: unknown parameter(s) {', '.join(unknown)} for "
                              f"{step.notebook.name}, which declares {', '.join(sorted(declared))}")
        if missing:
            raise RetinoError(f"step {step.name}: parameter(s) {', '.join(missing)} of {step.notebook.name} "
                              f"not given by the pipeline ({PIPELINE_FILE.name})")


# -- skipping what has not changed --------------------------------------------------------------------
def package_digest() -> str:
    """The package's code: a change in it re-executes notebooks (finished training runs are reused)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def step_hash(step: Step, code: str, data_fingerprint: str, upstream: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for part in (step.notebook.read_bytes(), json.dumps(step.parameters, sort_keys=True).encode(), code.encode(),
                 data_fingerprint.encode(), json.dumps([upstream.get(d, "") for d in step.depends]).encode()):
        digest.update(part)
    return digest.hexdigest()[:20]


def data_fingerprint(data_dir: Path) -> str:
    from . import data

    parts = [data.read_split(data_dir, split).fingerprint() for split in ("train", "test")]
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:20]


def intended_config(params: dict) -> TrainConfig:
    """The TrainConfig the training notebook builds from its parameters (kept in step with it)."""
    settings = {k: v for k, v in params.items() if k not in RUN_PATH_PARAMETERS}
    recipe = settings.pop("recipe", None)
    return TrainConfig.with_recipe(recipe, data=params["data_dir"], out=params["run_dir"], **settings)


def discard_stale_run(step: Step) -> None:
    """A run folder trained with other settings is removed, so the notebook trains afresh."""
    run_dir = Path(step.parameters["run_dir"])
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    try:
        same = load_config(saved).semantic_dict() == intended_config(step.parameters).semantic_dict()
    except RetinoError:
        same = False
    if not same:
        print(f"      settings of {step.run} changed: discarding {run_dir}", flush=True)
        shutil.rmtree(run_dir)


# -- executing ---------------------------------------------------------------------------------------
class _EpochEcho:
    """papermill's stdout sink: echoes the engine's per-epoch and summary lines to the console."""

    PREFIXES = ("epoch ", "best epoch", "resuming", "resnet")

    def __init__(self):
        self.buffer = ""

    def write(self, text: str) -> None:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.startswith(self.PREFIXES):
                print(f"      {line}", flush=True)

    def flush(self) -> None:
        pass


def execute(step: Step, output: Path) -> Outcome:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(step.notebook), str(output), parameters=step.parameters, kernel_name=KERNEL,
                                   progress_bar=False, log_output=False, stdout_file=_EpochEcho(),
                                   cwd=str(NOTEBOOKS_DIR), extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except PapermillExecutionError as exc:
        seconds = time.perf_counter() - start
        if exc.ename == "WeightsUnavailableError":
            return Outcome("missing", exc.evalue, seconds)
        return Outcome("failed", f"{exc.ename}: {exc.evalue} (traceback in {output})", seconds)
    return Outcome("done", "", time.perf_counter() - start)


@dataclass
class ReportContext:
    profile: str
    data_dir: Path
    out: Path
    figures: Path
    device: str


def resolve_context(profile: str, data: str | None, out: str | None, device: str) -> ReportContext:
    pipeline = load_pipeline()
    if profile not in pipeline["profiles"]:
        raise RetinoError(f"unknown profile {profile!r}: choose one of {', '.join(pipeline['profiles'])}")
    out_dir = Path(out) if out else BUILD_DIR / profile
    spec = pipeline["profiles"][profile]
    if data:
        data_dir = Path(data)
        if not data_dir.is_dir():
            raise RetinoError(f"data folder {data_dir} not found: pass --data with a dataset folder "
                              f"(lab, kaggle or aptos layout)")
    elif spec.get("synthetic"):
        data_dir = out_dir / "data"
    else:
        raise RetinoError(f"profile {profile} needs your data: pass --data DIR (lab, kaggle or aptos layout)")
    # The demo's figures are the repository's figures/; other builds keep theirs beside the report.
    figures = FIGURES_DIR if profile == "demo" and not out else out_dir / "figures"
    return ReportContext(profile, data_dir, out_dir, figures, device)


def synthetic_data(spec: dict, folder: Path) -> Path:
    """A profile's synthetic dataset in ``folder``, generated on first use (instant afterwards)."""
    from .synthetic import generate_dataset

    return generate_dataset(folder, spec["train"], spec["test"], size=spec["size"], seed=spec["seed"],
                            lesion_scale=spec.get("lesion_scale", 1.0), progress=False)


def prepare_data(ctx: ReportContext, pipeline: dict) -> None:
    spec = pipeline["profiles"][ctx.profile].get("synthetic")
    if spec and ctx.data_dir == ctx.out / "data":
        print(f"[data] synthetic fundus photos in {ctx.data_dir}", flush=True)
        synthetic_data(spec, ctx.data_dir)


def build_report(profile: str = "demo", data: str | None = None, out: str | None = None, only: str | None = None,
                 force: bool = False, device: str = "auto") -> int:
    """Execute and render the report; returns the exit status (non-zero when runs are missing or failed)."""
    started = time.perf_counter()
    pipeline = load_pipeline()
    ctx = resolve_context(profile, data, out, device)
    steps = plan(pipeline, profile, ctx.data_dir, ctx.out, ctx.figures, device)
    check_parameters(steps)
    selected = [s for s in steps if only is None or fnmatch.fnmatchcase(s.name, only) or s.name.split("/")[0] == only]
    if not selected:
        raise RetinoError(f"--only {only!r} matches no step: steps are {', '.join(s.name for s in steps)}")
    prepare_data(ctx, pipeline)
    fingerprint = data_fingerprint(ctx.data_dir)
    code = package_digest()
    for folder in ("notebooks", "steps"):
        (ctx.out / folder).mkdir(parents=True, exist_ok=True)
    ctx.figures.mkdir(parents=True, exist_ok=True)
    os.environ["RETINO_PROGRESS"] = "0"  # kernels inherit it: no progress bars in executed notebooks

    hashes: dict[str, str] = {}
    outcomes: dict[str, Outcome] = {}
    for number, step in enumerate(steps, 1):
        record_path = ctx.out / "steps" / f"{step.name.replace('/', '__')}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        hashes[step.name] = step_hash(step, code, fingerprint, hashes)
        if step not in selected:
            outcomes[step.name] = Outcome(record.get("status", "not run"), record.get("message", ""))
            continue
        prefix = f"[{number}/{len(steps)}] {step.name}"
        if not force and record.get("hash") == hashes[step.name] and record.get("status") == "done":
            outcomes[step.name] = Outcome("skipped")
            print(f"{prefix}: unchanged, skipped", flush=True)
            continue
        print(f"{prefix} ...", flush=True)
        if step.run is not None:
            if force:
                shutil.rmtree(step.parameters["run_dir"], ignore_errors=True)
            else:
                discard_stale_run(step)
        outcome = execute(step, ctx.out / "notebooks" / f"{step.name.replace('/', '_')}.ipynb")
        outcomes[step.name] = outcome
        write_json(record_path, {"hash": hashes[step.name], "status": outcome.status, "message": outcome.message,
                                 "seconds": round(outcome.seconds, 1)})
        tail = f": {outcome.message}" if outcome.message else ""
        print(f"{prefix}: {outcome.status} in {outcome.seconds:.0f}s{tail}", flush=True)

    results = collect_results(ctx, pipeline, steps, outcomes)
    write_json(ctx.out / "results.json", results)
    from .render import render_report

    index = render_report(ctx, steps, results)
    problems = [(name, r) for name, r in results["runs"].items() if r["status"] != "done"]
    failed = [name for name, o in outcomes.items() if o.status == "failed"]
    print(f"report: {index} ({time.perf_counter() - started:.0f}s)", flush=True)
    for name, run in problems:
        print(f"missing run {name}: {run['message'] or run['status']}", flush=True)
    for name in failed:
        print(f"failed step {name}: {outcomes[name].message}", flush=True)
    return 1 if problems or failed else 0


def collect_results(ctx: ReportContext, pipeline: dict, steps: Sequence[Step], outcomes: dict[str, Outcome]) -> dict:
    """Every run's status and metrics, for results.json and the report's index page."""
    runs = {}
    for step in steps:
        if step.run is None:
            continue
        outcome = outcomes[step.name]
        run = load_run(step.parameters["run_dir"], step.run)
        status = "done" if run is not None else (outcome.status if outcome.status != "skipped" else "missing")
        entry = {"status": status, "message": outcome.message if run is None else "",
                 "group": pipeline["runs"][step.run].get("group"), "run_dir": step.parameters["run_dir"],
                 "settings": {k: v for k, v in step.parameters.items() if k not in RUN_PATH_PARAMETERS}}
        if run is not None:
            entry["metrics"] = {k: run.metrics[k] for k in ("accuracy", "qwk", "macro_f1", "recall", "precision",
                                                           "referable_sensitivity", "referable_specificity",
                                                           "referable_auc", "best_epoch", "n")}
            entry["history"] = run.history.to_dict(orient="list")
        runs[step.run] = entry
    return {"profile": ctx.profile, "data": str(ctx.data_dir), "figures": str(ctx.figures),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "grades": list(GRADES), "runs": runs,
            "steps": {name: {"status": o.status, "message": o.message} for name, o in outcomes.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retino_utils.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo", choices=PROFILES,
                        help="demo: synthetic data, ~10 min on a CPU; full: your data with the reports' settings; "
                             "smoke: tiny, for tests")
    parser.add_argument("--data", help="dataset folder (required for --profile full)")
    parser.add_argument("--out", help="build folder (default build/PROFILE)")
    parser.add_argument("--only", help="run only the matching step(s), e.g. data, train, 'train/resnet50_*', imbalance")
    parser.add_argument("--force", action="store_true", help="re-execute steps (and retrain runs) even if unchanged")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps for the training runs")
    args = parser.parse_args(argv)
    return build_report(args.profile, args.data, args.out, args.only, args.force, args.device)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])

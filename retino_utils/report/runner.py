"""Build the whole report: execute the notebooks with papermill, then render them to HTML.

``python -m retino_utils.report [--profile demo|cpu|full|smoke] [--data DIR] [--external DIR ...] [--out DIR]
[--only STEP] [--force] [--device ...]``. The pipeline (notebooks, runs, settings per profile) is ``pipeline.yaml``
beside this file. A step whose notebook, parameters, upstream results and package code are unchanged
is skipped, so a second run is quick and an interrupted one resumes (training runs resume from their
last checkpoint). Executed notebooks go to ``OUT/notebooks``, the rendered pages to ``OUT/report``,
every run's metrics to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from retino_utils import GRADES
from retino_utils.atomic import write_json
from retino_utils.data import dataset_fingerprint
from retino_utils.data.layouts import LAYOUTS_READ
from retino_utils.data.preprocess import preprocess_dataset
from retino_utils.errors import RetinoError, WeightsUnavailableError
from retino_utils.evaluation.results import load_run
from retino_utils.paths import BUILD_DIR, FIGURES_DIR, NOTEBOOKS_DIR, PACKAGE_DIR
from retino_utils.predict.external import external_sets
from retino_utils.report.html import export_pdf, find_chromium, render_report
from retino_utils.report.pipeline import PIPELINE_FILE, load_pipeline, run_settings, runs_in_group, setting_differences
from retino_utils.synthetic import profile_dataset
from retino_utils.synthetic.second_camera import SECOND_CAMERA, profile_second_camera
from retino_utils.train.config import TrainConfig
from retino_utils.train.events import read_events
from retino_utils.train.run_safety import RunLock, data_fingerprint, holds_run, in_use_message, run_changes, supersede

KERNEL = "python3"
ECHO_SECONDS = 0.5  # how often the events of a training notebook are echoed


@dataclass
class Step:
    name: str  # e.g. "data", "train/resnet18_scratch"
    notebook: Path
    parameters: dict
    run: str | None = None  # the training run this step produces
    settings: dict | None = None  # that run's settings
    depends: list[str] = field(default_factory=list)
    reads_external: bool = False  # grades the external sets: their photos are part of what it depends on

    @property
    def file_stem(self) -> str:
        """The name of every file the step leaves (its record, executed notebook and page): ``train_resnet18_scratch``."""
        return self.name.replace("/", "_")


@dataclass
class Outcome:
    status: str  # "done", "skipped", "missing", "failed"
    message: str = ""
    seconds: float = 0.0


# -- the plan -----------------------------------------------------------------------------------------
def fill(template, values: dict):
    """``"{name}"`` becomes ``values[name]`` (any type); other strings have their ``{name}`` parts filled in."""
    if isinstance(template, dict):
        return {key: fill(value, values) for key, value in template.items()}
    if isinstance(template, str):
        if template.startswith("{") and template.endswith("}") and template[1:-1] in values:
            return values[template[1:-1]]
        return template.format(**{k: v for k, v in values.items() if isinstance(v, str)})
    return template


def plan(pipeline: dict, profile: str, ctx: "ReportContext") -> list[Step]:
    """Every notebook execution the pipeline declares, with its parameters and the steps it waits for."""
    folders = {"data": str(ctx.data_dir), "figures": str(ctx.figures), "out": str(ctx.out),
               "external": {name: str(folder) for name, folder in ctx.external.items()}}
    run_dirs = {name: str(ctx.out / "runs" / name) for name in pipeline["runs"]}
    train_step: dict[str, str] = {}
    steps: list[Step] = []
    for entry in pipeline["notebooks"]:
        notebook = NOTEBOOKS_DIR / entry["notebook"]
        template = entry.get("parameters") or {}
        if entry.get("per_run"):
            for name in pipeline["runs"]:
                settings = run_settings(pipeline, profile, name)
                if ctx.device != "auto":
                    settings["device"] = ctx.device
                values = {**folders, "run": name, "run_dir": run_dirs[name], "settings": settings}
                step = Step(f"{entry['step']}/{name}", notebook, fill(template, values), name, settings)
                train_step[name] = step.name
                steps.append(step)
            continue
        parameters, depends = fill(template, folders), list(entry.get("depends") or [])
        for parameter, group in (entry.get("run_groups") or {}).items():
            members = runs_in_group(pipeline, group)
            parameters[parameter] = {name: run_dirs[name] for name in members}
            depends += [train_step[name] for name in members if name in train_step]
        steps.append(Step(entry["step"], notebook, parameters, depends=list(dict.fromkeys(depends)),
                          reads_external="{external}" in (template or {}).values()))
    clashing = [stem for stem, count in Counter(step.file_stem for step in steps).items() if count > 1]
    if clashing:
        raise RetinoError(f"two steps would write the same files ({clashing[0]}.*): rename a run or a notebook step "
                          f"in the pipeline file, nothing was run")
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


def run_config(step: Step, data_dir: Path) -> TrainConfig:
    return TrainConfig.from_settings(step.settings, data=str(data_dir), out=step.parameters["run_dir"])


def set_aside_changed_run(step: Step, data_dir: Path, force: bool) -> None:
    """A run folder whose settings or data changed (or any, with ``force``) is moved aside, never deleted,
    so the notebook trains afresh and the old run can be had back."""
    run_dir = Path(step.parameters["run_dir"])
    if not holds_run(run_dir):
        return
    if force:
        supersede(run_dir, "--force retrains it")
        return
    wanted = run_config(step, data_dir)
    changes = run_changes(run_dir, wanted, data_fingerprint(wanted))
    if changes:
        supersede(run_dir, f"changed since it was trained ({'; '.join(changes)})")


def check_runs_free(steps: Sequence[Step]) -> None:
    """Refuse before anything runs when a process is training in one of the runs to build."""
    for step in steps:
        if step.run is not None and (owner := RunLock(step.parameters["run_dir"]).holder()) is not None:
            raise RetinoError(in_use_message(Path(step.parameters["run_dir"]), owner))


def earlier_outcome(record: dict) -> Outcome:
    """A step left out by --only keeps its last status; a failure then is said, but fails only its own build."""
    if record.get("status") == "failed":
        return Outcome("not run", f"left out of this build; its last build failed ({record.get('message', '')})")
    return Outcome(record.get("status", "not run"), record.get("message", ""))


# -- executing ---------------------------------------------------------------------------------------
class _EventEcho:
    """Follows a run's events file while its notebook trains and prints one line per event."""

    def __init__(self, run_dir: str | None):
        self.run_dir, self.offset = run_dir, 0
        self.error: dict | None = None
        if run_dir:
            _, self.offset = read_events(run_dir)  # only what this execution adds

    def poll(self) -> None:
        if not self.run_dir:
            return
        events, self.offset = read_events(self.run_dir, self.offset)
        for event in events:
            kind = event.pop("event")
            if kind == "epoch":
                print(f"      epoch {event['epoch']} [{event['phase']}]: train acc {event['train_acc']:.1%}; "
                      f"validation acc {event['val_acc']:.1%}, QWK {event['val_qwk']:.3f}; test acc "
                      f"{event['test_acc']:.1%}, QWK {event['test_qwk']:.3f} ({event['seconds']:.0f}s)", flush=True)
            elif kind == "start":
                print(f"      {event['description']}", flush=True)
            elif kind == "error":
                self.error = event


@contextlib.contextmanager
def _quiet_kernels():
    """Kernels started inside inherit TQDM_DISABLE=1 (no progress bars in executed notebooks)."""
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = previous


def execute(step: Step, output: Path) -> Outcome:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    echo = _EventEcho(step.parameters.get("run_dir") if step.run else None)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            papermill.execute_notebook(str(step.notebook), str(output), parameters=step.parameters,
                                       kernel_name=KERNEL, progress_bar=False, log_output=False,
                                       cwd=str(NOTEBOOKS_DIR), extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        except BaseException as exc:  # handed to the main thread below
            failure.append(exc)

    start = time.perf_counter()
    with _quiet_kernels():
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(ECHO_SECONDS)
            echo.poll()
    seconds = time.perf_counter() - start
    if not failure:
        return Outcome("done", "", seconds)
    exc = failure[0]
    if not isinstance(exc, PapermillExecutionError):
        raise exc
    if echo.error and echo.error.get("code") == WeightsUnavailableError.code:
        return Outcome("missing", echo.error["message"], seconds)
    return Outcome("failed", f"{exc.ename}: {exc.evalue} (traceback in {output})", seconds)


@dataclass
class ReportContext:
    profile: str
    data_dir: Path  # what the notebooks read: the given data, or the profile's prepared copy of it
    out: Path
    figures: Path
    device: str
    source_dir: Path | None = None  # the data as given, where the profile prepares a copy of it
    external: dict[str, Path] = field(default_factory=dict)  # external sets by name: graded, never trained on

    @property
    def given_data(self) -> Path:
        return self.source_dir or self.data_dir


def resolve_context(pipeline: dict, profile: str, data: str | None, out: str | None, device: str,
                    external: Sequence[str] = ()) -> ReportContext:
    if profile not in pipeline["profiles"]:
        raise RetinoError(f"unknown profile {profile!r}: choose one of {', '.join(pipeline['profiles'])}")
    out_dir = Path(out).resolve() if out else BUILD_DIR / profile
    spec = pipeline["profiles"][profile]
    if data:
        data_dir = Path(data).resolve()  # the notebooks run in another working directory
        if not data_dir.is_dir():
            raise RetinoError(f"data folder {data_dir} not found: pass --data with a dataset folder {LAYOUTS_READ}")
    elif spec.get("synthetic"):
        data_dir = out_dir / "data"
    else:
        raise RetinoError(f"profile {profile} needs your data: pass --data DIR (a dataset {LAYOUTS_READ})")
    # The demo's figures are the repository's figures/; other builds keep theirs beside the report.
    figures = FIGURES_DIR if profile == "demo" and not out else out_dir / "figures"
    sets = {SECOND_CAMERA: out_dir / "external" / "second-camera"} if spec.get("second_camera") else {}
    sets.update(external_sets(external))
    if prepared := spec.get("prepare"):  # the runs train on a copy prepared to one look, made once under OUT
        copy = out_dir / "prepared" / f"{prepared['preparation']}-{prepared['size']}px"
        return ReportContext(profile, copy, out_dir, figures, device, source_dir=data_dir, external=sets)
    return ReportContext(profile, data_dir, out_dir, figures, device, external=sets)


def prepare_data(ctx: ReportContext, pipeline: dict) -> None:
    profile = pipeline["profiles"][ctx.profile]
    spec = profile.get("synthetic")
    if spec and ctx.given_data == ctx.out / "data":
        print(f"[data] synthetic fundus photos in {ctx.given_data}", flush=True)
        profile_dataset(spec, ctx.given_data)
    if camera := profile.get("second_camera"):
        print(f"[data] the synthetic second camera's photos (external) in {ctx.external[SECOND_CAMERA]}", flush=True)
        profile_second_camera(camera, ctx.external[SECOND_CAMERA])
    if ctx.source_dir is not None:
        prepared = profile["prepare"]
        print(f"[data] {ctx.source_dir} prepared as {prepared['preparation']} at {prepared['size']} px in "
              f"{ctx.data_dir} (once; an interrupted copy resumes)", flush=True)
        summary = preprocess_dataset(ctx.source_dir, ctx.data_dir, prepared["size"], prepared["preparation"])
        if summary.failed:
            where, reason = summary.failed[0]
            raise RetinoError(f"{len(summary.failed)} photos of {ctx.source_dir} could not be read ({where}: {reason}"
                              f"): python -m retino_utils.data validate {ctx.source_dir} lists them")


def build_report(profile: str = "demo", data: str | None = None, out: str | None = None, only: str | None = None,
                 force: bool = False, device: str = "auto", pipeline_file: str | Path = PIPELINE_FILE,
                 strict: bool = False, pdf: bool = False, external: Sequence[str] = ()) -> int:
    """Execute and render the report; returns the exit status.

    A run missing only because its ImageNet weights cannot be had offline is listed (here and at the
    top of the report) but fails the build only with ``strict``; a failed step or run always does.
    """
    started = time.perf_counter()
    pipeline = load_pipeline(pipeline_file)
    ctx = resolve_context(pipeline, profile, data, out, device, external)
    steps = plan(pipeline, profile, ctx)
    check_parameters(steps)
    selected = [s for s in steps if only is None or fnmatch.fnmatchcase(s.name, only) or s.name.split("/")[0] == only]
    if not selected:
        raise RetinoError(f"--only {only!r} matches no step: steps are {', '.join(s.name for s in steps)}")
    check_runs_free(selected)
    if pdf and find_chromium() is None:
        raise RetinoError("report --pdf prints with Chromium, which is not installed: apt-get install chromium "
                          "(Debian/Ubuntu), then run the same command (finished steps are skipped), or drop --pdf")
    prepare_data(ctx, pipeline)
    fingerprint = dataset_fingerprint(ctx.data_dir)  # as the notebooks see it: a change re-executes every step
    external_fingerprint = ",".join(dataset_fingerprint(folder) for folder in ctx.external.values())
    code = package_digest()
    for folder in ("notebooks", "steps"):
        (ctx.out / folder).mkdir(parents=True, exist_ok=True)
    ctx.figures.mkdir(parents=True, exist_ok=True)

    hashes: dict[str, str] = {}
    outcomes: dict[str, Outcome] = {}
    for number, step in enumerate(steps, 1):
        record_path = ctx.out / "steps" / f"{step.file_stem}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        data_state = fingerprint + (external_fingerprint if step.reads_external else "")
        hashes[step.name] = step_hash(step, code, data_state, hashes)
        if step not in selected:
            outcomes[step.name] = earlier_outcome(record)
            continue
        prefix = f"[{number}/{len(steps)}] {step.name}"
        if not force and record.get("hash") == hashes[step.name] and record.get("status") == "done":
            outcomes[step.name] = Outcome("skipped")
            print(f"{prefix}: unchanged, skipped", flush=True)
            continue
        print(f"{prefix} ...", flush=True)
        if step.run is not None:
            set_aside_changed_run(step, ctx.data_dir, force)
        outcome = execute(step, ctx.out / "notebooks" / f"{step.file_stem}.ipynb")
        outcomes[step.name] = outcome
        write_json(record_path, {"hash": hashes[step.name], "status": outcome.status, "message": outcome.message,
                                 "seconds": round(outcome.seconds, 1)})
        tail = f": {outcome.message}" if outcome.message else ""
        print(f"{prefix}: {outcome.status} in {outcome.seconds:.0f}s{tail}", flush=True)

    results = collect_results(ctx, pipeline, steps, outcomes)
    write_json(ctx.out / "results.json", results)
    differences = [*(pipeline["profiles"][ctx.profile].get("differences") or []),
                   *setting_differences(pipeline, ctx.profile)]
    index = render_report(ctx, steps, results, pipeline.get("index_figures") or [], differences)
    if pdf:
        pages = [index, *(page for step in steps if (page := index.parent / f"{step.file_stem}.html").is_file())]
        print(f"report.pdf: {export_pdf(pages, index.parent / 'report.pdf')} ({len(pages)} pages of HTML)", flush=True)
    runs = results["runs"]
    missing = [name for name, run in runs.items() if run["status"] == "missing"]  # no ImageNet weights here
    not_run = [name for name, run in runs.items() if run["status"] == "not run"]  # left out by --only
    failed = [name for name, outcome in outcomes.items() if outcome.status == "failed"]
    print(f"report: {index} ({time.perf_counter() - started:.0f}s)", flush=True)
    for name in missing:
        print(f"missing run {name}: {runs[name]['message']}", flush=True)
    if not_run:
        print(f"not run in this build: {', '.join(not_run)}", flush=True)
    for name in failed:
        print(f"failed step {name}: {outcomes[name].message}", flush=True)
    if failed:
        return 1
    if missing or not_run:
        if strict:
            return 1
        if missing:
            print(f"{len(missing)} run(s) left out for lack of ImageNet weights (see above); the rest of the report "
                  f"is complete. --strict makes this an error.", flush=True)
    return 0


def collect_results(ctx: ReportContext, pipeline: dict, steps: Sequence[Step], outcomes: dict[str, Outcome]) -> dict:
    """Every run's status and metrics, for results.json and the report's index page."""
    runs = {}
    for step in steps:
        if step.run is None:
            continue
        outcome = outcomes[step.name]
        run = load_run(step.parameters["run_dir"], step.run)
        status = "done" if run is not None else (outcome.status if outcome.status != "skipped" else "not run")
        entry = {"status": status, "message": outcome.message if run is None else "",
                 "groups": pipeline["runs"][step.run].get("groups", []), "run_dir": step.parameters["run_dir"],
                 "settings": step.settings}
        if run is not None:
            entry["metrics"] = run.metrics.to_dict()
            entry["history"] = run.history.to_dict(orient="list")
        runs[step.run] = entry
    return {"profile": ctx.profile, "data": str(ctx.data_dir), "figures": str(ctx.figures),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "grades": list(GRADES), "runs": runs,
            "steps": {name: {"status": o.status, "message": o.message} for name, o in outcomes.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retino_utils.report", description=__doc__.split("\n\n")[0])
    profiles = load_pipeline()["profiles"]
    parser.add_argument("--profile", default="demo", help=" | ".join(
        f"{name}: {spec.get('description', '')}" for name, spec in profiles.items()) + " (from pipeline.yaml)")
    parser.add_argument("--data", help="dataset folder (required for --profile cpu and full)")
    parser.add_argument("--external", action="append", default=[], metavar="DIR",
                        help="a labelled dataset of another camera or population to validate every run on "
                             "(never trained on); repeat for several")
    parser.add_argument("--out", help="build folder (default build/PROFILE)")
    parser.add_argument("--only", help="run only the matching step(s), e.g. data, train, 'train/resnet50_*', imbalance")
    parser.add_argument("--force", action="store_true",
                        help="re-execute steps and retrain runs even if unchanged (old runs are moved to "
                             "OUT/runs/.superseded, not deleted)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps for the training runs")
    parser.add_argument("--pipeline", default=str(PIPELINE_FILE), help="pipeline file (default: the package's)")
    parser.add_argument("--strict", action="store_true",
                        help="fail when any run is missing, also for lack of ImageNet weights offline")
    parser.add_argument("--pdf", action="store_true", help="also write OUT/report/report.pdf (needs Chromium)")
    args = parser.parse_args(argv)
    return build_report(args.profile, args.data, args.out, args.only, args.force, args.device, args.pipeline,
                        args.strict, args.pdf, args.external)

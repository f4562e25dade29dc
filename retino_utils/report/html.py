"""The rendered report: one HTML page per executed notebook (code hidden) and an index page.

Figures are embedded as data URIs, so the folder reads offline and can be mailed as it is.
"""

from __future__ import annotations

import base64
import html
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import pandas as pd

from retino_utils.atomic import atomic_path, write_text
from retino_utils.errors import RetinoError
from retino_utils.evaluation.record import RunRecord
from retino_utils.evaluation.results import figure_columns, kept_epoch_label
from retino_utils.models.imagenet import imagenet_weights_file
from retino_utils.train.config import TrainConfig

WHOLE_TABLES = (" table { display: table !important; overflow: visible !important; width: auto !important; "
                "max-width: 100% !important; font-size: 6.5pt !important; } th, td { padding: 1px 3px !important; "
                "white-space: normal !important; word-break: break-word; }")
STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1320px; color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
.warning { background: #fff4e5; border-left: 5px solid #f0a020; padding: 0.8rem 1rem; margin: 1rem 0; }
.warning code { word-break: break-all; }
.note { background: #eef5ff; border-left: 5px solid #3b7dd8; padding: 0.8rem 1rem; margin: 1rem 0; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.8rem; display: block; overflow-x: auto; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
nav ul { columns: 2; }
@page { size: A4 landscape; margin: 10mm; }
@media print { body { max-width: none; margin: 0; } table { font-size: 0.72rem; } th, td { padding: 0.2rem 0.4rem; } }
""" + "@media print {" + WHOLE_TABLES + "}"
# Added to each notebook page. On paper a wide table is printed whole, in smaller type: the screen's
# horizontal scrolling would cut it off and print a scrollbar under it.
PRINT_STYLE = ("<style>@page { size: A4 landscape; margin: 10mm; } @media print {" + WHOLE_TABLES
               + " .jp-OutputArea-output, .jp-RenderedHTMLCommon, .dataframe { overflow: visible !important; } }"
               "</style>")


def notebook_page(executed: Path, target: Path) -> None:
    """An executed notebook as HTML without its code (outputs and text only)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    write_text(target, body.replace("</head>", f"{PRINT_STYLE}</head>", 1))


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _differences_box(differences: Sequence[str]) -> str:
    if not differences:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in differences)
    return (f'<div class="note"><p><b>Not the reports\' settings.</b> This profile differs from the reference '
            f"reports' GPU settings as follows; read its figures with that in mind.</p><ul>{items}</ul></div>")


def _prepared_note(ctx) -> str:
    """Where the profile trains on a prepared copy of the data given, which copy (the data line names the given)."""
    if ctx.source_dir is None:
        return ""
    return f"(the runs read its prepared copy <code>{html.escape(str(ctx.data_dir))}</code>) "


def _run_config(run: dict) -> TrainConfig:
    """What the run trains with: a setting its entry leaves out is the recipe's or the default, never a blank."""
    return TrainConfig.from_settings(run["settings"])


def _missing_banner(results: dict) -> str:
    missing = {n: r for n, r in results["runs"].items() if r["status"] != "done"}
    if not missing:
        return ""
    items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(r['message'] or r['status'])}</li>"
                    for n, r in missing.items())
    configs = [_run_config(r) for r in missing.values()]
    weights = sorted({str(imagenet_weights_file(c.arch)) for c in configs if c.weights == "imagenet"})
    how = ""
    if weights:
        files = "".join(f"<li><code>{html.escape(w)}</code></li>" for w in weights)
        how = ("<p>To include the pretrained runs, put the ImageNet weights files here (torchvision's cache; "
               "set <code>TORCH_HOME</code> to use another folder) and run the same command again; "
               f"only the missing steps run:</p><ul>{files}</ul>")
    return (f'<div class="warning"><p><b>{len(missing)} run(s) missing from this report.</b> '
            f"Figures and tables below leave them out.</p><ul>{items}</ul>{how}</div>")


def _summary_table(results: dict) -> str:
    rows = []
    for name, run in results["runs"].items():
        metrics = run.get("metrics")
        settings = _run_config(run)
        row = {"run": name, "groups": ", ".join(run["groups"]), "arch": settings.arch,
               "weights": settings.weights or "none", "loss": settings.loss, "sampler": settings.sampler,
               "status": run["status"]}
        if metrics:
            record = RunRecord.from_dict(metrics, f"results.json (run {name})")
            row.update({"kept epoch": kept_epoch_label(record.best_epoch, record.select_on),
                        "test photos": str(record.n), **figure_columns(record)})
        rows.append(row)
    return pd.DataFrame(rows).fillna("").to_html(index=False, border=0, escape=True)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-pdf-header-footer")


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def export_pdf(pages: Sequence[Path], out: Path) -> Path:
    """``out``: the pages (the index first) printed by headless Chromium and joined into one PDF."""
    from pypdf import PdfWriter

    chromium = find_chromium()
    if chromium is None:
        raise RetinoError("report --pdf prints with Chromium, which is not installed: apt-get install chromium "
                          "(Debian/Ubuntu), then run the same command again")
    writer = PdfWriter()
    with tempfile.TemporaryDirectory() as scratch:
        for number, page in enumerate(pages):
            printed = Path(scratch) / f"{number:03d}.pdf"
            result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={scratch}/profile",
                                     f"--print-to-pdf={printed}", page.resolve().as_uri()],
                                    capture_output=True, text=True, timeout=300)
            if not printed.is_file():
                tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise RetinoError(f"Chromium could not print {page} ({tail})")
            writer.append(str(printed))
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as stream:
                writer.write(stream)
    return out


def render_report(ctx, steps: Sequence, results: dict, index_figures: Sequence[Sequence[str]],
                  differences: Sequence[str] = ()) -> Path:
    """Write ``OUT/report/index.html`` and one page per executed notebook; returns the index path.

    ``index_figures``: ``(file name, caption)`` pairs shown on the index page where they exist;
    ``differences``: how the profile's settings differ from the reports' (shown first).
    """
    report_dir = ctx.out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    links = []
    for step in steps:
        executed = ctx.out / "notebooks" / f"{step.file_stem}.ipynb"
        if not executed.exists() or results["steps"].get(step.name, {}).get("status") == "missing":
            continue  # a run missing for lack of weights is explained on the index page, not as a traceback
        page = report_dir / f"{step.file_stem}.html"
        if not page.exists() or page.stat().st_mtime < executed.stat().st_mtime:
            notebook_page(executed, page)
        links.append(f'<li><a href="{page.name}">{html.escape(step.name)}</a></li>')
    figures = []
    for name, caption in index_figures:
        path = Path(ctx.figures) / name
        if path.exists():
            figures.append(f"<figure>{_image_tag(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>retino report ({html.escape(ctx.profile)})</title>
<style>{STYLE}</style></head><body>
<h1>Diabetic retinopathy grading with ResNets</h1>
<p class="meta">profile <b>{html.escape(ctx.profile)}</b> &middot; data <code>{html.escape(str(ctx.given_data))}</code>
{_prepared_note(ctx)}&middot; generated {html.escape(results['generated'])}</p>
{_differences_box(differences)}
{_missing_banner(results)}
<h2>Runs</h2>
<p>Test-split figures of the checkpoint each run keeps, with 95% bootstrap intervals (patients resampled).
Each run keeps the epoch that scores best on a validation split carved from its training photos (the main
runs by accuracy, as the reports did, the imbalance study by QWK); the test split is scored once. A checkpoint
chosen on the test split, as the reports chose theirs, is labelled TEST. QWK is Cohen's kappa with quadratic
weights (0 = chance agreement, 1 = perfect); macro-F1 averages the five grades' F1 scores.</p>
{_summary_table(results)}
<h2>Figures</h2>
{''.join(figures)}
<h2>Notebooks</h2>
<nav><ul>{''.join(links)}</ul></nav>
</body></html>
"""
    index = report_dir / "index.html"
    write_text(index, page)
    return index

"""The notebooks as a user runs them: opened from JupyterLab's file browser in a real browser (Debian's
Chromium driven by Playwright), every cell run, no cell in error, the figures on the page.

The notebooks carry no papermill parameters here: their empty defaults resolve to the demo build,
moved to a temporary folder (``RETINO_DEMO_DIR``, ``RETINO_FIGURES_DIR``), where the first one
generates the synthetic photos and the training notebook trains its default run.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from retino_utils.paths import NOTEBOOKS_DIR
from retino_utils.report.html import CHROMIUM_FLAGS, find_chromium

# Figures each notebook shows when run on its own defaults, in file order (the later ones read the
# run the training notebook trains; runs not trained here are reported missing, not drawn).
MIN_FIGURES = {"01_data_statistics.ipynb": 2, "02_training.ipynb": 2, "03_comparison.ipynb": 2,
               "04_confusion_matrices.ipynb": 2, "05_class_imbalance.ipynb": 1, "06_explanations.ipynb": 1,
               "07_ablation.ipynb": 1, "08_external_validation.ipynb": 3}
CELL_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"jupyter lab exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer at {url} within {timeout:.0f} s: {log.read_text()[-2000:]}")


def shut_down_kernels(base: str, token: str) -> None:
    with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=10) as answer:
        kernels = json.load(answer)
    for kernel in kernels:
        request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


def prompts_done(page) -> bool:
    """Every code cell ran: each input prompt shows an execution count (not empty, not ``*``)."""
    prompts = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt").all_inner_texts()
    return bool(prompts) and all(p.strip().strip("[]:").strip().isdigit() for p in prompts)


@pytest.mark.slow
def test_every_notebook_runs_in_jupyterlab(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the JupyterLab browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (requirements.txt) is not installed")
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RETINO_DEMO_DIR": str(tmp_path / "demo"), "RETINO_FIGURES_DIR": str(tmp_path / "figures"),
           "RETINO_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    # A copy of the notebooks, so nothing the browser does can reach the repository's (outputs-free) files;
    # every cell rendered (no virtual scrolling), so every prompt, error and figure is on the page.
    notebooks = Path(shutil.copytree(NOTEBOOKS_DIR, tmp_path / "notebooks"))
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
                           "docmanager-extension/plugin": {"autosave": False},
                           "apputils-extension/notification": {"fetchNews": "false"}}.items():
        path = tmp_path / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    log = tmp_path / "jupyter.log"
    jupyter = Path(sys.executable).with_name("jupyter")
    with open(log, "w") as stream:
        server = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
             f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
             "--LabApp.news_url=", *(["--allow-root"] if os.geteuid() == 0 else [])],
            env=env, stdout=stream, stderr=subprocess.STDOUT)
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    try:
        wait_for_server(f"{base}/api/status?token={token}", server, log)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_FLAGS[1:]))
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{base}/lab?token={token}&reset")
            for notebook in sorted(notebooks.glob("*.ipynb")):
                entry = page.locator(".jp-DirListing-item", has_text=notebook.name)
                entry.wait_for(timeout=120_000)
                entry.dblclick()
                panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
                panel.locator(".jp-CodeCell").first.wait_for(timeout=120_000)
                select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
                if select.is_visible():  # a kernel prompt despite autoStartDefaultKernel: take the notebook's own
                    select.click()
                # The kernel's session is connected when the status bar reads "<kernel> | Idle".
                page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=120_000)
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                deadline = time.monotonic() + CELL_TIMEOUT_S
                while not prompts_done(page):
                    errors = panel.locator("[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
                    if any("Traceback" in text or "Error" in text for text in errors):
                        break  # Run All stops at the failing cell: report it below
                    assert time.monotonic() < deadline, f"{notebook.name}: cells still running after {CELL_TIMEOUT_S} s"
                    time.sleep(1)
                page.screenshot(path=str(screenshots / f"{notebook.stem}.png"))
                errors = panel.locator("[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
                failed = [text for text in errors if "Traceback" in text or "Error" in text]
                assert not failed, f"{notebook.name} shows an error: {failed[0][-1500:]}"
                assert prompts_done(page), f"{notebook.name}: not every cell ran"
                figures = panel.locator(".jp-RenderedImage img").count()
                assert figures >= MIN_FIGURES[notebook.name], f"{notebook.name}: {figures} figures shown"
                shut_down_kernels(base, token)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert sorted(p.stem for p in screenshots.glob("*.png")) == sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert all(not cell.get("outputs") for path in notebooks.glob("*.ipynb")
               for cell in json.loads(path.read_text())["cells"]), "the browser saved outputs into a notebook"
    assert (tmp_path / "figures" / "train_resnet18_scratch.png").is_file()

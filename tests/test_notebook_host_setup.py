"""scripts/notebook_host_setup.py: on a notebook host the installed torch stays, whatever requirements.txt pins."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from retino_utils.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "notebook_host_setup.py"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
# A host's pair, as Colab or Kaggle would have it: another release than the pins, from PyTorch's own index.
HOST = {"torch": "2.14.0+cu126", "torchvision": "0.29.0+cu126"}

spec = importlib.util.spec_from_file_location("notebook_host_setup", SCRIPT)
setup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup)


def pins(text):
    return [line for line in text.splitlines() if line.startswith(("torch==", "torchvision=="))]


def test_constraints_pin_exactly_the_installed_pair(tmp_path):
    requirements, constraints = setup.install_files(REQUIREMENTS, tmp_path, HOST)
    assert constraints.read_text().splitlines() == ["torch==2.14.0+cu126", "torchvision==0.29.0+cu126"]
    # The pair stays required but unpinned (the constraints decide); every other line is requirements.txt's.
    original = REQUIREMENTS.read_text()
    assert pins(original) and not pins(requirements.read_text())
    assert requirements.read_text().splitlines() == [
        line for line in original.splitlines() if line not in pins(original)] + ["torch", "torchvision"]


def test_torch_without_torchvision_gets_the_torchvision_of_that_torch(tmp_path):
    _, constraints = setup.install_files(REQUIREMENTS, tmp_path, {"torch": "2.14.0"})
    assert constraints.read_text() == "torch==2.14.0\n"


def test_without_torch_the_pinned_pair_is_installed(tmp_path):
    assert setup.install_files(REQUIREMENTS, tmp_path, {}) == (REQUIREMENTS, None)
    assert not list(tmp_path.iterdir())


def test_outside_the_repository_one_line_says_where_to_run_it(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "run this from the repository root" in result.stderr


def registry_reachable():
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
    try:
        urllib.request.urlopen(f"{index}/torch/", timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def host(tmp_path):
    """A copy of the project, and a site folder that makes the venv's Python look like a notebook
    host's: HOST's torch and torchvision are found before the venv's pinned ones (by import, and by pip)."""
    repo = tmp_path / "retino"
    repo.mkdir()
    for name in ("requirements.txt", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, repo)
    shutil.copytree(REPO_ROOT / "retino_utils", repo / "retino_utils", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "host-site"
    for name, version in HOST.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return repo, {**os.environ, "PYTHONPATH": str(site)}


def would_install(report):
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}


@pytest.mark.heavy
def test_dry_run_resolution_keeps_the_hosts_torch(host):
    """Resolved by pip against the package index: the script keeps the host's pair, which plain
    ``pip install -r requirements.txt`` in the same environment would replace by the pins."""
    if not registry_reachable():
        pytest.skip("the package index does not answer; pip cannot resolve requirements.txt here")
    repo, env = host
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--dry-run"]
    plain = subprocess.run([*pip, "--report", "plain.json", "-r", "requirements.txt"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr[-2000:]
    replaced = would_install(repo / "plain.json")
    assert (replaced.get("torch"), replaced.get("torchvision")) == ("2.15.0", "0.29.2")

    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    work = repo / "build" / "notebook-host"
    kept = would_install(work / "requirements-report.json")
    assert "torch" not in kept and "torchvision" not in kept, kept
    assert would_install(work / "package-report.json") == {"retino-utils": "0.1.0"}
    assert pins((work / "constraints.txt").read_text()) == ["torch==2.14.0+cu126", "torchvision==0.29.0+cu126"]
    assert "keeping the installed torch 2.14.0+cu126, torchvision 0.29.0+cu126" in result.stdout
    assert "pip would install" in result.stdout

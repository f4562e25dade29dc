"""Install retino into a notebook host's Python (Colab, Kaggle) without replacing its torch.

``requirements.txt`` pins torch and torchvision for ``make setup``'s fresh ``.venv``. A notebook host
already has a CUDA build of torch set up for its GPU (another release, often with a local label such
as ``+cu126``), and ``pip install -r requirements.txt`` would replace it with the pinned release from
PyPI: a CUDA 13 build with gigabytes of NVIDIA libraries and no kernels for a P100. So this script
writes a pip constraints file pinning the torch and torchvision that are installed, installs the rest
of ``requirements.txt`` against it (the constraints also keep any dependency, such as a missing
torchvision, from pulling in another torch), then the package as ``make setup`` does. Without a torch
it installs the pinned pair. Run it from the repository root:

    python scripts/notebook_host_setup.py            # install, then print the next commands
    python scripts/notebook_host_setup.py --dry-run  # only what pip would install; installs nothing
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TORCH_PAIR = ("torch", "torchvision")
WORK_DIR = Path("build/notebook-host")  # the generated requirements, constraints and pip reports
PIN = re.compile(r"^\s*(torch|torchvision)\s*([=<>!~;\[]|$)", re.IGNORECASE)  # a line naming one of the pair


def installed_versions(names=TORCH_PAIR) -> dict[str, str]:
    """The version of each of ``names`` that is installed, from its metadata as pip compares it: importing
    would not do, ``torch.__version__`` may carry a label pip never sees (2.15.0+cu132 for PyPI's 2.15.0)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def install_files(requirements: Path, out: Path, installed: dict[str, str]) -> tuple[Path, Path | None]:
    """The requirements and constraints files pip gets: the pins as they are without an installed torch,
    else the pair unpinned in the requirements and pinned to what is installed in the constraints."""
    if "torch" not in installed:
        return requirements, None
    kept = [line for line in requirements.read_text().splitlines() if not PIN.match(line)]
    host_requirements = out / "requirements.txt"
    host_requirements.write_text("\n".join([*kept, *TORCH_PAIR]) + "\n")
    constraints = out / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in installed.items()))
    return host_requirements, constraints


def pip_install(args: list[str], dry_run: bool, report: Path) -> list[str]:
    """Run ``pip install ARGS`` (with ``--dry-run``: nothing changes); what it installs, as ``name==version``."""
    mode = ["--dry-run", "--report", str(report)] if dry_run else ["-q"]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *mode, *args])
    if done.returncode:
        sys.exit(f"error: pip install {' '.join(args)} failed (exit {done.returncode}); its output is above")
    if not dry_run:
        return []
    return [f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in json.loads(report.read_text())["install"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print what pip would install; install nothing")
    args = parser.parse_args(argv)
    requirements = Path("requirements.txt")
    if not (requirements.is_file() and Path("pyproject.toml").is_file() and Path("retino_utils").is_dir()):
        sys.exit(f"error: run this from the repository root (no requirements.txt, pyproject.toml and "
                 f"retino_utils/ in {Path.cwd()}): cd into the clone first")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    installed = installed_versions()
    host_requirements, constraints = install_files(requirements, WORK_DIR, installed)
    if constraints:
        print(f"keeping the installed {', '.join(f'{n} {v}' for n, v in installed.items())} (pinned in {constraints})")
    else:
        print("no torch installed: installing the pinned torch and torchvision of requirements.txt")
    would = pip_install(["-r", str(host_requirements), *(["-c", str(constraints)] if constraints else [])],
                        args.dry_run, WORK_DIR / "requirements-report.json")
    would += pip_install(["--no-deps", "--no-build-isolation", "-e", "."], args.dry_run,
                         WORK_DIR / "package-report.json")
    if args.dry_run:
        print(f"pip would install {len(would)}: {', '.join(would) or 'nothing'}")
        return 0
    print("ready. Next (README, 'On Colab or Kaggle'):\n"
          "  python -m retino_utils.report --profile smoke --device cuda --out /tmp/smoke   # checks this torch\n"
          "  python -m retino_utils.data preprocess PHOTOS DATA --size 512 --prepare retina\n"
          "  python -m retino_utils.report --profile full --device cuda --data DATA --out BUILD")
    return 0


if __name__ == "__main__":
    sys.exit(main())

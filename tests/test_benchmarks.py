"""The benchmark scripts' --smoke modes, so they keep running as the package changes."""

import json
import os
import subprocess
import sys

import pytest

from retino_utils.paths import REPO_ROOT


def run_benchmark(script, *args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "RETINO_PROGRESS": "0"})


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    result = run_benchmark("throughput.py", "--smoke", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ours/ref" in result.stdout
    figures = json.loads(out.read_text())
    arch = figures["archs"]["resnet18"]
    for key in ("reference_images_per_s", "ours_images_per_s", "ceiling_images_per_s"):
        assert arch[key] > 0
    assert arch["speedup"] == pytest.approx(arch["ours_images_per_s"] / arch["reference_images_per_s"])
    assert arch["efficiency"] == pytest.approx(arch["ours_images_per_s"] / arch["ceiling_images_per_s"])
    assert figures["cache_build_images_per_s"] > 0

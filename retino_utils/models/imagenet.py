"""Where torchvision keeps the ImageNet weights, and whether they can be had, without importing torch.

The training CLI asks this before its heavy imports, so a missing file is reported in about a
second rather than after importing torch and torchvision. ``tests/test_models.py`` checks every
value here against torchvision's weights API and ``torch.hub.get_dir()``.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from retino_utils.errors import WeightsUnavailableError
from retino_utils.models.architectures import architecture

REACHABILITY_TIMEOUT_S = 3.0


def hub_dir() -> Path:
    """``torch.hub.get_dir()``: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``."""
    default_home = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default_home))) / "hub"


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision caches (and we look for) the ImageNet weights of ``arch``."""
    return hub_dir() / "checkpoints" / Path(urlparse(architecture(arch).imagenet_url).path).name


def unavailable_reason(arch: str) -> str | None:
    """Why the ImageNet file of ``arch`` cannot be had (None when cached, or the host answers)."""
    if imagenet_weights_file(arch).is_file():
        return None
    if os.environ.get("RETINO_OFFLINE") == "1":
        return "RETINO_OFFLINE=1"
    url = architecture(arch).imagenet_url
    return None if reachable(url) else f"{urlparse(url).hostname} is unreachable"


def unavailable_error(arch: str, reason: str) -> WeightsUnavailableError:
    path, url = imagenet_weights_file(arch), architecture(arch).imagenet_url
    return WeightsUnavailableError(
        f"ImageNet weights for {arch} are not cached and cannot be downloaded ({reason}): "
        f"put {path.name} (from {url}) into {path.parent} "
        f"(set TORCH_HOME to use another cache), e.g. on a connected machine run: "
        f"python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\" "
        f"and copy the file."
    )


def require_imagenet_weights(arch: str) -> None:
    """Raise WeightsUnavailableError (one line: which file, where) unless the weights can be had."""
    reason = unavailable_reason(arch)
    if reason:
        raise unavailable_error(arch, reason)


def reachable(url: str, timeout: float = REACHABILITY_TIMEOUT_S) -> bool:
    """Can a TCP connection to the URL's host (or the configured HTTPS proxy) open within ``timeout``?

    The probe runs in a daemon thread because a stalled DNS lookup ignores socket timeouts.
    """
    proxy = urllib.request.getproxies().get("https")
    target = urlparse(proxy if proxy else url)
    address = (target.hostname, target.port or (443 if target.scheme == "https" else 80))
    opened: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                opened.append(True)
        except OSError:  # DNS failure, refused, timed out
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)

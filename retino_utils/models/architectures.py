"""The architectures a run can train, declared once: adding one (e.g. torchvision's resnet34) is one entry.

The settings take their ``arch`` choices from here, the models their constructors, ImageNet weights and
native blocks, the tables their labels. Torch-free, so the CLI's early checks can read it before the
heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from retino_utils.errors import RetinoError


@dataclass(frozen=True)
class Architecture:
    name: str  # torchvision's constructor, ``torchvision.models.<name>``
    label: str  # how figures and tables name it
    weights: str  # torchvision's weights enum; pretrained runs start from its IMAGENET1K_V1
    imagenet_url: str  # that file's address (tests/test_models.py checks it against torchvision)
    block: str  # the residual block of the native implementation: "basic" or "bottleneck"
    layers: tuple[int, int, int, int]  # blocks per stage


IMPLS = ("torchvision", "native")  # how a ResNet is built: torchvision's, or from its blocks (resnet_native.py)
ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in (
    Architecture("resnet18", "ResNet-18", "ResNet18_Weights",
                 "https://download.pytorch.org/models/resnet18-f37072fd.pth", "basic", (2, 2, 2, 2)),
    Architecture("resnet50", "ResNet-50", "ResNet50_Weights",
                 "https://download.pytorch.org/models/resnet50-0676ba61.pth", "bottleneck", (3, 4, 6, 3)),
)}


def architecture(name: str) -> Architecture:
    """The declared architecture called ``name``; an unknown one is a one-line error listing the choices."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise RetinoError(f"unknown arch {name!r}: choose one of {', '.join(ARCHITECTURES)}") from None

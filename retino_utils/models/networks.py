"""ResNet-18/50 for DR grading: construction, weights (ImageNet or a file), two-phase freezing."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from retino_utils.errors import RetinoError
from retino_utils.models.architectures import IMPLS, Architecture, architecture
from retino_utils.models.imagenet import imagenet_weights_file, unavailable_error, unavailable_reason
from retino_utils.models.resnet_native import native_resnet

HEAD = "fc"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def _construct(arch: Architecture, impl: str, num_classes: int) -> nn.Module:
    if impl == "native":
        return native_resnet(arch.block, arch.layers, num_classes)
    return getattr(torchvision.models, arch.name)(num_classes=num_classes)


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise RetinoError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


def build_model(arch: str, weights: str | Path | None = None, num_classes: int = 5,
                impl: str = "torchvision") -> nn.Module:
    """A ResNet with a ``num_classes``-output head (1 = the ordinal regression head).

    ``weights``: None (random init), ``"imagenet"``, or a state-dict / checkpoint file. The head is
    loaded only when the file's head has the same size; otherwise it stays freshly initialised.
    """
    declared = architecture(arch)
    _check_choice(impl, IMPLS, "impl")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise RetinoError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = _construct(declared, impl, num_classes)
    if weights is None:
        return model
    if isinstance(weights, str) and weights == "imagenet":
        state, source = load_imagenet_state_dict(arch), f"ImageNet weights {imagenet_weights_file(arch)}"
    elif isinstance(weights, (str, Path)):
        state, source = read_weights_file(Path(weights), arch), f"weights file {weights}"
    else:
        raise RetinoError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")
    load_backbone_and_head(model, state, source, arch)
    return model


# --- ImageNet weights through torchvision's cache ---------------------------------------------

def load_imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The cached ImageNet state dict; downloaded first only when the host answers quickly."""
    path = imagenet_weights_file(arch)
    if path.is_file():
        return read_weights_file(path, arch)
    reason = unavailable_reason(arch)
    if reason is None:
        try:
            weights = getattr(torchvision.models, architecture(arch).weights).IMAGENET1K_V1
            return weights.get_state_dict(progress=True)
        except Exception as exc:  # any network/HTTP/IO failure ends in the same advice
            reason = f"download failed: {_first_line(exc)}"
    raise unavailable_error(arch, reason)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# --- weights files ------------------------------------------------------------------------------

def read_weights_file(path: Path, arch: str = "the model") -> dict[str, torch.Tensor]:
    """A state dict from a plain state-dict file or our checkpoint (``{"model": state, ...}``).

    ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped. Only tensors are
    ever unpickled (``weights_only=True``), and no message suggests loading a file unsafely.
    """
    if not path.is_file():
        raise RetinoError(f"weights file {path} not found: check the path")
    not_weights = (f"weights file {path} is not a state dict or checkpoint of {arch} "
                   f"(expected tensors by name, or a checkpoint with a 'model' entry)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message would advise weights_only=False: never do that with a stray file
        raise RetinoError(f"{not_weights}; it is damaged or not a PyTorch file") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RetinoError(not_weights)
    return {_strip_wrapper_prefixes(key): value for key, value in obj.items()}


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def load_backbone_and_head(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load every backbone tensor (strictly) and the head only when its shape matches the model's."""
    own = model.state_dict()
    head_keys = {key for key in own if key.startswith(HEAD + ".")}
    backbone_keys = set(own) - head_keys
    missing = sorted(backbone_keys - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in backbone_keys & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or misshapen:
        problems = [_count_keys("missing", missing), _count_keys("unexpected", unexpected)]
        if misshapen:
            problems.append(f"{len(misshapen)} keys of another shape, e.g. {misshapen[0]}")
        raise RetinoError(f"{source} does not fit {arch} ({'; '.join(problems)}): "
                          f"was it saved from another architecture?")
    head_fits = all(key in state and state[key].shape == own[key].shape for key in head_keys)
    to_load = {k: v for k, v in state.items() if k in backbone_keys or head_fits}
    model.load_state_dict(to_load, strict=head_fits)


def _count_keys(what: str, keys: list[str]) -> str:
    return f"{what} {len(keys)} keys, e.g. {keys[0]}" if keys else f"{what} 0 keys"


# --- two-phase training: frozen backbone, then everything ---------------------------------------

def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside DDP/DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(getattr(unwrap(model), HEAD).parameters())


def freeze_backbone(model: nn.Module) -> None:
    """Only the head keeps gradients. Call ``set_train_mode`` (not ``train()``) afterwards."""
    for name, param in unwrap(model).named_parameters():
        param.requires_grad = name.startswith(HEAD + ".")


def unfreeze_all(model: nn.Module) -> None:
    for param in unwrap(model).parameters():
        param.requires_grad = True


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but BatchNorms whose parameters are all frozen stay in eval mode.

    Without this a "frozen" backbone still drifts: BN running statistics update in every
    training forward pass even when no weight gets a gradient.
    """
    model.train()
    for module in unwrap(model).modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()

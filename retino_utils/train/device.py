"""Device choice and numeric precision: bf16 where the hardware computes it natively, fp16 with a gradient
scaler on older GPUs, fp32 elsewhere."""

from __future__ import annotations

import contextlib
import platform
from typing import Collection

import torch

from retino_utils.errors import RetinoError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    base = name.split(":")[0]
    if base not in DEVICES:
        raise RetinoError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)} (cuda:N for a given GPU)")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise RetinoError(f"device {name!r} requested but this torch sees no CUDA GPU: use --device cpu or auto")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RetinoError(f"device {name!r} requested but MPS is not available: use --device cpu or auto")
    return torch.device(name)


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, AMX, Arm BF16
BF16_CUDA_CAPABILITY = (8, 0)  # Ampere and later compute bf16 natively; a T4 (7.5), V100 (7.0) or P100 (6.0) does not


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags that matter for precision (torch's view, else /proc/cpuinfo)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps:
        return {name for name, present in caps.items() if present is True}
    if platform.system() == "Linux":
        with contextlib.suppress(OSError):
            return set(open("/proc/cpuinfo").read().split())
    return set()


def choose_precision(device_type: str, capability: tuple[int, int] | None = None,
                     flags: Collection[str] = ()) -> str:
    """What ``--precision auto`` means, from the hardware alone: bf16 autocast where it is computed natively
    (CUDA capability 8.0 and above; CPUs with AVX512-BF16, AMX or Arm BF16), fp16 autocast with a gradient
    scaler on older CUDA cards (where ``torch.cuda.is_bf16_supported()`` may still say yes: emulated, slow),
    fp32 elsewhere (other CPUs, MPS)."""
    if device_type == "cuda":
        return "bf16" if capability is not None and tuple(capability) >= BF16_CUDA_CAPABILITY else "fp16"
    if device_type == "cpu" and set(flags) & set(NATIVE_BF16_FLAGS):
        return "bf16"
    return "fp32"


def resolve_precision(device: torch.device, requested: str = "auto") -> str:
    """``requested`` as given, or for ``auto`` the choice for this machine's hardware."""
    if requested != "auto":
        return requested
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision(device.type, capability, cpu_flags() if device.type == "cpu" else ())


def autocast(device: torch.device, precision: str):
    """An autocast context in bf16 or fp16, or a no-op in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling: a scaler for fp16, none otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


PRECISION_LABELS = {"bf16": "bf16 autocast", "fp16": "fp16 autocast + gradient scaler", "fp32": "fp32"}


def use_channels_last(device: torch.device) -> bool:
    """channels_last helps convolutions on CUDA and on CPU (oneDNN); MPS gains nothing."""
    return device.type in ("cuda", "cpu")

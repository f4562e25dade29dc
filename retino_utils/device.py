"""Device choice and numeric precision: bf16 only where the hardware computes it natively."""

from __future__ import annotations

import contextlib
import platform

import torch

from .errors import RetinoError

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


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16, AMX, Arm BF16); elsewhere bf16 is emulated and slower."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps:
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("bf16"))
    if platform.system() == "Linux":
        with contextlib.suppress(OSError):
            flags = open("/proc/cpuinfo").read()
            return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
    return False


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def autocast(device: torch.device, bf16: bool):
    """An autocast context in bf16, or a no-op in fp32."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def use_channels_last(device: torch.device) -> bool:
    """channels_last helps convolutions on CUDA and on CPU (oneDNN); MPS gains nothing."""
    return device.type in ("cuda", "cpu")

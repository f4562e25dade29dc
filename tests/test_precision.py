"""The precision policy: what --precision auto picks on each kind of hardware (a pure decision, checked
over a table of real cards and CPUs), fp16 autocast with a gradient scaler on the CPU (finite, and a
resumed run equal to an uninterrupted one, scaler included), and a GPU out of memory in one line."""

import pandas as pd
import pytest
import torch

from retino_utils.errors import RetinoError
from retino_utils.train import trainer
from retino_utils.train.checkpoint import load_checkpoint
from retino_utils.train.cli import fit
from retino_utils.train.config import TrainConfig
from retino_utils.train.device import choose_precision

# (device type, CUDA compute capability, CPU flags) -> what auto must choose, per published specifications.
CARDS = {
    "Tesla P100 (Kaggle)": ("cuda", (6, 0), (), "fp16"),
    "Tesla V100": ("cuda", (7, 0), (), "fp16"),
    "Tesla T4 (Colab, Kaggle)": ("cuda", (7, 5), (), "fp16"),
    "RTX 2080 Ti": ("cuda", (7, 5), (), "fp16"),
    "A100": ("cuda", (8, 0), (), "bf16"),
    "RTX 3090": ("cuda", (8, 6), (), "bf16"),
    "L4": ("cuda", (8, 9), (), "bf16"),
    "H100 / H200": ("cuda", (9, 0), (), "bf16"),
    "CPU with AVX512-BF16 (AMD EPYC Genoa)": ("cpu", None, ("avx2", "avx512f", "avx512_bf16"), "bf16"),
    "CPU with AMX (Xeon Sapphire Rapids)": ("cpu", None, ("avx512f", "amx_bf16", "amx_tile"), "bf16"),
    "Arm CPU with BF16 (Graviton 3)": ("cpu", None, ("asimd", "bf16", "sve"), "bf16"),
    "CPU without bf16 (Skylake)": ("cpu", None, ("avx2", "avx512f"), "fp32"),
    "Apple MPS": ("mps", None, (), "fp32"),
}


@pytest.mark.parametrize("card", list(CARDS))
def test_auto_precision_per_card(card):
    device_type, capability, flags, expected = CARDS[card]
    assert choose_precision(device_type, capability, flags) == expected


def test_emulated_bf16_is_not_taken_for_native(monkeypatch):
    """Current torch says a T4 'supports' bf16 (it emulates it): the policy looks at the capability instead."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert choose_precision("cuda", (7, 5)) == "fp16"


def config(data, out, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out), epochs=3, batch_size=8, image_size=32, device="cpu",
                  precision="fp16", deterministic=True, progress=False, bootstrap=0, lr=0.01, schedule="onecycle")
    return TrainConfig(**{**values, **overrides})


@pytest.mark.heavy
def test_fp16_with_a_scaler_trains_and_resumes_bit_identically(tiny_dataset, tmp_path, monkeypatch):
    # A scale far too high overflows at once, so it backs off during training: a resume that forgot the
    # scaler's state would start from the wrong scale and differ.
    monkeypatch.setattr(trainer, "grad_scaler", lambda device, precision: torch.amp.GradScaler(
        device.type, init_scale=2.0**40, growth_interval=2) if precision == "fp16" else None)
    whole = fit(config(tiny_dataset, tmp_path / "whole"))

    def stop_after_the_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config(tiny_dataset, tmp_path / "split"), on_epoch_end=stop_after_the_first_epoch)
    split = fit(config(tiny_dataset, tmp_path / "split", resume=True))

    timing = ["seconds", "images_per_s"]
    pd.testing.assert_frame_equal(whole.drop(columns=timing), split.drop(columns=timing))
    assert whole["train_loss"].notna().all() and (whole["train_loss"] < 1e3).all()
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "split"))
    assert a.scaler["scale"] == b.scaler["scale"] < 2.0**40  # it moved, and was carried over
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    import json

    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["arithmetic"] == "fp16"


def test_running_out_of_gpu_memory_names_a_batch_that_fits(tiny_dataset, tmp_path, monkeypatch):
    """Simulated: the model runs out of memory for batches above 3, as a GPU would (torch's own error type)."""
    build = trainer.build_model

    def hungry_model(*args, **kwargs):
        model = build(*args, **kwargs)
        forward = model.forward

        def limited(x):
            if x.shape[0] > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(x)

        model.forward = limited
        return model

    monkeypatch.setattr(trainer, "build_model", hungry_model)
    with pytest.raises(RetinoError) as refused:
        fit(config(tiny_dataset, tmp_path / "run", precision="fp32", batch_size=16, deterministic=False))
    message = str(refused.value)
    assert "ran out of memory" in message and "batch 16 at 32 px" in message
    assert "batch 2 fits: rerun with --batch-size 2" in message and "\n" not in message

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from retino_utils.errors import RetinoError, WeightsUnavailableError
from retino_utils.models import imagenet
from retino_utils.models.architectures import ARCHITECTURES
from retino_utils.models.imagenet import imagenet_weights_file
from retino_utils.models.networks import (
    build_model,
    freeze_backbone,
    head_parameters,
    set_train_mode,
    unfreeze_all,
    unwrap,
)

TORCHVISION = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_native_resnet_loads_torchvision_state_dict_and_matches_outputs(arch):
    torch.manual_seed(0)
    reference = TORCHVISION[arch](num_classes=5).eval()
    # non-trivial BN statistics, so a mismatched BN wiring cannot hide behind identity stats
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    native = build_model(arch, impl="native").eval()
    assert set(native.state_dict()) == set(reference.state_dict())
    native.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(native(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_native_init_statistics_follow_torchvision(arch):
    torch.manual_seed(1)
    native = build_model(arch, impl="native").state_dict()
    reference = TORCHVISION[arch](num_classes=5).state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.0.downsample.0.weight"):
        assert native[key].std().item() == pytest.approx(reference[key].std().item(), rel=0.1)
    assert torch.equal(native["bn1.weight"], reference["bn1.weight"])


def test_unknown_arch_and_impl_list_choices():
    with pytest.raises(RetinoError, match="resnet18, resnet50"):
        build_model("vgg16")
    with pytest.raises(RetinoError, match="torchvision, native"):
        build_model("resnet18", impl="timm")


def test_regression_head_has_one_output():
    model = build_model("resnet18", num_classes=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)


# --- frozen means frozen ------------------------------------------------------------------------

def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _sgd_step(model, params):
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
    set_train_mode(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(2):  # two steps so momentum buffers act too
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("param_source", ["head", "all"])
def test_frozen_backbone_changes_neither_weights_nor_bn_statistics(param_source):
    torch.manual_seed(0)
    model = build_model("resnet18")
    freeze_backbone(model)
    assert [id(p) for p in model.parameters() if p.requires_grad] == [id(p) for p in head_parameters(model)]
    before = _snapshot(model)
    _sgd_step(model, head_parameters(model) if param_source == "head" else model.parameters())
    after = model.state_dict()
    backbone = [k for k in before if not k.startswith("fc.")]
    assert any(k.endswith("running_mean") for k in backbone)
    for key in backbone:
        assert torch.equal(before[key], after[key]), key
    for key in ("fc.weight", "fc.bias"):
        assert not torch.equal(before[key], after[key]), key
    assert model.fc.training and not model.bn1.training


def test_unfreeze_all_trains_everything():
    torch.manual_seed(0)
    model = build_model("resnet18")
    freeze_backbone(model)
    unfreeze_all(model)
    before = _snapshot(model)
    _sgd_step(model, [p for p in model.parameters() if p.requires_grad])
    after = model.state_dict()
    assert all(m.training for m in model.modules())
    for key in before:
        assert not torch.equal(before[key], after[key]), key


def test_helpers_see_through_ddp_and_compile_wrappers():
    model = build_model("resnet18")
    wrapped = nn.DataParallel(torch.compile(model))
    assert unwrap(wrapped) is model
    freeze_backbone(wrapped)
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad
    assert head_parameters(wrapped)[0] is model.fc.weight
    set_train_mode(wrapped)
    assert wrapped.training and model.fc.training and not model.layer1[0].bn1.training


# --- ImageNet weights through the torch hub cache -------------------------------------------------

@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_imagenet_weights_file_follows_torch_home(empty_torch_home):
    assert imagenet_weights_file("resnet18") == empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_file("resnet50").name == "resnet50-0676ba61.pth"


@pytest.mark.parametrize("torch_home", [True, False])
@pytest.mark.parametrize("xdg", [True, False])
def test_torch_free_weights_lookup_agrees_with_torch(tmp_path, monkeypatch, torch_home, xdg):
    """The CLI's pre-import check must look where torchvision itself caches and downloads from."""
    for var, wanted in (("TORCH_HOME", torch_home), ("XDG_CACHE_HOME", xdg)):
        if wanted:
            monkeypatch.setenv(var, str(tmp_path / var.lower()))
        else:
            monkeypatch.delenv(var, raising=False)
    assert imagenet.hub_dir() == Path(torch.hub.get_dir())
    for arch in ARCHITECTURES.values():  # each declared file is the one torchvision itself fetches
        assert arch.imagenet_url == getattr(torchvision.models, arch.weights).IMAGENET1K_V1.url, arch.name
    assert [arch.imagenet_url.rsplit("/", 1)[1] for arch in ARCHITECTURES.values()][:2] == [
        "resnet18-f37072fd.pth", "resnet50-0676ba61.pth"]


def test_imagenet_offline_without_cache_fails_with_advice(empty_torch_home, monkeypatch):
    monkeypatch.setenv("RETINO_OFFLINE", "1")
    monkeypatch.setattr("retino_utils.models.imagenet.reachable", lambda *a, **k: pytest.fail("network touched"))
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("resnet18", weights="imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(empty_torch_home / "hub" / "checkpoints") in message
    assert "\n" not in message


def test_imagenet_unreachable_host_is_reported(empty_torch_home, monkeypatch):
    """Without RETINO_OFFLINE, on a machine without network (or with the host unresolvable)."""
    monkeypatch.delenv("RETINO_OFFLINE", raising=False)
    monkeypatch.setitem(ARCHITECTURES, "resnet18", dataclasses.replace(
        ARCHITECTURES["resnet18"], imagenet_url="https://retino-offline-test.invalid/models/resnet18-f37072fd.pth"))
    with pytest.raises(WeightsUnavailableError, match="retino-offline-test.invalid is unreachable"):
        build_model("resnet18", weights="imagenet")


def test_imagenet_weights_load_from_cache_without_network(empty_torch_home, monkeypatch):
    monkeypatch.delenv("RETINO_OFFLINE", raising=False)
    monkeypatch.setattr("retino_utils.models.imagenet.reachable", lambda *a, **k: pytest.fail("network touched"))
    torch.manual_seed(123)
    saved = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    model = build_model("resnet18", weights="imagenet", num_classes=5)
    loaded = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert model.fc.out_features == 5 and model.fc.in_features == 512


# --- weights files ---------------------------------------------------------------------------------

def test_weights_file_with_same_head_loads_everything(tmp_path):
    source = build_model("resnet18", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model("resnet18", weights=tmp_path / "w.pt", impl="native")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_weights_file_with_other_head_loads_backbone_and_keeps_fresh_head(tmp_path):
    source = build_model("resnet18", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model("resnet18", weights=str(tmp_path / "w.pt"), num_classes=1)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 1


def test_checkpoint_with_model_key_and_wrapper_prefixes(tmp_path):
    source = build_model("resnet18", num_classes=5)
    prefixed = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": prefixed, "epoch": 3}, tmp_path / "ckpt.pt")
    model = build_model("resnet18", weights=tmp_path / "ckpt.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(build_model("resnet18").state_dict(), path)
    with pytest.raises(RetinoError, match=r"r18\.pt does not fit resnet50 \(missing \d+ keys, e\.g\. .*another"):
        build_model("resnet50", weights=path)


@pytest.mark.parametrize("content", [None, b"not a torch file"])
def test_missing_or_unreadable_weights_file_is_named(tmp_path, content):
    path = tmp_path / "weights.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RetinoError, match="weights.pt"):
        build_model("resnet18", weights=path)

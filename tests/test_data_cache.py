"""The image cache and BatchLoader: same tensors as the per-image path and as torchvision, resumable
builds, invalidation, DDP sharding, weighted sampling, reproducible epochs."""

import math
import threading

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from builders import make_kaggle, make_lab
from PIL import Image

import retino_utils.data.cache as cache_module
from retino_utils.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentChoices,
    BatchLoader,
    DecodedImages,
    EvalPreset,
    FundusDataset,
    ImageCache,
    TrainPreset,
    augment_batch,
    cachedir,
    load_resized,
    read_split,
)
from retino_utils.data.__main__ import main
from retino_utils.data.transforms import rotate
from retino_utils.errors import RetinoError

SIZE = 16
MEAN, STD = (0.4, 0.3, 0.2), (0.25, 0.2, 0.15)


@pytest.fixture
def lab_cache(tmp_path):
    make_lab(tmp_path, n_train=10, size=(24, 20))
    return ImageCache.build(read_split(tmp_path, "train"), SIZE, progress=False)


def choices(hflip, vflip, angle):
    return AugmentChoices(torch.tensor(hflip), torch.tensor(vflip), torch.tensor(angle, dtype=torch.float32))


def loader_for(cache, **kwargs):
    options = dict(shuffle=True, augment=True, mean=MEAN, std=STD)
    return BatchLoader(cache, 4, **{**options, **kwargs})


def torchvision_reference(path, flip_h, flip_v, angle):
    """Pad/resize as load_resized, then torchvision's flips, to_tensor, rotate, normalize."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    image = TF.pad(image, [left, top, side - width - left, side - height - top], fill=0)
    image = TF.resize(image, [SIZE, SIZE], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    image = TF.hflip(image) if flip_h else image
    image = TF.vflip(image) if flip_v else image
    x = TF.to_tensor(image)
    if angle:
        x = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)
    return TF.normalize(x, MEAN, STD)


@pytest.mark.parametrize("sampler", ["shuffle", "weighted"])
def test_decoding_source_gives_the_cached_batches(lab_cache, sampler):
    """--loader pil and --loader cache share one sampling and augmentation path: same seed, same tensors."""
    weights = np.linspace(1, 3, len(lab_cache)) if sampler == "weighted" else None
    decoded = DecodedImages(lab_cache.index, SIZE, threads=2)
    for world_size, rank in ((1, 0), (2, 1)):
        options = dict(rotation=30.0, sample_weights=weights, seed=3, world_size=world_size, rank=rank)
        cached, fresh = loader_for(lab_cache, **options), loader_for(decoded, **options)
        for epoch in (1, 2):
            cached.set_epoch(epoch)
            fresh.set_epoch(epoch)
            pairs = list(zip(cached, fresh, strict=True))
            assert pairs
            for (x1, y1, i1), (x2, y2, i2) in pairs:
                assert torch.equal(i1, i2) and torch.equal(y1, y2) and torch.equal(x1, x2)


def test_cache_holds_load_resized_pixels(lab_cache):
    assert lab_cache.images.shape == (10, SIZE, SIZE, 3) and lab_cache.images.dtype == np.uint8
    for i, path in enumerate(lab_cache.index.paths):
        assert np.array_equal(lab_cache.images[i], load_resized(path, SIZE))
    assert lab_cache.labels.tolist() == lab_cache.index.labels.tolist() and lab_cache.names == lab_cache.index.names


@pytest.mark.parametrize("angles", [[0.0, 0.0, 0.0, 0.0], [0.0, 12.5, -30.0, 90.0]])
def test_loader_batch_equals_train_preset_and_torchvision(lab_cache, angles):
    picked = [7, 2, 9, 0]
    drawn = choices([True, False, True, False], [False, True, True, False], angles)
    x, y, idx = loader_for(lab_cache).batch(picked, drawn)
    assert idx.tolist() == picked and y.tolist() == lab_cache.labels[picked].tolist()
    preset = TrainPreset(SIZE, MEAN, STD)
    per_image = torch.stack([preset(lab_cache.index.paths[i], drawn[k : k + 1]) for k, i in enumerate(picked)])
    if any(angles):
        torch.testing.assert_close(x, per_image, rtol=0, atol=1e-6)
    else:
        assert torch.equal(x, per_image)
    reference = torch.stack(
        [
            torchvision_reference(path, bool(drawn.hflip[k]), bool(drawn.vflip[k]), float(drawn.angle[k]))
            for k, path in enumerate(lab_cache.index.paths[i] for i in picked)
        ]
    )
    torch.testing.assert_close(x, reference, rtol=0, atol=1e-5 if any(angles) else 1e-6)


def test_rotate_matches_torchvision_on_random_images():
    x = torch.rand(3, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    angles = [17.0, -45.0, 180.0]
    ours = rotate(x, torch.tensor(angles))
    for k, angle in enumerate(angles):
        theirs = TF.rotate(x[k], angle, interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(ours[k], theirs, rtol=0, atol=1e-5)


def test_eval_preset_and_unaugmented_batches_agree(lab_cache):
    x, _, _ = loader_for(lab_cache, shuffle=False, augment=False).batch([3, 5])
    preset = EvalPreset(SIZE, MEAN, STD)
    assert torch.equal(x, torch.stack([preset(lab_cache.index.paths[i]) for i in (3, 5)]))


def test_iteration_uses_the_epoch_plan_and_channels_last(lab_cache):
    loader = loader_for(lab_cache, rotation=10.0)
    order, drawn = loader.epoch_plan()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    x = torch.cat([b[0] for b in batches])
    idx = torch.cat([b[2] for b in batches])
    assert torch.equal(idx, order) and sorted(idx.tolist()) == list(range(10))
    assert torch.equal(x, loader.batch(order, drawn)[0])
    for x, y, idx in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and idx.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, torch.tensor(lab_cache.labels)[idx])
    plain = next(iter(loader_for(lab_cache, channels_last=False)))[0]
    assert plain.is_contiguous()


def test_epochs_are_reproducible_and_differ(lab_cache):
    def epoch_indices(loader, epoch):
        loader.set_epoch(epoch)
        return [b[2].tolist() for b in loader], [b[0] for b in loader]

    first, again = loader_for(lab_cache, seed=3), loader_for(lab_cache, seed=3)
    idx0, x0 = epoch_indices(first, 0)
    idx0_again, x0_again = epoch_indices(again, 0)
    assert idx0 == idx0_again and all(torch.equal(a, b) for a, b in zip(x0, x0_again))
    assert epoch_indices(first, 1)[0] != idx0
    assert epoch_indices(loader_for(lab_cache, seed=4), 0)[0] != idx0


def test_drop_last_and_length(lab_cache):
    assert len(loader_for(lab_cache, drop_last=True)) == 2
    assert [len(b[1]) for b in loader_for(lab_cache, drop_last=True)] == [4, 4]
    assert [len(b[1]) for b in loader_for(lab_cache)] == [4, 4, 2]


def test_eval_sharding_covers_every_index_once(lab_cache):
    seen = []
    for rank in range(3):
        loader = loader_for(lab_cache, shuffle=False, augment=False, rank=rank, world_size=3)
        ranks_indices = [i for b in loader for i in b[2].tolist()]
        assert len(ranks_indices) == len(range(rank, 10, 3))
        seen += ranks_indices
    assert sorted(seen) == list(range(10))


def test_train_sharding_pads_like_distributed_sampler(lab_cache):
    per_rank = []
    for rank in range(3):
        loader = loader_for(lab_cache, rank=rank, world_size=3, seed=7)
        per_rank.append([i for b in loader for i in b[2].tolist()])
    assert [len(r) for r in per_rank] == [math.ceil(10 / 3)] * 3
    assert set().union(*map(set, per_rank)) == set(range(10))
    full_order, _ = loader_for(lab_cache, seed=7).epoch_plan()
    padded = torch.cat([full_order, full_order[:2]])
    assert [padded[r::3].tolist() for r in range(3)] == per_rank


def test_weighted_sampling_follows_the_weights(tmp_path):
    make_lab(tmp_path, n_train=60, size=(4, 4))
    cache = ImageCache.build(read_split(tmp_path, "train"), 4, progress=False)
    labels = cache.labels.copy()
    labels[:] = 0
    labels[:6] = 1  # a 10% minority
    weights = np.where(labels == 1, 9.0, 1.0)  # so each class should be drawn half the time
    expected = np.bincount(labels, weights=weights) / weights.sum()
    loader = BatchLoader(cache, 16, shuffle=True, augment=False, mean=MEAN, std=STD, sample_weights=weights)
    draws = []
    for epoch in range(40):
        loader.set_epoch(epoch)
        draws += [i for b in loader for i in b[2].tolist()]
    freq = np.bincount(labels[draws], minlength=2) / len(draws)
    tolerance = 4 * np.sqrt(expected * (1 - expected) / len(draws))
    assert np.all(np.abs(freq - expected) < tolerance), (freq, expected)
    assert freq[1] > 0.4  # the minority is drawn far beyond its 10% share


def test_interrupted_build_resumes_and_equals_a_clean_build(tmp_path):
    make_lab(tmp_path, n_train=10)
    index = read_split(tmp_path, "train")

    class Interrupt(Exception):
        pass

    def stop_after_four(n_done):
        if n_done == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        ImageCache.build(index, SIZE, progress=False, on_image=stop_after_four)
    folder = tmp_path / ".retino-cache" / "images"
    assert len(list(folder.glob("*.npy.partial"))) == 1 and len(list(folder.glob("*.npy"))) == 1  # the done-mask
    redone = []
    resumed = ImageCache.build(index, SIZE, progress=False, on_image=redone.append)
    assert redone == list(range(5, 11))  # only the six images not done before
    clean = ImageCache.build(index, SIZE, cache_dir=tmp_path / "clean", progress=False)
    assert np.array_equal(resumed.images, clean.images)
    assert not list(folder.glob("*.partial")) and not list(folder.glob("*.done.npy"))


def test_finished_cache_is_reused_without_decoding(lab_cache, monkeypatch):
    def must_not_decode(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "load_resized", must_not_decode)
    again = ImageCache.build(read_split(lab_cache.index.root, "train"), SIZE, progress=False)
    assert again.path == lab_cache.path


def test_new_file_list_size_or_file_state_makes_a_new_cache(lab_cache):
    index = lab_cache.index
    held_out = ImageCache.build(index.subset(range(8, 10)), SIZE, progress=False)
    kept = ImageCache.build(index.subset(range(8)), SIZE, progress=False)
    assert len({held_out.path, kept.path, lab_cache.path}) == 3
    assert held_out.path.exists() and lab_cache.path.exists()  # other entry lists live side by side
    assert np.array_equal(kept.images, lab_cache.images[:8])
    other_size = ImageCache.build(index.subset(range(8)), 8, progress=False)
    assert other_size.path != kept.path and kept.path.exists()
    assert other_size.images.shape == (8, 8, 8, 3)
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(index.paths[0])  # an edited image
    rebuilt = ImageCache.build(read_split(index.root, "train").subset(range(8)), SIZE, progress=False)
    assert rebuilt.path != kept.path and not rebuilt.images[0].any()
    assert not kept.path.exists()  # the same entries' outdated cache is removed


def test_concurrent_builds_of_one_cache_wait_for_each_other(tmp_path):
    make_lab(tmp_path, n_train=10)
    index = read_split(tmp_path, "train")
    results, errors = [], []

    def build():
        try:
            results.append(ImageCache.build(index, SIZE, progress=False).path)
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(results)) == 1 and len(results) == 3


def test_pool_build_equals_in_process_build(tmp_path):
    make_kaggle(tmp_path, n_patients=25, size=(12, 12))
    index = read_split(tmp_path, "train")
    pooled = ImageCache.build(index, 8, cache_dir=tmp_path / "a", progress=False, workers=2)
    alone = ImageCache.build(index, 8, cache_dir=tmp_path / "b", progress=False, workers=1)
    assert np.array_equal(pooled.images, alone.images)


def test_undecodable_image_fails_the_build_with_a_hint(tmp_path):
    make_lab(tmp_path)
    (tmp_path / "102_left.jpeg").write_bytes(b"nope")
    with pytest.raises(RetinoError, match=r"102_left.jpeg .*skip_bad=True"):
        ImageCache.build(read_split(tmp_path, "train"), SIZE, progress=False)


def test_breaking_out_of_an_epoch_stops_the_prefetch_thread(lab_cache):
    before = threading.active_count()
    for _ in loader_for(lab_cache):
        break
    assert threading.active_count() == before


def test_train_preset_is_seedable_and_works_in_a_dataset(lab_cache):
    first = FundusDataset(lab_cache.index, TrainPreset(SIZE, MEAN, STD, rotation=20.0, seed=5))
    second = FundusDataset(lab_cache.index, TrainPreset(SIZE, MEAN, STD, rotation=20.0, seed=5))
    draws = [first[i][0] for i in range(4)]
    assert all(torch.equal(a, second[i][0]) for i, a in enumerate(draws))
    assert draws[0].shape == (3, SIZE, SIZE) and draws[0].dtype == torch.float32
    assert first[1][1] == int(lab_cache.labels[1])


def test_augment_batch_keeps_unrotated_samples_exact():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(x, choices([False, False], [False, False], [0.0, 30.0]), IMAGENET_MEAN, IMAGENET_STD)
    plain = augment_batch(x[:1], choices([False], [False], [0.0]), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(out[0], plain[0])


def test_cli_builds_both_splits(tmp_path, capsys):
    make_lab(tmp_path)
    assert main(["cache", str(tmp_path), "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images at 8 px" in out and "test: 4 images at 8 px" in out
    for split in ("train", "test"):
        assert ImageCache.build(read_split(tmp_path, split), 8, progress=False).images.shape[1:] == (8, 8, 3)


def test_a_cache_folder_created_by_another_build_meanwhile_is_shared(tmp_path, monkeypatch):
    """The race behind concurrent builds, made certain: another process creates the data folder's cache folder
    right after this one looked; both must still use it (not one of them a fallback elsewhere)."""
    local = tmp_path / cachedir.LOCAL_CACHE_NAME
    checked = cachedir._may_write

    def and_another_build_creates_it(folder):
        answer = checked(folder)
        local.mkdir(exist_ok=True)
        return answer

    monkeypatch.setattr(cachedir, "_may_write", and_another_build_creates_it)
    assert cachedir.dataset_cache_dir(tmp_path) == local

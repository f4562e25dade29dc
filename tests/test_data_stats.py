"""Channel stats against a float64 numpy reference; the cache and where it lives."""

import stat

import numpy as np
import pytest
import torch
from builders import make_lab, write_image, write_lines
from PIL import Image

import retino_utils.data.stats as stats_module
from retino_utils.data import ChannelStats, channel_stats, dataset_cache_dir, normalization, read_split
from retino_utils.data.__main__ import main
from retino_utils.data.images import load_resized
from retino_utils.errors import RetinoError



def reference(paths, image_size=None):
    """Both definitions in float64 numpy (torch for the reports' unbiased std), image by image."""
    decoded = [load_resized(p, image_size) if image_size else np.asarray(Image.open(p).convert("RGB")) for p in paths]
    images = [img.astype(np.float64) / 255 for img in decoded]
    means = np.mean([img.mean(axis=(0, 1)) for img in images], axis=0)
    stds = np.mean([torch.from_numpy(img.reshape(-1, 3).T.copy()).std(1).numpy() for img in images], axis=0)
    pixels = np.concatenate([img.reshape(-1, 3) for img in images])
    return means, stds, pixels.mean(axis=0), pixels.std(axis=0)


def varied_lab(root):
    """A lab folder whose images have different sizes, so the two definitions differ."""
    make_lab(root, n_train=6)
    for i, size in enumerate([(24, 20), (40, 12), (9, 31), (64, 64), (17, 17), (30, 22)]):
        write_image(root / f"{100 + i}_left.png", name=f"v{i}", size=size)
    names = [f"{100 + i}_left.png" for i in range(6)]
    write_lines(root / "train_img.csv", names)
    return read_split(root, "train")


@pytest.mark.parametrize("image_size", [None, 16])
def test_both_definitions_match_the_reference(tmp_path, image_size):
    index = varied_lab(tmp_path)
    stats = channel_stats(index, image_size, progress=False)
    mean, std, pooled_mean, pooled_std = reference(index.paths, image_size)
    assert stats.n_images == 6 and stats.image_size == image_size
    np.testing.assert_allclose(stats.mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.std, std, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.pooled_mean, pooled_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.pooled_std, pooled_std, rtol=0, atol=1e-12)
    if image_size is None:
        assert not np.allclose(stats.mean, stats.pooled_mean, atol=1e-4)  # unequal sizes weigh differently


def test_pool_gives_the_same_stats(tmp_path):
    make_lab(tmp_path, n_train=40, size=(8, 6))
    index = read_split(tmp_path, "train")
    assert channel_stats(index, cache=False, workers=2) == channel_stats(index, cache=False, workers=1)


def test_cached_result_is_reused_and_invalidated_when_files_change(tmp_path, monkeypatch):
    index = varied_lab(tmp_path)
    first = channel_stats(index, progress=False)

    def must_not_decode(*args):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(stats_module, "image_sums", must_not_decode)
        assert channel_stats(read_split(tmp_path, "train"), progress=False) == first
    def cached():
        return list((tmp_path / ".retino-cache").glob("stats-lab-train-native-*.json"))

    assert len(cached()) == 1
    names = (tmp_path / "train_img.csv").read_text().splitlines()
    write_lines(tmp_path / "train_img.csv", names[:-1])
    write_lines(tmp_path / "train_label.csv", (tmp_path / "train_label.csv").read_text().splitlines()[:-1])
    smaller = read_split(tmp_path, "train")
    second = channel_stats(smaller, progress=False)
    assert second.n_images == 5
    np.testing.assert_allclose(second.pooled_mean, reference(smaller.paths)[2], atol=1e-12)
    assert len(cached()) == 2  # another entry list: its own result, beside the first
    write_image(smaller.paths[0], name="edited", size=(24, 20))
    third = channel_stats(read_split(tmp_path, "train"), progress=False)
    np.testing.assert_allclose(third.pooled_mean, reference(smaller.paths)[2], atol=1e-12)
    assert third != second and len(cached()) == 2  # same entries, edited file: the old result replaced


def test_read_only_data_folder_is_left_alone(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_lab(data)
    index = read_split(data, "train")
    data.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        channel_stats(index, progress=False)
        folder = dataset_cache_dir(data)
    finally:
        data.chmod(0o755)
    assert not (data / ".retino-cache").exists()
    assert folder.parent == tmp_path / "retino-cache"
    assert list(folder.glob("stats-lab-train-native-*.json"))


def test_cli_prints_both_definitions(tmp_path, capsys):
    make_lab(tmp_path)
    assert main(["stats", str(tmp_path), "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "reports' definition" in out and "pooled over all pixels" in out and "at 16 px" in out


def test_normalization_presets_and_stats():
    assert normalization("imagenet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalization("report") == ((0.3749, 0.2602, 0.1857), (0.2526, 0.1780, 0.1291))
    stats = ChannelStats((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), (0, 0, 0), (1, 1, 1), 3)
    assert normalization(stats) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert normalization([(0.5,) * 3, (0.25,) * 3]) == ((0.5,) * 3, (0.25,) * 3)
    with pytest.raises(RetinoError, match="unknown normalization 'dataset'"):
        normalization("dataset")
    with pytest.raises(RetinoError, match="positive"):
        normalization(((0, 0, 0), (1, 0, 1)))


def test_empty_split_is_refused(tmp_path):
    make_lab(tmp_path)
    with pytest.raises(RetinoError, match="empty"):
        channel_stats(read_split(tmp_path, "train").subset([]))

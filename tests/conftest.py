import pytest

from retino_utils.paths import SHARED_DATA_DIR


# Fixtures that train a run or render a data set (once per session or module): a test that uses one is heavy.
HEAVY_FIXTURES = {"trained", "lever_run", "finished", "second_camera", "small_dataset"}


def pytest_collection_modifyitems(items):
    """``heavy``: the tests `make test-fast` leaves out (see `make test-fast` at the top of the README)."""
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Derived files of read-only folders go to a per-test folder, and progress bars stay quiet."""
    monkeypatch.setenv("RETINO_CACHE", str(tmp_path / "retino-cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` beside the project; tests that need it skip where it is absent."""
    if not (SHARED_DATA_DIR / "eyepacs-dev").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR


def write_lab_dataset(root, n_train=40, n_test=20, size=32, seed=0):
    """A tiny lab-layout dataset whose grade shows in the image colour, so a model can learn it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 5
        rng.shuffle(labels)
        names = [f"{split}{i:04d}_{'left' if i % 2 else 'right'}" for i in range(n)]
        for name, grade in zip(names, labels):
            pixels = rng.integers(0, 60, (size, size, 3))
            pixels[..., 0] += 40 * grade
            Image.fromarray(pixels.astype("uint8")).save(root / "images" / f"{name}.jpeg", quality=95)
        (root / f"{split}_img.csv").write_text("\n".join(names) + "\n")
        (root / f"{split}_label.csv").write_text("\n".join(map(str, labels)) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return write_lab_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_dataset):
    """A finished two-epoch run on ``tiny_dataset`` (with a validation split, so thresholds and calibration);
    tests that change a run copy it first."""
    from retino_utils.train.cli import fit
    from retino_utils.train.config import TrainConfig

    out = tmp_path_factory.mktemp("run") / "run"
    fit(TrainConfig(data=str(tiny_dataset), out=str(out), epochs=2, batch_size=8, image_size=32, device="cpu",
                    progress=False, bootstrap=200, lr=0.01, val_fraction=0.25))
    return out

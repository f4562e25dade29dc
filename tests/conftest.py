import pytest

from retino_utils.paths import SHARED_DATA_DIR


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` beside the project; tests that need it skip where it is absent."""
    if not (SHARED_DATA_DIR / "eyepacs-dev").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR

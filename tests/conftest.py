import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAGMVAE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data of ../shared/data (override with METAGMVAE_SHARED_DATA)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set METAGMVAE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def omniglot_zips(shared_data) -> list:
    zips = sorted((shared_data / "omniglot").glob("images_background_small*.zip"))
    if not zips:
        pytest.skip(f"no Omniglot sample zips under {shared_data / 'omniglot'}")
    return zips


@pytest.fixture(scope="session")
def omniglot_sample(omniglot_zips, tmp_path_factory) -> Path:
    """train/val/test.npy built from the real sample zips (seed 0): 716 / 60 / 192 classes."""
    from data.prepare_omniglot import build_omniglot

    out = tmp_path_factory.mktemp("omniglot_sample")
    build_omniglot(omniglot_zips, out, seed=0)
    return out

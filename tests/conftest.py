import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real data sets beside the project (KDPIPE_SHARED_DATA, default ../shared/data)."""
    root = Path(os.environ.get("KDPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} is absent (set KDPIPE_SHARED_DATA)")
    return root

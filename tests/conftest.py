import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Real images beside the checkout (../shared/data); users won't have them, so tests that need them skip.
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / 'Set5').is_dir():
        pytest.skip('../shared/data is not present')
    return SHARED_DATA

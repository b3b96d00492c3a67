import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Real images beside the checkout (../shared/data); users won't have them, so tests that need them skip.
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    """The demo lists (scikit-image's photos), written once per test module."""
    from create_data_lists import create_demo_lists
    folder = tmp_path_factory.mktemp('data')
    with contextlib.redirect_stdout(io.StringIO()):
        create_demo_lists(str(folder))
    return folder


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / 'Set5').is_dir():
        pytest.skip('../shared/data is not present')
    return SHARED_DATA


class SmallMemory(torch.nn.Module):
    """`model` on a device that runs out of memory as CUDA does on inputs of more than `max_pixels` pixels."""

    def __init__(self, model, max_pixels):
        super().__init__()
        self.model, self.max_pixels = model, max_pixels

    def forward(self, x):
        if x.shape[-1] * x.shape[-2] > self.max_pixels:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
        return self.model(x)

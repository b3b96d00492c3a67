"""hubconf.py: the shipped SRResNets through torch.hub, offline, exactly as the README shows it."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from utils import UserError


def test_torch_hub_lists_and_loads_the_shipped_srresnet_offline():
    import hubconf  # torch.hub.list reads GitHub only; its rule for what an entry point is, applied here
    assert [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith('_')] == [
        'srresnet', 'upscaler']
    model = torch.hub.load(str(REPO), 'srresnet', scale=4, source='local')
    assert not model.training and sum(p.numel() for p in model.parameters()) == 1_549_462
    with torch.no_grad():
        sr_imgs = model(torch.zeros(1, 3, 12, 10))  # (N, 3, h, w) ImageNet-normalised
    assert sr_imgs.shape == (1, 3, 48, 40) and sr_imgs.abs().max() <= 1  # in [-1, 1]
    shipped = torch.load(REPO / 'weights' / 'srresnet_x4.pt', weights_only=True)['model']
    assert all(torch.equal(model.state_dict()[k], v) for k, v in shipped.items())


@pytest.mark.parametrize('scale', [2, 8])
def test_every_shipped_scale_upscales_a_pil_image(scale):
    upscale = torch.hub.load(str(REPO), 'upscaler', scale=scale, source='local')
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    big = upscale(photo)
    assert big.mode == 'RGB' and big.size == (24 * scale, 20 * scale) and upscale.scaling_factor == scale
    assert upscale(photo.convert('L')).mode == 'L'


@pytest.mark.parametrize('scale', [3, '4', True])
def test_a_scale_that_was_not_shipped_is_one_clear_error(scale):
    with pytest.raises(UserError, match=r'upscale by 2, 4, 8 \(an int\)'):
        torch.hub.load(str(REPO), 'srresnet', scale=scale, source='local')

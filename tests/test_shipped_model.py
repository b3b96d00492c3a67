"""The SRResNet x4 shipped in weights/: what its model card (weights/srresnet_x4.md) says it is and scores."""

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
import super_resolve
import metrics
import utils
from checkpoints import load_checkpoint
from inference import Upscaler, load_generator
from conftest import REPO

WEIGHTS = REPO / 'weights' / 'srresnet_x4.pt'
# eval.py's paper protocol (MATLAB LR), fp32, untiled up to 512 px: weights/srresnet_x4.md's table
CARD = {'Set5': (31.535, 0.8840), 'Set14': (28.073, 0.7691)}


def test_the_shipped_weights_are_an_fp32_srresnet_x4_state_dict():
    checkpoint = load_checkpoint(WEIGHTS)  # weights_only: nothing in the file can run code
    assert checkpoint['kind'] == 'srresnet' and checkpoint['model_config']['scaling_factor'] == 4
    assert set(checkpoint) == {'kind', 'model_config', 'model', 'iteration', 'best_psnr', 'config'}  # no optimizer
    assert all(v.dtype == torch.float32 for k, v in checkpoint['model'].items() if 'num_batches' not in k)
    assert sum(v.numel() for k, v in checkpoint['model'].items() if 'running' not in k and 'num_batches' not in k) \
        == 1_549_462
    assert checkpoint['config']['data_folder'] == 'data/291'  # trained on T91 + BSD200, never on a test set
    assert WEIGHTS.stat().st_size < 7_000_000


@pytest.mark.parametrize('dataset', ['Set5', 'Set14'])
def test_the_shipped_model_scores_what_its_card_says(shared_data, dataset):
    model = eval_py.Model('shipped', 'srresnet', 4, Upscaler.for_model(load_generator(WEIGHTS)))
    paths = sorted(str(p) for p in (shared_data / dataset).glob('*.png'))
    rows = eval_py.evaluate([model], [(dataset, paths)], 'paper', 'matlab')
    psnr, ssim = np.mean([r['psnr'] for r in rows]), np.mean([r['ssim'] for r in rows])
    assert psnr == pytest.approx(CARD[dataset][0], abs=0.01)
    assert ssim == pytest.approx(CARD[dataset][1], abs=0.0001)


def test_super_resolve_uses_the_shipped_model_by_default(tmp_path):
    """No --model: the shipped SRResNet, and it beats bicubic on a natural photo that is no training image."""
    from skimage import data
    hr = Image.fromarray(data.chelsea()).crop((0, 0, 256, 192))  # a demo photo of the scikit-image wheel
    lr = utils.downsample(hr, 4)  # (64, 48), Pillow bicubic as in training
    lr.save(tmp_path / 'cat.png')
    super_resolve.main([str(tmp_path / 'cat.png'), '-o', str(tmp_path / 'out')])
    sr = Image.open(tmp_path / 'out' / 'cat_x4.png')
    assert sr.size == hr.size and sr.mode == 'RGB'
    bicubic = lr.resize(hr.size, Image.BICUBIC)

    def psnr(img):
        return metrics.evaluate_image(utils.convert_image(img, 'pil', '[-1, 1]'),
                                    utils.convert_image(hr, 'pil', '[-1, 1]'), 4)[0].item()
    assert psnr(sr) > psnr(bicubic) + 0.5

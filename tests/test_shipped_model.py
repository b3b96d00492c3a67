"""The SRResNets shipped in weights/ (x2, x4, x8): what their model cards
(weights/srresnet_x<scale>.md) say they are and score."""

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
import super_resolve
import metrics
import utils
from checkpoints import load_checkpoint
from degradations import PRESETS
from inference import Upscaler, load_generator, shipped_model

# eval.py's paper protocol (MATLAB LR), fp32, untiled up to 512 px, PSNR / SSIM: the tables of the model cards
CARDS = {2: {'Set5': (37.166, 0.9559), 'Set14': (32.828, 0.9101)},
         4: {'Set5': (31.535, 0.8840), 'Set14': (28.073, 0.7691)},
         8: {'Set5': (26.490, 0.7521), 'Set14': (24.476, 0.6218)}}
SHIPPED = sorted(CARDS)
# the paper's SRResNet with one x2 sub-pixel block (64 -> 256 channels, 3x3, and its PReLU) per doubling
PARAMETERS = {s: 1_549_462 + (int(np.log2(s)) - 2) * (64 * 256 * 9 + 256 + 1) for s in (2, 4, 8)}  # x8: 1,697,175


@pytest.mark.parametrize('scale', SHIPPED)
def test_each_shipped_file_is_an_fp32_srresnet_state_dict_of_its_scale(scale):
    checkpoint = load_checkpoint(shipped_model(scale))  # weights_only: nothing in the file can run code
    assert checkpoint['kind'] == 'srresnet' and checkpoint['model_config']['scaling_factor'] == scale
    assert set(checkpoint) == {'kind', 'model_config', 'model', 'iteration', 'best_psnr', 'config'}  # no optimizer
    assert all(v.dtype == torch.float32 for k, v in checkpoint['model'].items() if 'num_batches' not in k)
    assert sum(v.numel() for k, v in checkpoint['model'].items() if 'running' not in k and 'num_batches' not in k) \
        == PARAMETERS[scale]
    assert checkpoint['config']['data_folder'].endswith('291')  # T91 + BSD200 (data/291, runs/data291), no test set
    if scale == 2:  # chosen on training images held out, not on Set5 (issue 30)
        assert checkpoint['config']['val_set'] == 'val'
    assert shipped_model(scale).stat().st_size < 7_500_000
    model = load_generator(shipped_model(scale))
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8 * scale, 8 * scale)


@pytest.mark.parametrize('scale', SHIPPED)
@pytest.mark.parametrize('dataset', ['Set5', 'Set14'])
def test_each_shipped_model_scores_what_its_card_says(shared_data, dataset, scale):
    model = eval_py.Model('shipped', 'srresnet', scale, Upscaler.for_model(load_generator(shipped_model(scale))))
    paths = sorted(str(p) for p in (shared_data / dataset).glob('*.png'))
    rows = eval_py.evaluate([model], [(dataset, paths)], eval_py.TestPairs('paper', 'matlab'))
    psnr, ssim = np.mean([r['psnr'] for r in rows]), np.mean([r['ssim'] for r in rows])
    assert psnr == pytest.approx(CARDS[scale][dataset][0], abs=0.01)
    assert ssim == pytest.approx(CARDS[scale][dataset][1], abs=0.0001)
    card = shipped_model(scale).with_suffix('.md').read_text()
    assert f'{CARDS[scale][dataset][0]:.2f}' in card  # the card shows the number the test checks


@pytest.mark.parametrize('scale, flags', [(4, []), (2, ['--scale', '2'])], ids=['no flag: x4', '--scale 2'])
def test_super_resolve_without_a_model_uses_the_shipped_one_and_beats_bicubic(tmp_path, scale, flags):
    """No --model: the shipped SRResNet of --scale (x4 without it), better than bicubic on a natural photo that is no
    training image."""
    from skimage import data
    hr = Image.fromarray(data.chelsea()).crop((0, 0, 256, 192))  # a demo photo of the scikit-image wheel
    lr = utils.downsample(hr, scale)  # Pillow bicubic as in training
    lr.save(tmp_path / 'cat.png')
    super_resolve.main([str(tmp_path / 'cat.png'), *flags, '-o', str(tmp_path / 'out')])
    sr = Image.open(tmp_path / 'out' / f'cat_x{scale}.png')
    assert sr.size == hr.size == (scale * lr.width, scale * lr.height) and sr.mode == 'RGB'
    bicubic = lr.resize(hr.size, Image.BICUBIC)

    def psnr(img):
        return metrics.evaluate_image(utils.convert_image(img, 'pil', '[-1, 1]'),
                                      utils.convert_image(hr, 'pil', '[-1, 1]'), scale)[0].item()
    assert psnr(sr) > psnr(bicubic) + 0.5


# the real-input x4 (weights/srresnet_x4_real.md): Set14, eval.py's paper protocol, the LR degraded by --degrade
REAL_CARD = {'none': (27.83, 0.7551), 'jpeg:75': (26.44, 0.6950)}


def test_the_real_input_model_is_an_x4_of_the_291_and_scores_what_its_card_says(shared_data):
    path = shipped_model(4, real=True)
    checkpoint = load_checkpoint(path)
    assert checkpoint['kind'] == 'srresnet' and checkpoint['model_config']['scaling_factor'] == 4
    assert set(checkpoint) == {'kind', 'model_config', 'model', 'iteration', 'best_psnr', 'config'}
    assert checkpoint['config']['degrade'] == PRESETS['real'] and checkpoint['config']['val_set'] == 'val'
    assert checkpoint['config']['data_folder'].endswith('data291')  # T91 + BSD200, 10 held out to validate
    model = eval_py.Model('real', 'srresnet', 4, Upscaler.for_model(load_generator(path)))
    paths = sorted(str(p) for p in (shared_data / 'Set14').glob('*.png'))
    card = path.with_suffix('.md').read_text()
    for degrade, (psnr, ssim) in REAL_CARD.items():
        rows = eval_py.evaluate([model], [('Set14', paths)], eval_py.TestPairs('paper', 'matlab', degrade))
        assert np.mean([r['psnr'] for r in rows]) == pytest.approx(psnr, abs=0.005)
        assert np.mean([r['ssim'] for r in rows]) == pytest.approx(ssim, abs=0.0001)
        assert f'{psnr:.2f}' in card

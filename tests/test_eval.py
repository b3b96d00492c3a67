"""eval.py and the evaluation protocol (metrics.py): metrics pinned to independent values, MATLAB's imresize checked
by hand, the literature's bicubic baseline on Set5, the protocols' test images and numbers, tiled inference and the
command line."""

import csv
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
import metrics
import report
import utils
from checkpoints import save_checkpoint
from inference import Upscaler, load_generator
from models import SRResNet
from outputs import OutputPlan, WriteError
from utils import UserError
from conftest import REPO, SmallMemory, cli, save_srresnet


def _photo(height, width, seed=0):
    """A smooth colour image with texture, (3, H, W) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 7.0), 128 + 100 * np.cos(y / 5.0), 128 + 60 * np.sin((x + y) / 9.0)])
    return torch.from_numpy(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def _to_pm1(img_uint8):  # (3, H, W) uint8 -> [-1, 1] float64
    return img_uint8.double() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------------------------
# Metrics against independent values

def test_y_of_pure_colours_as_matlab_rgb2ycbcr_gives_for_uint8():
    colours = {(255, 255, 255): 235, (0, 0, 0): 16, (255, 0, 0): 81.481, (0, 255, 0): 144.553, (0, 0, 255): 40.966,
               (128, 128, 128): 16 + 219 * 128 / 255}  # BT.601: 16 + (65.481 R + 128.553 G + 24.966 B) / 255
    imgs = torch.tensor(list(colours), dtype=torch.float64).view(-1, 3, 1, 1) / 127.5 - 1  # (6, 3, 1, 1) in [-1, 1]
    expected = torch.tensor(list(colours.values()), dtype=torch.float64)
    torch.testing.assert_close(utils.convert_image(imgs, '[-1, 1]', 'y-channel').flatten(), expected)
    assert metrics.y_channel_8bit(imgs).flatten().tolist() == [235, 16, 81, 145, 41, 126]  # uint8 rgb2ycbcr rounds
    # a single-channel file is measured on its gray values, the full 0-255 range
    grays = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, 3, 1, 1)
    assert metrics.y_channel_8bit(grays / 127.5 - 1, gray=True).flatten().tolist() == [0, 1, 127, 128, 254, 255]


def test_psnr_of_a_known_mse():
    hr = torch.full((2, 20, 30), 100.0)
    sr = hr.clone()
    sr[0] += 10.0  # MSE 100 -> 10 log10(255^2 / 100) = 28.1308 dB
    sr[1, ::2] += 5.0  # half the pixels off by 5: MSE 12.5
    expected = [20 * math.log10(255) - 20, 10 * math.log10(255 ** 2 / 12.5)]
    assert metrics.calculate_psnr(sr, hr).tolist() == pytest.approx(expected, abs=1e-9)
    assert expected[0] == pytest.approx(28.1308, abs=1e-4)
    assert metrics.calculate_psnr(torch.zeros(4, 4), torch.zeros(4, 4)).item() == math.inf


def test_ssim_of_identical_images_is_one():
    img = _photo(40, 50)[0].double()
    assert metrics.calculate_ssim(img, img).item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_constant_images_is_the_closed_form():
    # no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2
    a, b, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    ssim = metrics.calculate_ssim(torch.full((16, 16), a), torch.full((16, 16), b))
    assert ssim.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)  # 0.98368...


def test_ssim_of_one_window_against_a_hand_computation():
    # an 11x11 pair: a single 'valid' window, so SSIM is one formula of Gaussian-weighted moments
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (11, 11))
    y = np.clip(x + rng.normal(0, 20, (11, 11)), 0, 255)
    d = np.arange(11) - 5
    w = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert metrics.calculate_ssim(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(expected, abs=1e-12)


def test_ssim_agrees_with_scikit_image_gaussian_ssim():
    # skimage filters the whole image and then drops (11 - 1) / 2 pixels per side: the same 'valid' windows
    from skimage.metrics import structural_similarity
    hr = _photo(48, 64)[1].double()
    sr = (hr + torch.from_numpy(np.random.default_rng(2).normal(0, 8, hr.shape))).clamp(0, 255)
    expected = structural_similarity(hr.numpy(), sr.numpy(), data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert metrics.calculate_ssim(sr, hr).item() == pytest.approx(expected, abs=1e-9)
    batch = metrics.calculate_ssim(torch.stack([sr, hr]), torch.stack([hr, hr]))  # (N, H, W) -> (N,)
    assert batch.shape == (2,) and batch[0].item() == pytest.approx(expected, abs=1e-9) and batch[1] == 1


# ---------------------------------------------------------------------------------------------------------------
# MATLAB's imresize

def _cubic(t):  # Keys, a = -0.5, written out again here
    t = abs(t)
    return 1.5 * t ** 3 - 2.5 * t ** 2 + 1 if t <= 1 else (-0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2 if t < 2 else 0)


def test_imresize_without_antialiasing_matches_octave():
    # Octave's image package (the same algorithm): imresize(reshape(0:15, 4, 4)', 0.5, 'bicubic', 'AntiAliasing',
    # false) = [2.1875 4.3125; 10.6875 12.8125]
    img = torch.arange(16, dtype=torch.float64).view(4, 4)
    out = metrics.imresize(img, 0.5, antialias=False)
    assert out.tolist() == [[2.1875, 4.3125], [10.6875, 12.8125]]


def test_imresize_downscale_of_an_impulse_gives_the_antialiased_kernel():
    # x1/2: output i samples u = 2 i - 0.5 with the kernel stretched x2: weight(d) = K(d / 2) / 2 (they sum to 1)
    img = torch.zeros(1, 16, dtype=torch.float64)
    img[0, 7] = 1.0  # 1-based column 8
    out = metrics.imresize(img, 0.5)[0]
    expected = [_cubic((2 * i - 0.5 - 8) / 2) / 2 for i in range(1, 9)]
    assert expected[2:6] == [-0.03515625, 0.43359375, 0.11328125, -0.01171875]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_imresize_upscale_of_an_impulse_gives_the_cubic_kernel():
    # x4: output i samples u = i / 4 + 0.375; an impulse at column 5 gives K(u - 5)
    img = torch.zeros(1, 10, dtype=torch.float64)
    img[0, 4] = 1.0
    out = metrics.imresize(img, 4)[0]
    assert out.shape == (40,)
    assert out[17].item() == out[18].item() == pytest.approx(0.9638671875, abs=1e-12)  # u = 4.875, 5.125
    assert out[19].item() == pytest.approx(0.7275390625, abs=1e-12)  # u = 5.375
    expected = [_cubic(i / 4 + 0.375 - 5) for i in range(1, 41)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_imresize_keeps_constants_and_interior_ramps_and_mirrors_the_edges():
    constant = torch.full((2, 3, 12, 20), 77.0, dtype=torch.float64)
    for scale in (0.25, 0.5, 2, 4):
        resized = metrics.imresize(constant, scale)
        torch.testing.assert_close(resized, torch.full_like(resized, 77.0))
    # bicubic reproduces straight lines: away from the edges, output i holds the value at u = i / s + (1 - 1 / s) / 2
    ramp = torch.arange(1, 65, dtype=torch.float64).view(1, 64)  # value = 1-based position
    for scale in (0.25, 4):
        out = metrics.imresize(ramp, scale)[0]
        u = torch.arange(1, out.numel() + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
        interior = slice(int(8 * scale) + 2, -int(8 * scale) - 2)
        torch.testing.assert_close(out[interior], u[interior], rtol=0, atol=1e-9)
    # at the edges MATLAB mirrors (... 2 1 | 1 2 ...): x1/2 of [1 .. 8], first output from u = 1.5
    w = [_cubic(d / 2) / 2 for d in (-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5)]  # input positions -2 .. 5
    values = [3, 2, 1, 1, 2, 3, 4, 5]  # positions -2, -1, 0 mirror onto 3, 2, 1
    out = metrics.imresize(torch.arange(1, 9, dtype=torch.float64).view(1, 8), 0.5)[0]
    assert out[0].item() == pytest.approx(sum(a * b for a, b in zip(w, values)), abs=1e-12)


def test_imresize_is_batched_and_sized_as_matlab():
    imgs = torch.rand(2, 3, 18, 13, dtype=torch.float64) * 255
    out = metrics.imresize(imgs, 0.25)
    assert out.shape == (2, 3, 5, 4)  # ceil(18 / 4), ceil(13 / 4)
    torch.testing.assert_close(out[1, 2], metrics.imresize(imgs[1, 2], 0.25))
    assert metrics.imresize(imgs.float(), 4).dtype == torch.float32
    # x1/4 of an image made of 4x4 blocks: each output mixes its own block (84.6 %) with the two rings of blocks
    # around it, weights summed from the stretched kernel by hand: block k away holds offsets 4k - 1.5 +- 0.5, +- 1.5
    taps = {k: sum(_cubic((4 * k + d) / 4) / 4 for d in (-1.5, -0.5, 0.5, 1.5)) for k in (-2, -1, 0, 1, 2)}
    total = sum(taps.values())
    assert taps[0] / total == pytest.approx(0.8457, abs=1e-4)
    block_values = torch.rand(9, 9, dtype=torch.float64) * 255
    small = metrics.imresize(block_values.repeat_interleave(4, 0).repeat_interleave(4, 1), 0.25)  # (9, 9)
    ring = torch.tensor([taps[k] / total for k in (-2, -1, 0, 1, 2)], dtype=torch.float64)
    expected = ring @ block_values.unfold(0, 5, 1).unfold(1, 5, 1) @ ring  # blocks 2 .. 6: two rings inside
    torch.testing.assert_close(small[2:7, 2:7], expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# Protocols

def test_paper_protocol_rounds_and_clamps_sr_and_removes_the_border():
    hr = _to_pm1(_photo(32, 40))
    sr = hr + 0.4 / 127.5  # +0.4 levels: rounds back to the HR
    assert (hr == 1).any()
    sr[hr == 1] = 1.3  # beyond white: clamped
    psnr, ssim = metrics.evaluate_image(sr, hr, 4)
    assert psnr.item() == math.inf and ssim.item() == 1
    framed = hr.clone()
    framed[:, :4] = framed[:, -4:] = framed[:, :, :4] = framed[:, :, -4:] = -1  # only the 4-px border differs
    assert metrics.evaluate_image(framed, hr, 4)[0].item() == math.inf
    assert metrics.evaluate_image(framed, hr, 2)[0].item() < 30
    # batches give one value per image
    psnr, ssim = metrics.evaluate_image(torch.stack([hr, framed]), torch.stack([hr, hr]), 2)
    assert psnr.shape == ssim.shape == (2,) and psnr[0] == math.inf and psnr[1] < 30


def test_gray_files_are_measured_on_their_gray_values():
    hr = torch.full((3, 30, 30), 100.0, dtype=torch.float64)
    sr = hr + 10
    psnr, _ = metrics.evaluate_image(sr / 127.5 - 1, hr / 127.5 - 1, 2, gray=True)
    assert psnr.item() == pytest.approx(20 * math.log10(255) - 20, abs=1e-9)  # MSE 100
    psnr_rgb, _ = metrics.evaluate_image(sr / 127.5 - 1, hr / 127.5 - 1, 2)  # as RGB: 8-bit Y 101.88 -> 102 and
    assert psnr_rgb.item() == pytest.approx(20 * math.log10(255 / 8), abs=1e-9)  # 110.47 -> 110, 8 levels apart


def test_tutorial_protocol_is_float_y_with_a_4_pixel_crop_and_scikit_image_defaults():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    hr = _to_pm1(_photo(40, 48)).float()
    sr = hr + torch.from_numpy(np.random.default_rng(3).normal(0, 0.02, hr.shape)).float()  # float, beyond [-1, 1]
    psnr, ssim = metrics.evaluate_image(sr, hr, 2, protocol='tutorial')
    # the tutorial's convert_image: Y of the [0, 1] image, 4 px cropped on every side whatever the scale
    y = lambda img: (torch.tensordot(torch.tensor([65.481, 128.553, 24.966]), (img + 1) / 2, 1) + 16)[4:-4, 4:-4]
    expected = peak_signal_noise_ratio(y(hr).numpy(), y(sr).numpy(), data_range=255.)
    assert psnr.item() == pytest.approx(expected, abs=1e-4)
    assert ssim.item() == pytest.approx(structural_similarity(y(hr).numpy(), y(sr).numpy(), data_range=255.), abs=1e-5)
    assert psnr.item() != pytest.approx(metrics.evaluate_image(sr, hr, 2)[0].item(), abs=0.01)
    with pytest.raises(ValueError, match='protocol'):
        metrics.evaluate_image(sr, hr, 2, protocol='matlab')


def test_test_crops_top_left_for_the_paper_and_centred_for_the_tutorial():
    gray = np.arange(11 * 10, dtype=np.uint8).reshape(10, 11)  # 11 wide, 10 high
    img = Image.fromarray(np.stack([gray] * 3, axis=-1))
    (_, top_left), (_, centred) = (metrics.make_test_pair(img, 4, protocol) for protocol in ('paper', 'tutorial'))
    assert top_left.shape == centred.shape == (3, 8, 8)
    assert top_left[0, 0, 0] == 0 and centred[0, 0, 0] == 1 * 11 + 1  # offsets (3 // 2, 2 // 2)


# eval.py's numbers for bicubic on a 70x95 photo (every protocol, LR kernel and crop), measured before the protocol's
# settings moved from eval.py to metrics.py: (sha256 of the HR's bytes, first 16 digits, PSNR, SSIM)
BICUBIC_ON_A_PHOTO = {
    ('paper', 'matlab', 3): ('081c53ebc1c1a276', 31.86811742978184, 0.8577731140766912),
    ('paper', 'matlab', 4): ('c73ddcfe096dc345', 31.668478403847228, 0.8491314676961423),
    ('paper', 'pillow', 3): ('081c53ebc1c1a276', 31.865195738013806, 0.857847845158506),
    ('paper', 'pillow', 4): ('c73ddcfe096dc345', 31.65115554056978, 0.8488576906153609),
    ('tutorial', 'matlab', 3): ('c4341d7e9a42ad86', 31.92083293910633, 0.8966601293709802),
    ('tutorial', 'matlab', 4): ('ca4c5cfadc0b9696', 31.67753367908314, 0.8895198256060382),
    ('tutorial', 'pillow', 3): ('c4341d7e9a42ad86', 31.91941394152807, 0.8965861871684242),
    ('tutorial', 'pillow', 4): ('ca4c5cfadc0b9696', 31.670677253969608, 0.8894670463157403),
}


@pytest.mark.parametrize('protocol, lr_kernel, s', list(BICUBIC_ON_A_PHOTO))
def test_each_protocol_makes_the_same_test_images_and_numbers(protocol, lr_kernel, s, tmp_path):
    hr_digest, psnr, ssim = BICUBIC_ON_A_PHOTO[protocol, lr_kernel, s]
    img = Image.fromarray(_photo(70, 95).permute(1, 2, 0).numpy())
    lr_img, hr_img = metrics.make_test_pair(img, s, protocol, lr_kernel)  # (3, H / s, W / s), (3, H, W) uint8
    assert hashlib.sha256(hr_img.numpy().tobytes()).hexdigest()[:16] == hr_digest
    # the LR, made again here from the HR by the kernel named
    hr_pil = Image.fromarray(hr_img.permute(1, 2, 0).numpy())
    expected_lr = (np.asarray(hr_pil.resize((hr_pil.width // s, hr_pil.height // s), Image.BICUBIC))
                   if lr_kernel == 'pillow' else
                   metrics.imresize(hr_img.double(), 1 / s).clamp(0, 255).round().byte().permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(lr_img.permute(1, 2, 0).numpy(), expected_lr)
    sr_img = metrics.bicubic_upscale(lr_img, s, lr_kernel)
    numbers = metrics.evaluate_image(sr_img, _to_pm1(hr_img), s, protocol)
    assert [n.item() for n in numbers] == pytest.approx([psnr, ssim], abs=1e-6)
    # and eval.py's test images are these
    Image.fromarray(_photo(70, 95).permute(1, 2, 0).numpy()).save(tmp_path / 'photo.png')
    item = eval_py.TestImages([str(tmp_path / 'photo.png')], s, eval_py.TestPairs(protocol, lr_kernel))[0]
    assert torch.equal(item['lr_img'], lr_img) and torch.equal(item['hr_img'], hr_img)


def test_the_protocols_settings():
    paper, tutorial = metrics.PROTOCOLS['paper'], metrics.PROTOCOLS['tutorial']
    assert (paper.crop, paper.lr_kernel, paper.border_at(4), paper.border_at(2)) == ('top-left', 'matlab', 4, 2)
    assert (tutorial.crop, tutorial.lr_kernel, tutorial.border_at(2)) == ('centre', 'pillow', 4)
    assert paper.min_side(4) == 20 and paper.min_side(2) == 16 and tutorial.min_side(2) == 20  # 2 borders + 11


# ---------------------------------------------------------------------------------------------------------------
# Real data: the literature's bicubic baseline

def test_set5_bicubic_baseline_matches_the_literature(shared_data):
    paths = sorted(str(p) for p in (shared_data / 'Set5').glob('*.png'))
    assert len(paths) == 5
    bicubic = [eval_py.Model('bicubic', 'bicubic', 4)]
    for lr_kernel, expected in (('matlab', 28.42), ('pillow', 28.43)):  # literature (MATLAB); ../shared README
        rows = eval_py.evaluate(bicubic, [('Set5', paths)], eval_py.TestPairs('paper', lr_kernel))
        psnr, ssim = np.mean([r['psnr'] for r in rows]), np.mean([r['ssim'] for r in rows])
        assert psnr == pytest.approx(expected, abs=0.02), lr_kernel
        assert ssim == pytest.approx(0.8104, abs=0.002), lr_kernel  # the literature's 0.8104 (MATLAB ssim_index)


# ---------------------------------------------------------------------------------------------------------------
# Tiled inference and the command line

@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    return save_srresnet(tmp_path_factory.mktemp('model') / 'tiny.pt', n_channels=16, n_blocks=2, scaling_factor=4)


def test_tiled_inference_scores_as_untiled(tiny_checkpoint):
    model = load_generator(tiny_checkpoint)
    hr_img = _photo(160, 224)
    lr_img = metrics.make_lr(Image.fromarray(hr_img.permute(1, 2, 0).numpy()), 4, 'matlab')  # (3, 40, 56) uint8
    lr_input = utils.convert_image(lr_img.float() / 255, '[0, 1]', 'imagenet-norm')
    whole = Upscaler(model, 4, tile=None).tiled(lr_input)
    tiled = Upscaler(model, 4, tile=24, tile_overlap=8).tiled(lr_input)  # 6 tiles
    assert tiled.shape == whole.shape == (3, 160, 224)
    psnr_whole = metrics.evaluate_image(whole, _to_pm1(hr_img), 4)[0].item()
    psnr_tiled = metrics.evaluate_image(tiled, _to_pm1(hr_img), 4)[0].item()
    assert abs(psnr_tiled - psnr_whole) < 0.01
    # the PSNR of a random model hardly moves with seams; the pixels do. Mean abs difference on the 0-1 scale,
    # measured: 0.25/255 at overlap 8, 0.60/255 at 4, 1.38/255 with tiles pasted side by side (overlap 0)
    assert (tiled - whole).abs().mean().item() / 2 < 0.5 / 255


def test_command_line_on_the_demo_set(tiny_checkpoint, tmp_path):
    import skimage.data
    data_folder = tmp_path / 'data'
    data_folder.mkdir()
    skimage_folder = Path(skimage.data.__file__).parent
    with open(data_folder / 'demo_test_images.json', 'w') as f:
        json.dump([str(skimage_folder / 'astronaut.png'), str(skimage_folder / 'chelsea.png')], f)

    out = cli('eval.py', 'bicubic', tiny_checkpoint, '--data-folder', data_folder, '--workers', 0, '--device', 'cpu',
              '--tile', 64, '--csv', tmp_path / 'rows.csv', '--save-dir', tmp_path / 'sr').stdout
    assert 'Protocol paper' in out and 'MATLAB' in out
    table = [line for line in out.splitlines() if line.startswith('|')]
    assert table[0].startswith('| model | scale | demo PSNR / SSIM | s / image |')
    assert table[2].startswith('| bicubic | x4 | ') and table[3].startswith(f'| {tiny_checkpoint} (SRResNet) | x4 | ')
    assert len(table) == 4  # no published numbers for the demo set
    with open(tmp_path / 'rows.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['model'], r['image']) for r in rows] == [('bicubic', 'astronaut'), (str(tiny_checkpoint), 'astronaut'),
                                                         ('bicubic', 'chelsea'), (str(tiny_checkpoint), 'chelsea')]
    bicubic_psnr = np.mean([float(r['psnr']) for r in rows if r['model'] == 'bicubic'])
    assert f'| bicubic | x4 | {bicubic_psnr:.2f} / ' in out
    assert 20 < bicubic_psnr < 40 and all(r['protocol'] == 'paper' and float(r['seconds']) > 0 for r in rows)
    saved = Image.open(tmp_path / 'sr' / 'bicubic' / 'demo' / 'chelsea.png')
    assert saved.size == (448, 300)  # chelsea is 451x300, cropped to a multiple of 4
    assert len(list((tmp_path / 'sr').glob('*/demo/*.png'))) == 4


def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / 'x.png').write_bytes(b'')
    for args, message in ((['missing.pt', '--test-folders', str(tmp_path)], 'missing.pt: no such checkpoint'),
                          (['bicubic', '--test-sets', 'Set5', '--data-folder', str(tmp_path)], 'Set5_test_images.json'),
                          (['bicubic', '--test-folders', str(tmp_path), '--workers', '0'], '1 image skipped')):
        monkeypatch.setattr(sys, 'argv', ['eval.py', *args])
        with pytest.raises(UserError) as raised:  # run_main prints it as one 'error: ' line, status 1
            eval_py.main()
        assert message in str(raised.value) and '\n' not in str(raised.value)


def test_a_fresh_checkout_evaluates_the_demo_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['eval.py', 'bicubic', '--data-folder', str(tmp_path / 'none'), '--workers', '0',
                                      '--csv', str(tmp_path / 'rows.csv')])
    eval_py.main()
    out, err = capsys.readouterr()
    assert '| bicubic | x4 | ' in out and 'demo PSNR / SSIM' in out
    assert 'the demo set' in err  # a note: stderr, so that `python eval.py > table.md` holds the results alone
    assert_results_alone(out, [f'per-image results: {tmp_path / "rows.csv"}'])


def assert_results_alone(stdout, written=()):
    """stdout holds the table's caption (protocol, LR images), the table, and the files written: no notes."""
    for line in stdout.splitlines():
        assert (not line or line.startswith(('Protocol ', 'LR images: ', '|')) or line in written), line


def test_eval_goes_through_the_upscaler_and_retries_out_of_memory(tiny_checkpoint, tmp_path, capsys):
    network = load_generator(tiny_checkpoint)

    Image.fromarray(_photo(256, 320).permute(1, 2, 0).numpy()).save(tmp_path / 'a.png')  # LR 64 x 80
    test_sets = [('t', [str(tmp_path / 'a.png')])]
    small = Upscaler(SmallMemory(network, 48 * 48), 4, tile=None, tile_overlap=16)
    rows = eval_py.evaluate([eval_py.Model('small', 'srresnet', 4, small)], test_sets)
    assert 'out of memory; trying again with --tile 40' in capsys.readouterr().err
    tiled = Upscaler(network, 4, tile=40, tile_overlap=16)
    expected = eval_py.evaluate([eval_py.Model('tiled', 'srresnet', 4, tiled)], test_sets)
    assert rows[0]['psnr'] == pytest.approx(expected[0]['psnr'], abs=1e-9)  # the same tiles as --tile 40


def test_unwritable_csv_and_save_dir_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / 'a_file').write_text('')
    (tmp_path / 'folder.csv').mkdir()
    a_file = tmp_path / 'a_file'
    for args, message in ((['--csv', str(tmp_path / 'rows')], 'cannot write a file without an extension here; '
                                                              'name it *.csv'),
                          (['--csv', str(tmp_path)], f'--csv {tmp_path} is a folder'),
                          (['--csv', str(tmp_path / 'folder.csv')], f'--csv {tmp_path / "folder.csv"} is a folder'),
                          (['--csv', str(a_file / 'rows.csv')], f'{a_file} is a file, where a folder is needed'),
                          (['--save-dir', str(a_file / 'sr')], f'{a_file} is a file, where a folder is needed'),
                          (['--html', str(a_file)], f'--html {a_file} is a file; name a folder')):
        monkeypatch.setattr(sys, 'argv', ['eval.py', 'bicubic', '--data-folder', str(tmp_path / 'none'), *args])
        with pytest.raises(UserError) as raised:  # before any image is evaluated
            eval_py.main()
        assert message in str(raised.value) and '\n' not in str(raised.value)
    plan = OutputPlan()
    plan.file(tmp_path / 'later' / 'rows.csv', '--csv')
    (tmp_path / 'later').write_text('a file where the folder was to be')
    with pytest.raises(WriteError, match='could not write .*rows.csv: .*later is a file'):  # should writing fail
        eval_py.write_csv([{'psnr': 1.0}], plan, tmp_path / 'later' / 'rows.csv')


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs are skipped and reported at the end; defaults from any folder; the published rows; stdout and stderr

def _save(img_uint8, path):
    """(3, H, W) uint8 -> an image file at `path`."""
    Image.fromarray(img_uint8.permute(1, 2, 0).numpy()).save(path)
    return path


def _run(monkeypatch, capsys, *args):
    """eval.py ARGS --workers 0, in this process -> (the error's message, None when it ended well; stdout; stderr).
    Anything but a UserError (a traceback) fails the test."""
    monkeypatch.setattr(sys, 'argv', ['eval.py', *map(str, args), '--workers', '0'])
    try:
        eval_py.main()
        code = None
    except UserError as e:
        code = str(e)
    out, err = capsys.readouterr()
    return code, out, err


def _bad_checkpoints(folder):
    """Checkpoints that cannot be loaded -> {path: what the error line says}."""
    torch.manual_seed(0)
    (folder / 'empty.pt').write_bytes(b'')
    (folder / 'notes.pt').write_text('not a checkpoint\n')
    torch.save({'epoch': 1, 'model': SRResNet(n_channels=8, n_blocks=1)}, folder / 'tutorial.pth.tar')  # pickled
    save_checkpoint({'kind': 'srgan', 'discriminator': {'w': torch.zeros(1)}}, folder / 'discriminator.pt')
    save_checkpoint({'kind': 'srresnet', 'model': {'conv.weight': torch.zeros(1)}}, folder / 'other_net.pt')
    return {folder / 'missing.pt': 'no such checkpoint file', folder / 'empty.pt': 'is an empty file (0 bytes)',
            folder / 'notes.pt': 'is a text file', folder / 'tutorial.pth.tar': '--unsafe-pickle',
            folder / 'discriminator.pt': 'no generator weights', folder / 'other_net.pt': 'not an SRResNet'}


def test_bad_images_and_models_are_skipped_and_reported_at_the_end(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'mine'
    folder.mkdir()
    good = [_save(_photo(40, 48, seed), folder / f'good{seed}.png') for seed in (1, 2)]
    bad_images = [folder / 'truncated.png', folder / 'text.png', folder / 'small.png', tmp_path / 'gone.png']
    bad_images[0].write_bytes(good[0].read_bytes()[:300])
    bad_images[1].write_text('not an image')
    _save(_photo(12, 16), bad_images[2])  # x4 measures 20 px a side at least: 4 px of border, an 11 px window
    (tmp_path / 'listed_test_images.json').write_text(json.dumps([str(good[1]), str(bad_images[3])]))  # gone.png
    bad_models = _bad_checkpoints(tmp_path)

    code, out, err = _run(monkeypatch, capsys, 'bicubic', *bad_models, tiny_checkpoint, '--test-sets', 'listed',
                          '--data-folder', tmp_path, '--test-folders', folder, '--csv', tmp_path / 'rows.csv')
    assert code == ('4 images and 6 models skipped; the table above leaves them out, and marks each mean '
                    'over fewer images "(n of N images)"')
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert len(errors) == 10 and 'Traceback' not in err
    for path, words in bad_models.items():
        (line,) = [line for line in errors if line.startswith(f'error: {path}')]
        assert words in line, line
    for path in bad_images:
        (line,) = [line for line in errors if line.startswith(f'error: {path}: ')]
        assert line.endswith(': replace it or remove it from the test set'), line

    with open(tmp_path / 'rows.csv') as f:
        rows = list(csv.DictReader(f))
    skipped = [(r['model'], r['dataset'], r['image']) for r in rows if r['skipped']]
    assert len(skipped) == 2 * 4 and all(r['psnr'] == r['ssim'] == '' for r in rows if r['skipped'])
    assert {r['model'] for r in rows} == {'bicubic', str(tiny_checkpoint)}
    table = [line for line in out.splitlines() if line.startswith('| ')][1:]  # the rows under the header
    assert len(table) == 2  # the models that loaded
    for line, model in zip(table, ('bicubic', str(tiny_checkpoint))):
        mine = [r for r in rows if r['model'] == model and not r['skipped']]
        listed = np.mean([float(r['psnr']) for r in mine if r['dataset'] == 'listed'])
        folder_mean = np.mean([float(r['psnr']) for r in mine if r['dataset'] == 'mine'])
        assert f' | {listed:.2f} / ' in line and f' (1 of 2 images) | {folder_mean:.2f} / ' in line, line
        assert line.count('(2 of 5 images)') == 1, line
    assert_results_alone(out, [f'per-image results: {tmp_path / "rows.csv"}'])


def test_when_no_model_loads_that_is_one_line(tmp_path, monkeypatch, capsys):
    _save(_photo(40, 48), tmp_path / 'a.png')
    missing, empty = tmp_path / 'missing.pt', tmp_path / 'empty.pt'
    empty.write_bytes(b'')
    code, out, err = _run(monkeypatch, capsys, missing, empty, '--test-folders', tmp_path)
    assert isinstance(code, str) and '\n' not in code
    assert code.startswith('none of the 2 models could be loaded: (1) ')
    assert f'{missing}: no such checkpoint file' in code and f'{empty} is an empty file (0 bytes)' in code
    assert out == '' and 'error' not in err


def test_a_broken_test_list_is_one_line(tmp_path, monkeypatch, capsys):
    for name, text in (('broken', '["a.png", '), ('numbers', '[1, 2]')):
        list_path = tmp_path / f'{name}_test_images.json'
        list_path.write_text(text)
        code, _, _ = _run(monkeypatch, capsys, 'bicubic', '--test-sets', name, '--data-folder', tmp_path)
        assert isinstance(code, str) and code.startswith(f'{list_path} ') and '\n' not in code
        assert code.endswith('rebuild the lists with create_data_lists.py (it skips files it cannot use)')


def test_default_models_are_the_repos_weights_and_the_runs_here_from_any_folder(tiny_checkpoint, tmp_path,
                                                                                monkeypatch, capsys):
    """Run from another folder, eval.py finds the weights shipped in the repo, and ./runs of the folder it runs in
    (the trainers' default --output-dir is relative to theirs too)."""
    shipped = REPO / 'weights' / 'srresnet_x4.pt'
    assert shipped.is_file()
    (tmp_path / 'runs' / 'srresnet').mkdir(parents=True)
    (tmp_path / 'runs' / 'srresnet' / 'best.pt').write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / 'images').mkdir()
    _save(_photo(40, 48), tmp_path / 'images' / 'a.png')
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(monkeypatch, capsys, '--test-folders', 'images', '--csv', 'rows.csv')
    assert code is None
    with open(tmp_path / 'rows.csv') as f:
        assert [r['model'] for r in csv.DictReader(f)] == ['bicubic', str(shipped), 'runs/srresnet/best.pt']
    assert f'| {shipped} (SRResNet) | x4 | ' in out and '| runs/srresnet/best.pt (SRResNet) | x4 | ' in out
    assert f'models: bicubic, {shipped}, runs/srresnet/best.pt (none named' in err  # a note: stderr
    assert_results_alone(out, ['per-image results: rows.csv'])


def test_no_published_rows_beside_a_folder_of_other_images_named_set5(tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'Set5'
    folder.mkdir()
    for seed, name in enumerate(('baby', 'bird', 'butterfly', 'head', 'woman')):  # Set5's names, other pixels
        _save(_photo(40, 48, seed), folder / f'{name}.png')
    code, out, err = _run(monkeypatch, capsys, 'bicubic', '--test-folders', folder)
    assert code is None and '| bicubic | x4 | ' in out and '| model | scale | Set5 PSNR / SSIM |' in out
    assert '(paper)' not in out and 'Ledig' not in out
    assert 'note: Set5 is not the standard Set5' in err


def test_the_standard_test_sets_are_recognised_by_their_pixels(shared_data, tmp_path, monkeypatch, capsys):
    for name in report.STANDARD_TEST_SETS:
        assert report.standard_set(name, sorted(str(p) for p in (shared_data / name).iterdir())) == name
    # whatever the folder's name, the files' names and format; pixels beyond a multiple of 4 are not measured
    copy = tmp_path / 'my copy'
    copy.mkdir()
    for i, path in enumerate(sorted((shared_data / 'Set5').glob('*.png'))):
        img = np.asarray(Image.open(path))
        if i == 0:
            img = np.concatenate([img, img[-1:]], axis=0)  # one more row: 513 x 512, cropped back to 512 at x4
        Image.fromarray(img).save(copy / f'{i}.bmp')
    paths = sorted(str(p) for p in copy.iterdir())
    assert report.standard_set('my copy', paths) == 'Set5'
    code, out, _ = _run(monkeypatch, capsys, 'bicubic', '--test-folders', copy)
    assert code is None and '| *bicubic (paper)* | x4 | 28.43 / 0.8211 | | Ledig et al. 2017, Table 2 |' in out
    # four of its images, or one pixel changed: not the set the published numbers were measured on
    assert report.standard_set('Set5', paths[1:]) is None
    img = np.asarray(Image.open(paths[1])).copy()
    img[10, 10] ^= 1
    Image.fromarray(img).save(paths[1])
    assert report.standard_set('Set5', paths) is None


def test_the_validation_list_is_not_a_test_set_unless_named(tmp_path):
    """eval.py measures every test list of the data folder by default, but not val_test_images.json: those are
    training images held out to choose best.pt (create_data_lists.py --val-images), not a benchmark."""
    for name in ('Set5', 'val', 'mine'):
        (tmp_path / f'{name}_test_images.json').write_text(json.dumps([f'{name}.png']))
    args = eval_py.parse_args(['bicubic', '--data-folder', str(tmp_path)])
    assert [name for name, _ in eval_py.test_sets_to_run(args)[0]] == ['Set5', 'mine']
    args = eval_py.parse_args(['bicubic', '--data-folder', str(tmp_path), '--test-sets', 'val'])
    assert [name for name, _ in eval_py.test_sets_to_run(args)[0]] == ['val']

"""Command-line flags beyond their defaults: eval.py, super_resolve.py, train_srresnet.py / train_srgan.py, a
graceful stop on SIGTERM / SIGINT, and the checkpoint conversion tool.

The scripts are driven through their command line only: in this process (conftest.cli), or in a new one where a
real process is the point (signals). Checks read what a user sees: files, checkpoints (torch.load(weights_only=True)),
the CSV and table eval.py writes, images; printed text only through short fragments."""

import csv
import json
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

import inference
import training
import utils
from conftest import REPO, SMALL, TINY, cli, save_srresnet, start_process, train_rows
from datasets import SRDataset
from models import Discriminator, Generator, SRResNet

# The checkpoint tool: `python CHECKPOINT_TOOL convert IN OUT`. When it moves, change this line.
CHECKPOINT_TOOL = 'checkpoints.py'

SHIPPED = 'weights/srresnet_x4.pt'  # relative to the repo root, as eval.py names it when it picks it by default
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what SRResNet's input is normalised by


# ---------------------------------------------------------------------------------------------------------------
# Helpers

def assert_one_error_line(result, *words):
    """The run failed with one `error:` line, the last on stderr, naming `words`; no traceback."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error:')]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert 'Traceback' not in result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def table_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith('|')]


def mean(rows, column='psnr'):
    return float(np.mean([float(row[column]) for row in rows]))


def png(path):
    return np.asarray(Image.open(path).convert('RGB')).astype(np.int64)


def tutorial_srresnet_pickle(path, seed=0):
    """An original-tutorial SRResNet checkpoint: the whole model object pickled. Returns the model."""
    torch.manual_seed(seed)
    model = SRResNet(n_blocks=1)
    torch.save({'epoch': 3, 'model': model}, path)
    return model


def convert(in_path, out_path):
    cli(CHECKPOINT_TOOL, 'convert', in_path, out_path)
    return load(out_path)


@pytest.fixture(scope='module')
def tutorial_pickle(tmp_path_factory):
    path = tmp_path_factory.mktemp('tutorial') / 'checkpoint_srresnet.pth.tar'
    model = tutorial_srresnet_pickle(path)
    return path, model


# ---------------------------------------------------------------------------------------------------------------
# eval.py

@pytest.fixture(scope='module')
def evaluate(tmp_path_factory):
    """eval.py ARGS --workers 0 --csv CSV --save-dir DIR, each distinct command run once in this module
    -> (result, the CSV's rows, DIR)."""
    folder = tmp_path_factory.mktemp('eval')
    runs = {}

    def run(*args):
        key = tuple(map(str, args))
        if key not in runs:
            csv_path, save_dir = folder / f'{len(runs)}.csv', folder / f'sr{len(runs)}'
            result = cli('eval.py', *args, '--workers', 0, '--csv', csv_path, '--save-dir', save_dir)
            with open(csv_path) as f:
                runs[key] = result, list(csv.DictReader(f)), save_dir
        return runs[key]
    return run


def copy_images(shared_data, folder, names):
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes((shared_data / 'Set5' / name).read_bytes())
    return folder


@pytest.fixture
def bird_set5(shared_data, tmp_path_factory):
    """A folder named Set5 that holds Set5's bird (288 x 288) alone: the standard name, one small image."""
    return copy_images(shared_data, tmp_path_factory.getbasetemp() / 'bird' / 'Set5', ['bird.png'])


@pytest.fixture
def two_images(shared_data, tmp_path_factory):
    """Set5's bird and head in a folder that is not named after a standard test set."""
    return copy_images(shared_data, tmp_path_factory.getbasetemp() / 'mine', ['bird.png', 'head.png'])


def rows_of(rows, model):
    return [row for row in rows if row['model'] == model or row['model'].endswith(f'/{model}')]


def test_eval_without_models_picks_bicubic_and_the_shipped_srresnet(bird_set5, evaluate):
    assert (REPO / SHIPPED).is_file()
    result, rows, _ = evaluate('--test-folders', bird_set5)
    shipped, bicubic = rows_of(rows, SHIPPED), rows_of(rows, 'bicubic')
    assert len(shipped) == len(bicubic) == 1
    assert shipped[0]['kind'] == 'srresnet' and shipped[0]['scale'] == bicubic[0]['scale'] == '4'
    assert float(shipped[0]['psnr']) > float(bicubic[0]['psnr']) + 2  # trained weights, not a random network
    lines = table_lines(result.stdout)
    assert any(f'{SHIPPED} (SRResNet) | x4 | ' in line for line in lines)
    assert any(line.startswith('| bicubic | x4 | ') for line in lines)


@pytest.fixture(scope='module')
def tiny_srresnet(tmp_path_factory):
    """An untrained SRResNet x4 small enough to run over Set5 in a moment."""
    return save_srresnet(tmp_path_factory.mktemp('tiny') / 'tiny.pt', n_channels=8, n_blocks=1, scaling_factor=4)


def test_eval_prints_the_published_rows_for_standard_test_sets(shared_data, bird_set5, two_images, tiny_srresnet,
                                                               evaluate):
    paper, _, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5')  # the real Set5, as in the next test
    lines = table_lines(paper.stdout)
    assert any('bicubic (paper)' in line and '28.43' in line for line in lines)  # Ledig et al. 2017, Table 2
    assert not any('(tutorial)' in line for line in lines)  # the tutorial's rows only under its protocol

    tutorial, _, _ = evaluate(tiny_srresnet, '--test-folders', shared_data / 'Set5', '--protocol', 'tutorial')
    lines = table_lines(tutorial.stdout)
    srresnet_paper = [line for line in lines if 'SRResNet (paper)' in line]
    assert len(srresnet_paper) == 1 and '32.05' in srresnet_paper[0]
    srresnet_tutorial = [line for line in lines if 'SRResNet (tutorial)' in line]
    assert len(srresnet_tutorial) == 1 and '31.93' in srresnet_tutorial[0]  # the tutorial's README: 31.927

    # a folder named otherwise, or named Set5 but holding one of its images: nothing published to compare with
    other, _, _ = evaluate('bicubic', '--test-folders', two_images)
    assert any(line.startswith('| bicubic | x4 | ') for line in table_lines(other.stdout))
    assert '(paper)' not in other.stdout and '(tutorial)' not in other.stdout
    bird, _, _ = evaluate('--test-folders', bird_set5)
    assert '(paper)' not in bird.stdout and 'note: Set5 is not the standard Set5' in bird.stderr



def test_eval_degrade_measures_every_model_on_the_same_degraded_lr_every_run(shared_data, evaluate):
    """--degrade jpeg:75: each LR saved as JPEG at quality 75 before any model (bicubic too) sees it, seeded, so a
    second run gives the same numbers; the paper's rows, measured on clean LR, are left out."""
    clean, clean_rows, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5')
    q75, q75_rows, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5', '--degrade', 'jpeg:75')
    again, again_rows, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5', '--degrade=jpeg:75')
    assert {row['degrade'] for row in q75_rows} == {'jpeg:75'} and {row['degrade'] for row in clean_rows} == {'none'}
    assert mean(q75_rows) == pytest.approx(27.47, abs=0.01)  # from 28.42 on clean LR
    assert [row['psnr'] for row in again_rows] == [row['psnr'] for row in q75_rows]
    assert '(paper)' in clean.stdout and '(paper)' not in q75.stdout
    assert 'then degraded by --degrade jpeg:75 (seeded)' in q75.stderr + q75.stdout
    assert '--degrade jpeg:75 |' in q75.stdout  # the table's row says how its LR was made
    bad = cli('eval.py', 'bicubic', '--test-folders', shared_data / 'Set5', '--degrade', 'jpeg:101', check=False)
    assert bad.returncode == 2 and "argument --degrade: 'jpeg:101': jpeg takes 1 <= LOW" in bad.stderr

def test_eval_protocol_tutorial(shared_data, bird_set5, evaluate):
    _, paper, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5')
    _, tutorial, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5', '--protocol', 'tutorial')
    assert {(row['protocol'], row['lr_kernel']) for row in tutorial} == {('tutorial', 'pillow')}  # its default LR
    assert {(row['protocol'], row['lr_kernel']) for row in paper} == {('paper', 'matlab')}
    # the README's bicubic rows: 28.43 / 0.8230 under --protocol tutorial, 28.42 / 0.8102 under paper
    assert mean(tutorial) == pytest.approx(28.43, abs=0.01)
    assert mean(tutorial, 'ssim') == pytest.approx(0.8230, abs=1e-3)
    assert mean(paper) == pytest.approx(28.42, abs=0.01) and mean(paper, 'ssim') == pytest.approx(0.8102, abs=1e-3)
    # a model's numbers move too (centre crop, float SR, 4 px border, 7x7 SSIM window)
    _, paper_bird, _ = evaluate('--test-folders', bird_set5)
    _, tutorial_bird, _ = evaluate('--test-folders', bird_set5, '--protocol', 'tutorial')
    (paper_bird,), (tutorial_bird,) = rows_of(paper_bird, SHIPPED), rows_of(tutorial_bird, SHIPPED)
    assert tutorial_bird['protocol'] == 'tutorial' and paper_bird['protocol'] == 'paper'
    assert float(tutorial_bird['psnr']) != pytest.approx(float(paper_bird['psnr']), abs=1e-3)
    assert float(tutorial_bird['psnr']) == pytest.approx(float(paper_bird['psnr']), abs=1)


def test_eval_lr_kernel_pillow_and_matlab_make_different_bicubic_numbers(shared_data, evaluate):
    _, matlab, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5')  # the paper protocol's default
    _, pillow, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5', '--lr-kernel', 'pillow')
    assert {row['lr_kernel'] for row in matlab} == {'matlab'} and {row['lr_kernel'] for row in pillow} == {'pillow'}
    assert [row['image'] for row in pillow] == [row['image'] for row in matlab] and len(matlab) == 5
    differences = [abs(float(a['psnr']) - float(b['psnr'])) for a, b in zip(matlab, pillow)]
    assert all(d > 1e-4 for d in differences) and max(differences) < 0.1
    assert mean(matlab) == pytest.approx(28.42, abs=0.01)  # the literature's MATLAB value
    assert mean(pillow) == pytest.approx(28.42, abs=0.01)  # the README's row for --lr-kernel pillow


def test_eval_scale_2_runs_bicubic_at_x2(shared_data, bird_set5, evaluate):
    result, rows, _ = evaluate('bicubic', '--test-folders', shared_data / 'Set5', '--scale', 2)
    assert {row['scale'] for row in rows} == {'2'} and len(rows) == 5
    assert mean(rows) == pytest.approx(33.64, abs=0.02)  # bicubic x2 on Set5 (x4: 28.42)
    row = [line for line in table_lines(result.stdout) if line.startswith('| bicubic |')]
    assert len(row) == 1 and row[0].startswith('| bicubic | x2 | 33.6')
    assert '(paper)' not in result.stdout  # the published rows are x4 ones
    # a checkpoint runs at its own scale whatever --scale says
    _, rows, _ = evaluate('bicubic', SHIPPED, '--test-folders', bird_set5, '--scale', 2)
    assert {(row['model'], row['scale']) for row in rows} == {('bicubic', '2'), (SHIPPED, '4')} and len(rows) == 2


def native_precision(monkeypatch, dtype):
    """Make this machine's device one whose fast autocast dtype is `dtype` (None: none, fp32), for the trainers,
    eval.py and super_resolve.py alike: each machine then runs both kinds of CPU."""
    for module in (utils, inference, training):
        monkeypatch.setattr(module, 'autocast_dtype', lambda device: dtype)


def test_eval_amp_moves_the_numbers_by_little(bird_set5, evaluate, monkeypatch, tmp_path):
    """On a CPU with fast bf16 (AVX-512 BF16 / AMX): --amp computes in bf16, and the numbers move, by little."""
    _, fp32, _ = evaluate('--test-folders', bird_set5)
    native_precision(monkeypatch, torch.bfloat16)
    result = cli('eval.py', '--test-folders', bird_set5, '--amp', '--workers', 0, '--csv', tmp_path / 'amp.csv')
    with open(tmp_path / 'amp.csv') as f:
        amp = list(csv.DictReader(f))
    (fp32,), (amp,) = rows_of(fp32, SHIPPED), rows_of(amp, SHIPPED)
    assert 'device cpu, autocast bfloat16' in result.stdout
    assert float(amp['psnr']) == pytest.approx(float(fp32['psnr']), abs=0.05) and amp['psnr'] != fp32['psnr']
    assert float(amp['ssim']) == pytest.approx(float(fp32['ssim']), abs=1e-3)


def test_eval_amp_without_a_fast_half_precision_says_so_and_gives_the_fp32_numbers(bird_set5, evaluate, monkeypatch,
                                                                                   tmp_path):
    _, fp32, _ = evaluate('--test-folders', bird_set5)
    native_precision(monkeypatch, None)
    result = cli('eval.py', '--test-folders', bird_set5, '--amp', '--workers', 0, '--csv', tmp_path / 'amp.csv')
    with open(tmp_path / 'amp.csv') as f:
        amp = list(csv.DictReader(f))
    (fp32,), (amp,) = rows_of(fp32, SHIPPED), rows_of(amp, SHIPPED)
    assert 'note: --amp: no fast autocast dtype on cpu, running in fp32' in result.stderr
    assert 'device cpu, fp32' in result.stdout
    assert (amp['psnr'], amp['ssim']) == (fp32['psnr'], fp32['ssim'])


def test_eval_tile_overlap(bird_set5, evaluate):
    """bird's LR is 72 x 72: --tile 48 cuts it into 2 x 2 tiles."""
    _, whole, whole_dir = evaluate('--test-folders', bird_set5)  # --tile 256 by default: one piece
    _, overlap, overlap_dir = evaluate(SHIPPED, '--test-folders', bird_set5, '--tile', 48, '--tile-overlap', 16)
    assert float(rows_of(overlap, SHIPPED)[0]['psnr']) == pytest.approx(float(rows_of(whole, SHIPPED)[0]['psnr']),
                                                                        abs=0.01)
    # the pixels: cross-faded overlapping tiles stay close to the untiled image
    untiled, tiled = (png(next(folder.glob('*srresnet*/Set5/bird.png'))) for folder in (whole_dir, overlap_dir))
    assert untiled.shape == tiled.shape == (288, 288, 3)
    assert 0 < np.abs(tiled - untiled).mean() < 0.5
    # tiles pasted side by side (overlap 0) would show seams: refused
    result = cli('eval.py', SHIPPED, '--test-folders', bird_set5, '--tile', 48, '--tile-overlap', 0, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].endswith(
        '--tile-overlap 0 must be between 16 (less leaves visible seams) and half of --tile 48 (24)')


def test_eval_unsafe_pickle(bird_set5, tutorial_pickle, tmp_path):
    path, _ = tutorial_pickle
    refused = cli('eval.py', path, '--test-folders', bird_set5, '--workers', 0, check=False)
    assert_one_error_line(refused, str(path), '--unsafe-pickle')

    result = cli('eval.py', path, '--unsafe-pickle', '--test-folders', bird_set5, '--workers', 0,
                 '--csv', tmp_path / 'pickle.csv')
    assert any(line.startswith(f'| {path} (SRResNet) | x4 | ') for line in table_lines(result.stdout))
    convert(path, tmp_path / 'converted.pt')  # the same weights, converted once: the same numbers
    cli('eval.py', tmp_path / 'converted.pt', '--test-folders', bird_set5, '--workers', 0,
        '--csv', tmp_path / 'converted.csv')
    with open(tmp_path / 'pickle.csv') as f, open(tmp_path / 'converted.csv') as g:
        pickled, converted = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert len(pickled) == 1 and 0 < float(pickled[0]['psnr']) < 25  # an untrained network
    assert pickled[0]['psnr'] == converted[0]['psnr']


# ---------------------------------------------------------------------------------------------------------------
# super_resolve.py (the shipped model unless --model says otherwise)

@pytest.fixture(scope='module')
def lr_photo(demo_data, tmp_path_factory):
    """A 40 x 32 crop of the demo set's astronaut, as a PNG."""
    with open(demo_data / 'demo_test_images.json') as f:
        astronaut = next(path for path in json.load(f) if 'astronaut' in path)
    path = tmp_path_factory.mktemp('photo') / 'face.png'
    Image.open(astronaut).convert('RGB').crop((180, 60, 220, 92)).save(path)
    return path


@pytest.fixture(scope='module')
def precisions(lr_photo, tmp_path_factory):
    """The photo super-resolved with --fp32, --half, --device cpu --fp32 and the default precision: here, and on a
    CPU with fast bf16 ('auto bf16') and on one without ('auto fp32'), whichever this one is."""
    folder = tmp_path_factory.mktemp('precision')
    outputs = {}
    for name, flags, native in (('fp32', ['--fp32'], 'here'), ('half', ['--half'], 'here'), ('auto', [], 'here'),
                                ('auto bf16', [], torch.bfloat16), ('auto fp32', [], None),
                                ('cpu', ['--device', 'cpu', '--fp32'], 'here')):
        with pytest.MonkeyPatch.context() as monkeypatch:
            if native != 'here':
                native_precision(monkeypatch, native)
            cli('super_resolve.py', lr_photo, '-o', folder / f'{name}.png', *flags)
        outputs[name] = png(folder / f'{name}.png')
    return outputs


def test_super_resolve_half_is_close_to_fp32_but_not_the_same(precisions):
    fp32, half = precisions['fp32'], precisions['half']
    assert fp32.shape == half.shape == (128, 160, 3)
    difference = np.abs(fp32 - half)
    assert difference.mean() < 2 and difference.max() > 0  # bf16 on any CPU: close, yet computed otherwise


def test_super_resolve_runs_in_bf16_by_default_where_the_cpu_has_it_natively_else_fp32(precisions):
    fp32, half = precisions['fp32'], precisions['half']
    assert np.array_equal(precisions['auto bf16'], half) and np.array_equal(precisions['auto fp32'], fp32)
    here = half if utils.autocast_dtype(torch.device('cpu')) == torch.bfloat16 else fp32
    assert np.array_equal(precisions['auto'], here)


def test_super_resolve_device_cpu(precisions, lr_photo, tmp_path):
    assert precisions['cpu'].shape == (128, 160, 3)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():  # auto is the CPU here too
        assert np.array_equal(precisions['cpu'], precisions['fp32'])
    result = cli('super_resolve.py', lr_photo, '-o', tmp_path / 'out.png', '--device', 'foo', check=False)
    assert_one_error_line(result, 'foo')
    assert not (tmp_path / 'out.png').exists()


def test_super_resolve_unsafe_pickle(lr_photo, tutorial_pickle, tmp_path):
    path, model = tutorial_pickle
    refused = cli('super_resolve.py', lr_photo, '-o', tmp_path / 'out.png', '--model', path, check=False)
    assert_one_error_line(refused, str(path), '--unsafe-pickle')
    assert not (tmp_path / 'out.png').exists()

    cli('super_resolve.py', lr_photo, '-o', tmp_path / 'out.png', '--model', path, '--unsafe-pickle', '--fp32')
    sr = png(tmp_path / 'out.png')
    # what the pickled network itself computes: ImageNet-normalised LR in, [-1, 1] SR out
    lr = torch.from_numpy(png(lr_photo)).permute(2, 0, 1).float() / 255
    lr = (lr - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(lr[None])[0]
    expected = ((expected + 1) / 2 * 255).clamp(0, 255).round().permute(1, 2, 0).numpy().astype(np.int64)
    assert sr.shape == expected.shape == (128, 160, 3)
    assert np.abs(sr - expected).mean() < 0.5 and np.abs(sr - expected).max() <= 2


def test_super_resolve_grid_halve(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:88, 0:100]
    photo = np.stack([128 + 100 * np.sin(x / 7), 128 + 100 * np.cos(y / 5), 128 + 60 * np.sin((x + y) / 9)], -1)
    photo = Image.fromarray(np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8))
    photo.save(tmp_path / 'photo.png')
    halved = photo.resize((50, 44), Image.LANCZOS)  # the tutorial halves with Lanczos
    halved.save(tmp_path / 'halved.png')
    cli('super_resolve.py', tmp_path / 'photo.png', '--grid', '--halve', '-o', tmp_path / 'grid_halve.png')
    cli('super_resolve.py', tmp_path / 'halved.png', '--grid', '-o', tmp_path / 'grid_halved_input.png')
    cli('super_resolve.py', tmp_path / 'photo.png', '--grid', '-o', tmp_path / 'grid.png')
    with_halve, of_halved, full = (Image.open(tmp_path / name) for name in
                                   ('grid_halve.png', 'grid_halved_input.png', 'grid.png'))
    assert with_halve.size == of_halved.size != full.size
    # the grid is 2 W + 3 m wide, 2 H + 3 m high, W x H: the HR trimmed to a multiple of 4 (after halving: 48 x 44)
    width, height = 48, 44
    margin = (with_halve.width - 2 * width) / 3
    assert margin == int(margin) and with_halve.height == 2 * height + 3 * margin
    margin = int(margin)
    box = (2 * margin + width, 2 * margin + height, 2 * margin + 2 * width, 2 * margin + 2 * height)  # original HR
    hr_panel = np.asarray(with_halve.convert('RGB').crop(box)).astype(int)
    assert np.abs(hr_panel - np.asarray(halved)[:height, :width]).mean() < 1  # the halved photo, not a crop of it


# ---------------------------------------------------------------------------------------------------------------
# Training flags

@pytest.fixture(scope='module')
def flags_run(demo_data, tmp_path_factory):
    """Two SRResNet iterations with the architecture, optimizer, data and precision flags away from the defaults, on
    a CPU with fast bf16 (where --no-amp is not the default)."""
    output_dir = tmp_path_factory.mktemp('runs') / 'flags'
    with pytest.MonkeyPatch.context() as monkeypatch:
        native_precision(monkeypatch, torch.bfloat16)
        result = cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', output_dir, *SMALL,
                     '--n-blocks', 1, '--n-channels', 16, '--scaling-factor', 2, '--beta1', 0.5, '--blur-sigma', 1.5,
                     '--no-amp', '--device', 'cpu', '--iterations', 2, '--val-set', 'none')
    return result, load(output_dir / 'last.pt')


@pytest.fixture(scope='module')
def eager_run(demo_data, tmp_path_factory):
    """One iteration of a tiny SRResNet: the baseline --sync-bn and --compile are compared with."""
    output_dir = tmp_path_factory.mktemp('runs') / 'eager'
    cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', output_dir, *SMALL, *TINY,
        '--iterations', 1, '--val-set', 'none')
    return train_rows(output_dir), load(output_dir / 'last.pt')


def test_train_beta1_is_adams(flags_run):
    _, checkpoint = flags_run
    groups = checkpoint['optimizer']['param_groups']
    assert groups and all(tuple(group['betas']) == (0.5, 0.999) for group in groups)
    assert checkpoint['config']['beta1'] == 0.5


def test_train_scaling_factor_2_and_n_channels_16(flags_run):
    _, checkpoint = flags_run
    config, state = checkpoint['model_config'], checkpoint['model']
    assert config['scaling_factor'] == 2 and config['n_channels'] == 16 and config['n_blocks'] == 1
    subpixel_blocks = {key.split('.')[1] for key in state if key.startswith('subpixel_convolutional_blocks.')}
    assert subpixel_blocks == {'0'}  # one x2 sub-pixel block
    assert state['subpixel_convolutional_blocks.0.conv.weight'].shape == (16 * 4, 16, 3, 3)
    assert state['conv_block1.conv_block.0.weight'].shape == (16, 3, 9, 9)
    assert state['residual_blocks.0.conv_block1.conv_block.0.weight'].shape == (16, 16, 3, 3)
    assert state['conv_block3.conv_block.0.weight'].shape == (3, 16, 9, 9)
    model = SRResNet(**config)
    model.load_state_dict(state)  # strict: exactly this architecture
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 12, 10)).shape == (1, 3, 24, 20)


def test_train_no_amp_and_device_cpu_are_in_the_run_description(flags_run):
    """--no-amp on a CPU with fast bf16: fp32 (without it: bf16 autocast, test_train.py's
    test_both_precisions_train_and_validate)."""
    result, checkpoint = flags_run
    description = [line for line in result.stdout.splitlines() if 'effective batch' in line]
    assert len(description) == 1 and 'cpu' in description[0]
    assert 'fp32' in description[0] and 'autocast' not in description[0]
    assert checkpoint['config']['no_amp'] is True and checkpoint['config']['device'] == 'cpu'


def test_train_blur_sigma(demo_data, flags_run):
    _, checkpoint = flags_run
    assert checkpoint['config']['blur_sigma'] == 1.5

    def pair(blur_sigma):
        dataset = SRDataset(demo_data, 'train', 96, 4, 'imagenet-norm', '[-1, 1]', blur_sigma=blur_sigma)
        random.seed(5)
        np.random.seed(5)
        torch.manual_seed(5)
        return dataset[0]

    (lr_sharp, hr_sharp), (lr_blurred, hr_blurred) = pair(0.0), pair(2.0)
    assert torch.equal(hr_sharp, hr_blurred) and lr_sharp.shape == lr_blurred.shape == (3, 24, 24)  # the same crop
    assert not torch.allclose(lr_sharp, lr_blurred, atol=1e-3)

    def roughness(img):  # mean absolute difference between neighbouring pixels
        return ((img[:, 1:] - img[:, :-1]).abs().mean() + (img[:, :, 1:] - img[:, :, :-1]).abs().mean()).item()
    assert roughness(lr_blurred) < 0.9 * roughness(lr_sharp)
    assert lr_blurred.mean().item() == pytest.approx(lr_sharp.mean().item(), abs=0.05)  # blurred, not darkened


def test_train_sync_bn_is_plain_batchnorm_in_one_process_and_refused_by_ddp_on_the_cpu(demo_data, eager_run, tmp_path,
                                                                                       monkeypatch):
    """--sync-bn: BatchNorm statistics over every DDP process, which PyTorch does on GPUs only. One process: plain
    BatchNorm, the eager run's loss. Two on the CPU: one error line before any work."""
    args = ['--data-folder', demo_data, *SMALL, *TINY, '--iterations', 1, '--val-set', 'none', '--sync-bn']
    cli('train_srresnet.py', *args, '--output-dir', tmp_path / 'one')
    rows, checkpoint = train_rows(tmp_path / 'one'), load(tmp_path / 'one' / 'last.pt')
    eager_rows, eager = eager_run
    assert checkpoint['iteration'] == 1 and checkpoint['config']['sync_bn'] is True
    assert [row['loss'] for row in rows] == pytest.approx([row['loss'] for row in eager_rows], rel=1e-6)
    assert checkpoint['model'].keys() == eager['model'].keys()  # plain BatchNorm: loads into SRResNet
    SRResNet(**checkpoint['model_config']).load_state_dict(checkpoint['model'])

    # rank 0 of 2 as torchrun starts it (the process group faked: there is no rank 1)
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda backend: None)
    result = cli('train_srresnet.py', *args, '--output-dir', tmp_path / 'ddp', check=False)
    assert_one_error_line(result, '--sync-bn needs CUDA GPUs')
    assert not (tmp_path / 'ddp').exists()


def test_train_compile(demo_data, eager_run, tmp_path, monkeypatch):
    """--compile, for one iteration of the tiny SRResNet: ~20 s on an idle 2-core CPU, most of it g++ building the ~14
    C++ kernels of the forward and backward graphs (about 1 s each, whatever the model's size), so it stays the
    suite's slowest test; in this process, it saves the ~7 s a new one spends importing torch."""
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR', raising=False)  # as in a new process: the run's own cache
    cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, *TINY, '--iterations', 1,
        '--val-set', 'none', '--compile')
    assert (tmp_path / 'compile_cache').is_dir()  # where a resumed run finds it
    rows, checkpoint = train_rows(tmp_path), load(tmp_path / 'last.pt')
    eager_rows, eager = eager_run
    assert checkpoint['iteration'] == 1 and checkpoint['config']['compile'] is True
    # the saved weights are the plain model's (no torch.compile wrapper prefix), and compiled training computes the
    # same loss, and the same first step, as eager training
    assert checkpoint['model'].keys() == eager['model'].keys()
    SRResNet(**checkpoint['model_config']).load_state_dict(checkpoint['model'])
    assert rows[0]['loss'] == pytest.approx(eager_rows[0]['loss'], rel=1e-4)
    for key, value in eager['model'].items():
        # Adam's first step moves each weight by about lr = 1e-4, whichever way its gradient points; a gradient
        # near zero can point the other way once the sums are computed in another order
        torch.testing.assert_close(checkpoint['model'][key], value, rtol=0, atol=2.5e-4)


def test_srgan_adversarial_weight(demo_data, tmp_path):
    weight = 0.5
    cli('train_srgan.py', '--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, '--content-loss', 'mse',
        '--srresnet-checkpoint', 'none', '--adversarial-weight', weight, '--iterations', 1, '--val-set', 'none')
    (row,) = train_rows(tmp_path)
    assert row['iteration'] == 1 and row['adversarial_loss'] > 0.1  # BCE of a discriminator near chance: ~0.7
    # perceptual = content + w x adversarial (with the default w = 1e-3 it would be within 0.1 % of content)
    assert row['perceptual_loss'] == pytest.approx(row['content_loss'] + weight * row['adversarial_loss'], rel=1e-5)
    assert load(tmp_path / 'last.pt')['config']['adversarial_weight'] == weight


# ---------------------------------------------------------------------------------------------------------------
# A graceful stop: SIGTERM (schedulers, docker stop) or Ctrl-C (SIGINT to the whole process group)

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_signal_saves_last_pt_and_resume_continues(demo_data, tmp_path, sig):
    total = 100_000
    args = ['--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, *TINY, '--workers', 1, '--val-set', 'none',
            '--checkpoint-every', total, '--compile', 'off']  # auto would compile for so many iterations: ~20 s
    process = start_process('train_srresnet.py', *args, '--iterations', total, start_new_session=True)
    deadline = time.time() + 120
    while len(train_rows(tmp_path)) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1][-3000:]
    if sig == signal.SIGINT:
        os.killpg(process.pid, sig)  # Ctrl-C in a terminal: the training process and its DataLoader worker
    else:
        process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + sig, stderr[-3000:]  # stopped early: not 0, which says 'finished'
    assert 'Traceback' not in stderr and sig.name in stderr
    checkpoint = load(tmp_path / 'last.pt')
    stopped_at = checkpoint['iteration']
    assert 3 <= stopped_at < total
    assert train_rows(tmp_path)[-1]['iteration'] == stopped_at  # the step in progress was finished and logged

    result = cli('train_srresnet.py', *args, '--workers', 0, '--iterations', stopped_at + 2, '--resume', 'auto')
    assert f'at iteration {stopped_at}' in result.stdout
    assert [row['iteration'] for row in train_rows(tmp_path)] == list(range(1, stopped_at + 3))
    assert load(tmp_path / 'last.pt')['iteration'] == stopped_at + 2


# ---------------------------------------------------------------------------------------------------------------
# Converting an original-tutorial checkpoint

def tutorial_srgan_pickle(path, seed=2):
    """An original-tutorial SRGAN checkpoint (x2): the generator and discriminator objects pickled. Returns the
    generator's SRResNet."""
    torch.manual_seed(seed)
    generator = Generator(n_blocks=1, scaling_factor=2)
    torch.save({'epoch': 1, 'generator': generator, 'discriminator': Discriminator(n_blocks=2, fc_size=16)}, path)
    return generator.net


@pytest.mark.parametrize('kind, pickled, scale', [('srresnet', tutorial_srresnet_pickle, 4),
                                                  ('srgan', tutorial_srgan_pickle, 2)])
def test_convert_a_tutorial_checkpoint(tmp_path, kind, pickled, scale):
    model = pickled(tmp_path / f'checkpoint_{kind}.pth.tar', seed=1)
    converted = convert(tmp_path / f'checkpoint_{kind}.pth.tar', tmp_path / f'{kind}.pt')
    assert converted['kind'] == kind
    assert converted['model_config'] == dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=1,
                                             scaling_factor=scale)
    expected = model.state_dict()  # the SRResNet's (the generator's, for an SRGAN)
    assert converted['model'].keys() == expected.keys()
    assert all(torch.equal(converted['model'][k], v) for k, v in expected.items())

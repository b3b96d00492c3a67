"""degradations.py: what each stage does to an image, that the draws depend only on (seed, key), and that a run
trained with --degrade resumes on the same degradations."""

import argparse
import io
import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import degradations
from checkpoints import load_checkpoint
from conftest import QUICK_X2, TINY, cli, train_rows
from degradations import EXAMPLES, STAGES, Degradations, DegradedLR, degrade_flag, parse_degrade


def eight_bit(imgs):
    return imgs.mul(255).round().div(255)


@pytest.fixture
def keep_torch_settings():
    """--deterministic in this process switches on torch's deterministic kernels: switched off after the test."""
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


EVERY_STAGE = ','.join(EXAMPLES.values())  # each stage once


def test_every_stage_parses_and_every_malformed_stage_is_one_line_naming_it():
    assert parse_degrade('none') == () and not Degradations('none')
    assert [s.name for s in parse_degrade(EVERY_STAGE)] == list(STAGES)
    stage, = parse_degrade('jpeg:75')
    assert (stage.low, stage.high, stage.p) == (75, 75, 1)
    stage, = parse_degrade('blur:0.2-0.8@0.25')
    assert (stage.low, stage.high, stage.p) == (0.2, 0.8, 0.25)
    bad = [f'{name}:{values}' for name, values in itertools.product(
        STAGES, ['', 'x', '1-', '-1', '3-1', '1@2', '1@-0.5', '1e9', '-5'])]
    bad += ['jpg:75', 'jpeg', 'jpeg:75,jpeg:50', ':3']
    for spec in bad:
        with pytest.raises(ValueError) as error:
            parse_degrade(spec)
        message = str(error.value)
        assert '\n' not in message and message.startswith(repr(spec.split(',')[-1])), spec
        with pytest.raises(argparse.ArgumentTypeError):
            degrade_flag(spec)
    assert degrade_flag('real') == 'real'
    assert [degradations.degrades(spec) for spec in ('none', '', 'jpeg:75@0', 'jpeg:75', 'real')] == \
        [False, False, False, True, True]


def test_the_draws_depend_on_seed_and_key_alone_and_the_output_is_an_8_bit_image():
    lr_imgs = eight_bit(torch.rand(8, 3, 24, 24))
    degrade = Degradations('real', seed=1)
    out = degrade(lr_imgs, key=5)
    assert out.shape == lr_imgs.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, eight_bit(out))
    assert torch.equal(out, Degradations('real', seed=1)(lr_imgs, key=5))  # a fresh object, the same draws
    assert not torch.equal(out, degrade(lr_imgs, key=6)) and not torch.equal(out, Degradations('real')(lr_imgs, 5))
    assert torch.equal(Degradations('jpeg:75@0')(lr_imgs, 0), lr_imgs)  # a stage of chance 0: the image as it was


def test_jpeg_is_what_pillow_saves_at_that_quality():
    img = (torch.rand(3, 32, 40) * 255).to(torch.uint8)
    for quality in (30, 75, 95):
        buffer = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buffer, 'JPEG', quality=quality)
        pillow = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1)
        assert torch.equal(Degradations(f'jpeg:{quality}').uint8(img, key=0), pillow)


def test_blur_is_a_gaussian_of_that_sigma_and_keeps_flat_areas_flat():
    lr_imgs = eight_bit(torch.rand(2, 3, 32, 32))
    out = Degradations('blur:1.0')(lr_imgs, key=0)
    expected = eight_bit(TF.gaussian_blur(lr_imgs, kernel_size=7, sigma=1.0))  # reflected edges: compare inside
    assert (out - expected)[..., 3:-3, 3:-3].abs().max() <= 1 / 255 + 1e-6
    assert out.std() < lr_imgs.std() / 2  # noise, blurred, loses most of its variance
    flat = torch.full((1, 3, 16, 16), 128 / 255)
    assert torch.equal(Degradations('blur:2')(flat, key=0), eight_bit(flat))


@pytest.mark.parametrize('stage, expected_std', [('noise:8', 8 / 255), ('poisson:100', (0.5 / 100) ** 0.5)])
def test_noise_has_the_spread_its_stage_says(stage, expected_std):
    gray = torch.full((4, 3, 64, 64), 128 / 255)
    difference = Degradations(stage)(gray, key=3) - gray
    assert abs(difference.mean()) < expected_std / 10  # no shift of the colour
    assert difference.std().item() == pytest.approx(expected_std, rel=0.1)


def test_an_extra_resize_loses_fine_detail_and_keeps_the_size():
    stripes = torch.zeros(2, 3, 24, 24)
    stripes[..., ::2] = 1.0  # the finest detail an image holds
    out = Degradations('resize:0.5')(stripes, key=0)
    assert out.shape == stripes.shape
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < 0.2  # from 1 between neighbours


def test_each_image_goes_through_a_stage_with_its_chance_and_jpeg_always_comes_last(monkeypatch):
    lr_imgs = eight_bit(torch.rand(400, 3, 8, 8))
    changed = (Degradations('noise:10@0.3')(lr_imgs, key=0) != lr_imgs).flatten(1).any(1)
    assert 0.22 < changed.float().mean() < 0.38
    orders = set()
    for name, apply in degradations.APPLY.items():
        def recorded(imgs, values, applied, generator, name=name, apply=apply):
            order.append(name)
            return apply(imgs, values, applied, generator)
        monkeypatch.setitem(degradations.APPLY, name, recorded)
    for key in range(30):
        order = []
        Degradations(EVERY_STAGE)(lr_imgs[:2], key)
        assert order[-1] == 'jpeg' and sorted(order) == sorted(STAGES)
        orders.add(tuple(order))
    assert len(orders) > 5  # the others in an order drawn per batch


def test_degraded_validation_images_keep_their_hr_and_degrade_each_image_its_own_way():
    class Pairs:
        def __len__(self):
            return 2

        def __getitem__(self, i):  # as a test SRDataset gives them
            lr = torch.full((3, 8, 8), 0.25 + i / 4)
            return (lr - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
                [0.229, 0.224, 0.225])[:, None, None], torch.zeros(3, 16, 16)

    dataset = DegradedLR(Pairs(), Degradations('noise:20'))
    (lr0, hr0), (lr1, _) = dataset[0], dataset[1]
    assert lr0.shape == (3, 8, 8) and torch.equal(hr0, torch.zeros(3, 16, 16))
    assert torch.equal(dataset[0][0], lr0) and lr0.std() > 0.05 and lr1.std() > 0.05  # noisy, the same each time


def test_a_degraded_run_resumes_on_the_same_degradations_and_differs_from_a_clean_one(demo_data, tmp_path,
                                                                                      keep_torch_settings):
    args = ['--data-folder', demo_data, *TINY, *QUICK_X2, '--deterministic', '--val-set', 'demo', '--val-every', 4,
            '--iterations']
    cli('train_srresnet.py', *args, 4, '--output-dir', tmp_path / 'clean')
    cli('train_srresnet.py', *args, 4, '--output-dir', tmp_path / 'whole', '--degrade', 'real')
    cli('train_srresnet.py', *args, 2, '--output-dir', tmp_path / 'resumed', '--degrade', 'real')
    cli('train_srresnet.py', *args, 4, '--output-dir', tmp_path / 'resumed', '--degrade', 'real', '--resume', 'auto')
    whole, resumed = (load_checkpoint(tmp_path / name / 'last.pt') for name in ('whole', 'resumed'))
    assert whole['config']['degrade'] == 'real' and resumed['iteration'] == 4
    assert all(torch.equal(whole['model'][k], resumed['model'][k]) for k in whole['model'])
    losses = {name: [row['loss'] for row in train_rows(tmp_path / name)] for name in ('clean', 'whole', 'resumed')}
    assert losses['whole'] == losses['resumed'] and losses['whole'][0] != losses['clean'][0]


def test_degrade_is_refused_beside_the_lr_made_by_pillow(demo_data, tmp_path):
    result = cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', tmp_path, *TINY, *QUICK_X2,
                 '--degrade', 'jpeg:50', '--pillow-lr', check=False)
    assert result.returncode == 1 and result.stderr.count('\n') == 1 and 'leave out --pillow-lr' in result.stderr

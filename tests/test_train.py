"""train_srresnet.py and train_srgan.py: short real runs, exports, errors (resuming, SIGKILL, DDP: test_resume.py).
Small models (--n-blocks 1-2) and 48x48 crops keep it to about a minute on two cores; the defaults stay the
paper's (checked in test_defaults_are_the_papers)."""

import json
import math
import os
import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import QUICK_X2, SMALL, TINY, cli, last_line, run_process, train_rows
import train_srgan
import train_srresnet
from datasets import InfiniteSampler, SRDataset
from models import Discriminator, Generator, SRResNet, TruncatedVGG19
from checkpoints import generator_state_dict, load_checkpoint, save_checkpoint
from inference import load_generator
from pictures import read_log
from utils import UserError

@pytest.fixture(scope='module')
def srresnet_run(demo_data, tmp_path_factory):
    """A 4-iteration SRResNet run with validation on the demo test set every 2 iterations."""
    output_dir = tmp_path_factory.mktemp('runs') / 'srresnet'
    cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', output_dir, *SMALL, '--n-blocks', '1',
        '--iterations', 4, '--checkpoint-every', 2, '--val-every', 2, '--val-set', 'demo')
    return output_dir


def test_defaults_are_the_papers():
    args = train_srresnet.get_args([])
    assert (args.iterations, args.batch_size, args.crop_size, args.scaling_factor) == (1_000_000, 16, 96, 4)
    assert (args.lr, args.beta1, args.n_blocks, args.blur_sigma, args.no_amp) == (1e-4, 0.9, 16, 0.0, False)
    assert (args.data_folder, args.output_dir) == ('./data', 'runs/srresnet')
    assert args.lr_decay_at is None and args.augment is False  # constant lr, no flips: the paper's
    assert args.freeze_bn_at is None and args.ema_decay == 0  # no frozen BatchNorm, no weight average: the paper's
    assert args.pixel_loss == 'mse' and train_srresnet.PIXEL_LOSSES['mse'] is F.mse_loss
    args = train_srgan.get_args([])
    assert (args.iterations, args.lr_decay_at, args.batch_size, args.lr) == (200_000, 100_000, 16, 1e-4)
    assert (args.content_loss, args.adversarial_weight, args.vgg_weights) == ('vgg54', 1e-3, 'imagenet')
    assert args.output_dir == 'runs/srgan' and train_srgan.VGG_FEATURE_SCALE == 1 / 12.75 and args.ema_decay == 0


def help_text(script, capsys):
    """--help of a training script, with its line wrapping undone."""
    with pytest.raises(SystemExit) as exit_:
        script.get_args(['--help'])
    assert exit_.value.code == 0
    return ' '.join(capsys.readouterr().out.split())


def test_help_shows_the_papers_defaults(capsys):
    text = help_text(train_srresnet, capsys)
    assert 'training iterations (optimizer steps) (default: 1000000)' in text
    assert 'Adam learning rate; may be changed when resuming (default: 0.0001)' in text
    assert 'residual blocks (default: 16)' in text
    assert 'Train SRResNet (Ledig et al. 2017, section 3)' in text  # the docstring still leads
    # switches and None defaults get no '(default: False/None)' beside the default their help already states
    assert '(default: False)' not in text and '(default: None)' not in text
    assert text.count('(default: never, as the paper)') == 1
    text = help_text(train_srgan, capsys)
    assert 'training iterations (optimizer steps) (default: 200000)' in text
    assert 'multiply the lr by 0.1 from this iteration on; may be changed when resuming (default: 100000)' in text
    assert 'weight of the adversarial loss (default: 0.001)' in text and '(default: vgg54)' in text


def test_short_srresnet_run(srresnet_run, demo_data):
    rows = read_log(srresnet_run / 'log.jsonl')
    train = [row for row in rows if 'lr' in row]
    assert [row['iteration'] for row in train] == [1, 2, 3, 4]
    assert all(math.isfinite(row['loss']) and 0 < row['loss'] < 4 for row in train)  # MSE of [-1, 1] images
    assert all(row['data_ms'] >= 0 and row['step_ms'] > 0 for row in train)
    val = [row for row in rows if 'val_psnr_demo' in row]
    assert [row['iteration'] for row in val] == [2, 4]
    assert all(5 < row['val_psnr_demo'] < 40 and 0 < row['val_ssim_demo'] <= 1 for row in val)
    for name in ('last.pt', 'best.pt', 'loss_curves.png', 'samples/iter_0000002.png', 'samples/iter_0000004.png'):
        assert (srresnet_run / name).is_file(), name
    with Image.open(srresnet_run / 'progress.webp') as animation:  # made at the end: one frame per sample sheet
        assert animation.n_frames == 2

    checkpoint = load_checkpoint(srresnet_run / 'last.pt')
    assert checkpoint['kind'] == 'srresnet' and checkpoint['iteration'] == 4
    assert checkpoint['model_config'] == dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=1,
                                              scaling_factor=4)
    assert checkpoint['config']['batch_size'] == 2 and checkpoint['samples_seen'] == 8
    assert set(checkpoint['rng']) >= {'python', 'numpy', 'torch'} and checkpoint['optimizer']['state']
    assert checkpoint['best_psnr'] == max(row['val_psnr_demo'] for row in val)
    model = load_generator(srresnet_run / 'best.pt')
    sr = model(torch.randn(1, 3, 12, 12))
    assert sr.shape == (1, 3, 48, 48) and sr.abs().max() <= 1

    # the same output folder again without --resume: refused, not overwritten
    result = cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', srresnet_run, check=False)
    assert result.returncode != 0 and '--resume auto' in last_line(result)


def test_export_keeps_the_generator_alone(srresnet_run, tmp_path):
    exported = tmp_path / 'srresnet_x4.pt'
    cli('checkpoints.py', 'export', srresnet_run / 'best.pt', exported)
    checkpoint = load_checkpoint(exported)
    assert set(checkpoint) == {'kind', 'model_config', 'model', 'iteration', 'best_psnr', 'config'}
    assert all(v.dtype in (torch.float32, torch.int64) for v in checkpoint['model'].values())
    assert checkpoint['iteration'] == load_checkpoint(srresnet_run / 'best.pt')['iteration']
    lr_imgs = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(load_generator(exported)(lr_imgs), load_generator(srresnet_run / 'best.pt')(lr_imgs))
    result = cli('checkpoints.py', 'export', tmp_path / 'missing.pt', tmp_path / 'out.pt', check=False)
    assert result.returncode != 0 and result.stderr.strip() == f'error: {tmp_path}/missing.pt: no such checkpoint file'


def test_export_takes_the_moving_average_unless_live(tmp_path):
    import checkpoints
    torch.manual_seed(0)
    live, average = SRResNet(n_blocks=1).state_dict(), SRResNet(n_blocks=1).state_dict()
    save_checkpoint({'kind': 'srresnet', 'model': live, 'ema': average, 'iteration': 7}, tmp_path / 'last.pt')
    for flags, expected in (([], average), (['--live'], live)):
        checkpoints.main(['export', str(tmp_path / 'last.pt'), str(tmp_path / 'out.pt'), '--overwrite', *flags])
        exported = load_checkpoint(tmp_path / 'out.pt')['model']
        assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)


def test_short_srgan_run_from_the_srresnet_with_lr_decay(srresnet_run, demo_data, tmp_path):
    output_dir = tmp_path / 'srgan'
    result = cli('train_srgan.py', '--data-folder', demo_data, '--output-dir', output_dir, *SMALL,
                 '--srresnet-checkpoint', srresnet_run / 'last.pt', '--vgg-weights', 'none',
                 '--iterations', 3, '--lr-decay-at', 2, '--val-set', 'demo', '--val-every', 3)
    assert 'RANDOM weights' in result.stderr  # the loud warning
    rows = train_rows(output_dir)
    assert [row['lr'] for row in rows] == [1e-4, 1e-4, 1e-5]  # x0.1 after exactly --lr-decay-at iterations
    for row in rows:
        assert 0 < row['D(HR)'] < 1 and 0 < row['D(SR)'] < 1
        assert row['perceptual_loss'] == pytest.approx(row['content_loss'] + 1e-3 * row['adversarial_loss'], rel=1e-5)
    checkpoint = load_checkpoint(output_dir / 'last.pt')
    assert checkpoint['kind'] == 'srgan' and checkpoint['model_config']['n_blocks'] == 1
    assert checkpoint['iteration'] == 3 and 'scheduler_g' not in checkpoint  # the lr comes from the flags
    assert [checkpoint[name]['param_groups'][0]['lr'] for name in ('optimizer_g', 'optimizer_d')] == [1e-5, 1e-5]
    assert set(checkpoint['discriminator']) == set(Discriminator().state_dict())
    assert load_generator(output_dir / 'best.pt').training is False

    # resumed (the generator comes from the run now, not from --srresnet-checkpoint): the schedule carries on;
    # with --ema-decay the average starts from the resumed generator and is what the checkpoint serves
    cli('train_srgan.py', '--data-folder', demo_data, '--output-dir', output_dir, *SMALL,
        '--srresnet-checkpoint', 'nowhere.pt', '--vgg-weights', 'none',
        '--iterations', 4, '--lr-decay-at', 2, '--val-set', 'none', '--resume', 'auto', '--ema-decay', 0.5)
    assert [row['lr'] for row in train_rows(output_dir)] == [1e-4, 1e-4, 1e-5, 1e-5]
    resumed = load_checkpoint(output_dir / 'last.pt')
    assert resumed['iteration'] == 4 and resumed['optimizer_d']['param_groups'][0]['lr'] == 1e-5
    at_3, at_4 = generator_state_dict(checkpoint, average=False), generator_state_dict(resumed, average=False)
    name = 'conv_block3.conv_block.0.weight'
    assert at_4.keys() == resumed['ema'].keys() and not torch.equal(at_4[name], at_3[name])
    for k, v in resumed['ema'].items():
        expected = 0.5 * at_3[k] + 0.5 * at_4[k] if v.is_floating_point() else at_4[k]
        assert torch.allclose(v, expected, rtol=1e-5, atol=1e-7), k
    served = generator_state_dict(resumed)
    assert all(torch.equal(served[k], v) for k, v in resumed['ema'].items())
    assert not torch.equal(served[name], at_4[name])


def test_srgan_step_freezes_vgg_and_scales_its_features():
    torch.manual_seed(0)
    generator, discriminator = Generator(n_blocks=1), Discriminator(n_blocks=2, fc_size=16)
    vgg = TruncatedVGG19(2, 2, weights=None)
    optimizers = [torch.optim.Adam(m.parameters(), 1e-4) for m in (generator, discriminator)]
    lr_imgs, hr_imgs = torch.randn(2, 3, 12, 12), torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        sr_imgs = generator(lr_imgs)
        norm = lambda x: (x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # noqa: E731
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        expected = torch.mean((vgg(norm(sr_imgs) / std) / 12.75 - vgg(norm(hr_imgs) / std) / 12.75) ** 2)
    before = [p.clone() for p in generator.parameters()]
    srgan = train_srgan.SRGANModels(generator, discriminator, discriminator, vgg, *optimizers,
                                    torch.amp.GradScaler('cpu', enabled=False))
    values = train_srgan.train_step(srgan, lr_imgs, hr_imgs, None, 1e-3)
    assert values['content_loss'].item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(p.grad is None and not p.requires_grad for p in vgg.parameters())  # the VGG is frozen
    assert all(p.grad is not None and p.requires_grad for p in discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters()))


def test_tutorial_pickles_need_unsafe_pickle(demo_data, tmp_path):
    tutorial = tmp_path / 'checkpoint_srresnet.pth.tar'
    model = SRResNet(n_blocks=1)
    torch.save({'epoch': 3, 'model': model, 'optimizer': torch.optim.Adam(model.parameters())}, tutorial)
    args = ['--data-folder', demo_data, '--output-dir', tmp_path / 'srgan', *SMALL, '--srresnet-checkpoint', tutorial,
            '--content-loss', 'mse', '--iterations', 1, '--val-set', 'none']
    result = cli('train_srgan.py', *args, check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert last_line(result).startswith('error: ') and '--unsafe-pickle' in last_line(result)
    assert not (tmp_path / 'srgan' / 'last.pt').exists()

    cli('train_srgan.py', *args, '--unsafe-pickle')
    assert load_checkpoint(tmp_path / 'srgan' / 'last.pt')['model_config']['n_blocks'] == 1


def test_user_errors_are_one_line(demo_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tutorial = tmp_path / 'checkpoint_srresnet.pth.tar'
    torch.save({'epoch': 3, 'model': SRResNet(n_blocks=1)}, tutorial)
    cases = [
        (train_srgan, ['--vgg-weights', str(tmp_path / 'missing.pth'), '--srresnet-checkpoint', 'none'],
         ['--vgg-weights PATH', '--content-loss mse']),
        (train_srgan, [], ['runs/srresnet/last.pt', 'train_srresnet.py']),
        (train_srresnet, ['--val-set', 'Set14'], ['no Set14_test_images.json']),
        (train_srresnet, ['--data-folder', str(tmp_path / 'nowhere')], ['create_data_lists.py']),
        (train_srresnet, ['--resume', str(tmp_path / 'missing.pt')], ['no such checkpoint']),
        (train_srresnet, ['--resume', str(tutorial)], ['cannot be resumed', 'python checkpoints.py convert']),
    ]
    for script, args, words in cases:
        if '--data-folder' not in args:
            args = ['--data-folder', str(demo_data), *args]
        with pytest.raises(UserError) as error:
            script.main([*args, '--iterations', '1', '--workers', '0', '--output-dir', str(tmp_path / 'out')])
        message = str(error.value)
        assert not message.startswith('error: ') and '\n' not in message, message
        assert all(word in message for word in words), message


def test_a_training_image_smaller_than_the_crop_is_one_error_line_naming_it(tmp_path):
    from PIL import Image
    small = tmp_path / 'images' / 'small.png'  # not beside the run: a run writes outside the folders of its images
    small.parent.mkdir()
    Image.new('RGB', (40, 40), (120, 60, 30)).save(small)
    (tmp_path / 'train_images.json').write_text(json.dumps([str(small)]))
    args = ['--data-folder', tmp_path, '--output-dir', tmp_path / 'out', '--batch-size', '2', '--crop-size', '48',
            '--n-blocks', '1', '--iterations', 1, '--val-set', 'none']
    for workers in (0, 1):  # raised in this process, and in a DataLoader worker (which wraps it in its traceback)
        result = cli('train_srresnet.py', *args, '--workers', workers, check=False)
        assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
        assert last_line(result) == (f'error: {small}: 40x40 is smaller than the 48x48 training crop; rebuild the '
                                     f'data lists with a larger --min-size')
        assert not (tmp_path / 'out' / 'last.pt').exists()


def test_content_loss_auto_falls_back_to_mse_in_one_line_when_offline(demo_data, tmp_path, monkeypatch, capsys):
    """No cached weights (an empty TORCH_HOME) and a download that fails as offline, without touching the network:
    auto says so in one line and trains SRGAN-MSE; the default vgg54 stops with one error line instead."""
    import urllib.error
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    downloads = []

    def offline(url, dst, *args, **kwargs):
        downloads.append(url)
        raise urllib.error.URLError('offline (the test blocks downloads)')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    args = ['--data-folder', str(demo_data), *SMALL, '--srresnet-checkpoint', 'none', '--val-set', 'none',
            '--output-dir', str(tmp_path / 'srgan')]

    train_srgan.main([*args, '--iterations', '1', '--content-loss', 'auto'])
    out = capsys.readouterr()
    vgg_lines = [line for line in (out.out + out.err).splitlines() if 'VGG19' in line or 'Downloading' in line]
    assert len(vgg_lines) == 1 and vgg_lines[0].startswith('note: --content-loss auto: could not get the VGG19 '
                                                           'ImageNet weights'), vgg_lines
    assert all(words in vgg_lines[0] for words in ('--vgg-weights PATH', str(tmp_path / 'torch'), 'SRGAN-MSE'))
    assert 'content loss mse' in out.out and len(downloads) == 1
    assert load_checkpoint(tmp_path / 'srgan' / 'last.pt')['config']['content_loss'] == 'mse'  # what was used

    # resumed, auto keeps the loss the run started with (and does not try the download again)
    train_srgan.main([*args, '--iterations', '2', '--content-loss', 'auto', '--resume', 'auto'])
    assert load_checkpoint(tmp_path / 'srgan' / 'last.pt')['config']['content_loss'] == 'mse'
    assert len(downloads) == 1 and 'VGG19' not in capsys.readouterr().out

    # the default (the paper's vgg54) never falls back: one error line that says what to do
    with pytest.raises(UserError) as error:
        train_srgan.main([*args, '--iterations', '1', '--output-dir', str(tmp_path / 'vgg54')])
    message = str(error.value)
    assert message.startswith('could not get the VGG19 ImageNet weights') and '\n' not in message
    assert all(words in message for words in ('--vgg-weights PATH', '--content-loss mse', 'auto'))
    assert not (tmp_path / 'vgg54' / 'last.pt').exists()


def test_content_loss_auto_is_vgg54_when_the_weights_can_be_had(demo_data, tmp_path, monkeypatch, capsys):
    """A 'download' that delivers a VGG19 file (random weights here): auto trains with VGG54 and records it."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    features = TruncatedVGG19(5, 4, weights=None).truncated_vgg19.state_dict()

    def download(url, dst, *args, **kwargs):
        print(f'Downloading: "{url}" to {dst}')  # torch.hub's own line comes before this call; replayed
        torch.save({f'features.{k}': v for k, v in features.items()}, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    train_srgan.main(['--data-folder', str(demo_data), *SMALL, '--srresnet-checkpoint', 'none', '--val-set', 'none',
                      '--output-dir', str(tmp_path / 'srgan'), '--iterations', '1', '--content-loss', 'auto'])
    out = capsys.readouterr().out
    assert 'content loss vgg54' in out and 'note:' not in out and 'Downloading' in out
    assert (tmp_path / 'torch' / 'hub' / 'checkpoints' / 'vgg19-dcbb9e9d.pth').is_file()
    assert load_checkpoint(tmp_path / 'srgan' / 'last.pt')['config']['content_loss'] == 'vgg54'


def test_infinite_sampler_is_a_resumable_rank_sharded_stream():
    whole = InfiniteSampler(5, seed=3)
    stream = [next(it) for it in [iter(whole)] for _ in range(23)]
    for epoch in range(4):  # every epoch is a permutation, and each epoch its own
        assert sorted(i for i, _ in stream[5 * epoch:5 * epoch + 5]) == list(range(5))
    assert len({tuple(i for i, _ in stream[5 * epoch:5 * epoch + 5]) for epoch in range(4)}) > 1
    assert len({seed for _, seed in stream}) == 23
    resumed = iter(InfiniteSampler(5, seed=3, start=17))
    assert [next(resumed) for _ in range(6)] == stream[17:]
    ranks = [iter(InfiniteSampler(5, seed=3, rank=r, world_size=2)) for r in range(2)]
    shards = [[next(it) for _ in range(11)] for it in ranks]
    assert shards[0] == stream[0::2][:11] and shards[1] == stream[1::2][:11]


def test_crops_depend_on_the_sample_seed_alone(demo_data):
    plain = SRDataset(demo_data, 'train', 48, 4, 'imagenet-norm', '[-1, 1]')
    lr_a, hr_a = plain[(3, 12345)]
    torch.manual_seed(99)
    random.seed(99)
    lr_b, hr_b = plain[(3, 12345)]
    assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
    assert hr_a.shape == (3, 48, 48) and lr_a.shape == (3, 12, 12)
    assert not torch.equal(plain[(3, 54321)][1], hr_a)


@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16], ids=['fp32', 'bf16'])
def test_both_precisions_train_and_validate(demo_data, tmp_path, monkeypatch, capsys, amp_dtype):
    """The precision follows the CPU (bf16 autocast with AVX-512 BF16/AMX, else fp32), so a machine runs only one of
    them by default: here each runs explicitly, training and validating, and the weights stay fp32."""
    import training
    monkeypatch.setattr(training, 'autocast_dtype', lambda device: amp_dtype)
    train_srresnet.main(['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SMALL, *TINY,
                         '--iterations', '2', '--val-every', '2', '--val-set', 'demo'])
    assert ('bfloat16 autocast' if amp_dtype else 'cpu, fp32') in capsys.readouterr().out
    rows = read_log(tmp_path / 'log.jsonl')
    losses = [row['loss'] for row in rows if 'loss' in row]
    assert len(losses) == 2 and all(0 < loss < 4 for loss in losses)
    assert 5 < rows[-1]['val_psnr_demo'] < 40
    checkpoint = load_checkpoint(tmp_path / 'last.pt')
    assert all(v.dtype in (torch.float32, torch.int64) for v in checkpoint['model'].values())


def test_trunk_from_starts_another_scale_from_a_trained_srresnet(srresnet_run, demo_data, tmp_path):
    """--trunk-from: every layer but the sub-pixel stages, from a model of another scale; refused for another size."""
    x4 = generator_state_dict(load_checkpoint(srresnet_run / 'last.pt'))
    x2 = SRResNet(n_blocks=1, scaling_factor=2)
    before = {k: v.clone() for k, v in x2.state_dict().items()}
    n, stages = train_srresnet.load_trunk(x2, dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=1,
                                                   scaling_factor=2), srresnet_run / 'last.pt')
    after = x2.state_dict()
    subpixel = [k for k in after if k.startswith('subpixel_convolutional_blocks.')]
    assert n == len(after) - len(subpixel) and subpixel and stages == 'random'
    assert all(torch.equal(after[k], x4[k]) for k in after if k not in subpixel)
    assert all(torch.equal(after[k], before[k]) for k in subpixel)

    output_dir = tmp_path / 'x2'
    args = ['--data-folder', demo_data, '--output-dir', output_dir, *SMALL, '--n-blocks', 1, '--scaling-factor', 2,
            '--val-set', 'none', '--trunk-from', srresnet_run / 'last.pt']
    result = cli('train_srresnet.py', *args, '--iterations', 1)
    assert f'--trunk-from: {n} tensors from {srresnet_run / "last.pt"}; the sub-pixel stages start at random' \
        in result.stdout
    assert load_checkpoint(output_dir / 'last.pt')['model_config']['scaling_factor'] == 2
    result = cli('train_srresnet.py', *args, '--iterations', 2, '--resume', 'auto')  # resumed: not used
    assert '--trunk-from' not in result.stdout and load_checkpoint(output_dir / 'last.pt')['iteration'] == 2

    result = cli('train_srresnet.py', *args, '--iterations', 1, '--output-dir', tmp_path / 'other',
                 '--n-blocks', 2, check=False)  # the last of a repeated flag counts
    assert result.returncode != 0 and last_line(result).startswith(
        f'error: --trunk-from {srresnet_run / "last.pt"} is SRResNet(')
    assert 'n_blocks' in last_line(result)


def test_trunk_from_a_smaller_scale_starts_as_it_followed_by_an_upsampling(tmp_path):
    """x8 from x4: every x4 tensor copied, and the new sub-pixel stage a nearest-neighbour x2 upsampling of the
    features: x8(lr) == the x4's last convolution applied to nearest_x2(the x4's features before it)."""
    torch.manual_seed(0)
    config = dict(large_kernel_size=9, small_kernel_size=3, n_channels=8, n_blocks=1, scaling_factor=4)
    x4 = SRResNet(**config).eval()
    for p in x4.parameters():  # PReLU slopes away from 0.25 too, so that a wrong slope would show
        p.data.add_(0.1 * torch.randn_like(p))
    save_checkpoint({'kind': 'srresnet', 'model_config': config, 'model': x4.state_dict()}, tmp_path / 'x4.pt')
    x8 = SRResNet(**dict(config, scaling_factor=8)).eval()
    n, stages = train_srresnet.load_trunk(x8, dict(config, scaling_factor=8), tmp_path / 'x4.pt')
    assert stages == 'grown' and n == len(x4.state_dict())
    lr_imgs = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        features = x4.subpixel_convolutional_blocks(x4.conv_block2(x4.residual_blocks(x4.conv_block1(lr_imgs)))
                                                    + x4.conv_block1(lr_imgs))  # (2, 8, 20, 28)
        upsampled = features.repeat_interleave(2, 2).repeat_interleave(2, 3)  # (2, 8, 40, 56), nearest x2
        assert torch.allclose(x8(lr_imgs), x4.conv_block3(upsampled), atol=1e-5)


TINY_X2 = [*TINY, *QUICK_X2, '--val-set', 'none']


def test_deterministic_runs_give_bit_identical_checkpoints(demo_data, tmp_path):
    """Two runs with the same flags and seed, in two processes of two threads each (run_process): the same bits."""
    args = ['--data-folder', demo_data, *TINY_X2, '--iterations', 3, '--seed', 5, '--deterministic']
    result = run_process('train_srresnet.py', *args, '--output-dir', tmp_path / 'a')
    assert 'deterministic (2 threads)' in result.stdout
    run_process('train_srresnet.py', *args, '--output-dir', tmp_path / 'b')
    a, b = (load_checkpoint(tmp_path / name / 'last.pt') for name in 'ab')
    assert a['model'].keys() == b['model'].keys() and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    for state_a, state_b in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_deterministic_switches_on_deterministic_kernels(demo_data, tmp_path, monkeypatch, capsys):
    """What --deterministic sets, in this process: torch's deterministic kernels (warning, not stopping, where CUDA has
    none), cuDNN's, and cuBLAS's fixed workspace; a run without it leaves them as they are."""
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    args = ['--data-folder', str(demo_data), *map(str, TINY_X2), '--iterations', '1']
    try:
        train_srresnet.main([*args, '--output-dir', str(tmp_path / 'plain')])
        assert not torch.are_deterministic_algorithms_enabled() and 'CUBLAS_WORKSPACE_CONFIG' not in os.environ
        train_srresnet.main([*args, '--output-dir', str(tmp_path / 'deterministic'), '--deterministic'])
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
        threads = torch.get_num_threads()
        assert f', deterministic ({threads} thread{"s" * (threads > 1)})' in capsys.readouterr().out
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_the_cosine_schedule_falls_from_lr_to_zero_at_the_last_iteration_and_resumes_on_it(demo_data, tmp_path):
    """--lr-schedule cosine (not the paper's default): lr x (1 + cos(pi t / T)) / 2 at step t of T = --iterations,
    the same whether the run was resumed half way or not."""
    args = ['--data-folder', demo_data, '--output-dir', tmp_path, *TINY, *QUICK_X2, '--val-set', 'none',
            '--lr', 1e-3, '--lr-schedule', 'cosine', '--iterations', 6]
    cli('train_srresnet.py', *args[:-1], 3)  # the first 3 of a 3-iteration run: lr reaches 0 at its end...
    assert [row['lr'] for row in train_rows(tmp_path)] == pytest.approx([1e-3, 7.5e-4, 2.5e-4])
    cli('train_srresnet.py', *args, '--resume', 'auto')  # ...then stretched to 6: the rest follows the new T
    expected = [1e-3 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(3, 6)]
    assert [row['lr'] for row in train_rows(tmp_path)][3:] == pytest.approx(expected)
    assert expected[-1] < 1e-4  # near 0 at the last step


@pytest.mark.parametrize('pixel_loss', ['mse', 'l1'])
def test_pixel_loss_is_the_one_the_step_optimises(pixel_loss, demo_data, tmp_path):
    """--pixel-loss l1 trains on the mean absolute error (EDSR's), mse on the squared one (the paper's): the loss a
    step returns is that of the model before the step, and the run records which it was."""
    torch.manual_seed(0)
    model = SRResNet(n_blocks=1, scaling_factor=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr_imgs, hr_imgs = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        sr_imgs = model(lr_imgs)
    expected = {'mse': ((sr_imgs - hr_imgs) ** 2).mean(), 'l1': (sr_imgs - hr_imgs).abs().mean()}
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    values = train_srresnet.train_step(model, train_srresnet.PIXEL_LOSSES[pixel_loss], optimizer, scaler,
                                       (lr_imgs, hr_imgs), None)
    assert torch.allclose(values['loss'], expected[pixel_loss], rtol=1e-5)
    assert not torch.allclose(expected['mse'], expected['l1'], rtol=0.1)  # the two differ on these images
    with torch.no_grad():
        assert not torch.equal(model(lr_imgs), sr_imgs)  # and the step moved the weights
    train_srresnet.main(['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SMALL, *TINY,
                         '--iterations', '1', '--val-set', 'none', '--pixel-loss', pixel_loss])
    assert load_checkpoint(tmp_path / 'last.pt')['config']['pixel_loss'] == pixel_loss

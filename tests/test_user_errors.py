"""What a user can get wrong is one line that says what to do, never a traceback (issue 15's cases 8, 10, 13-16,
21, 22 and their siblings): bad flag values refused at parse time, files that are not checkpoints named for what
they are, a full disk, Ctrl-C, an -o that is a file."""

import argparse
import os

import pytest
import torch

import super_resolve
import train_srgan
import train_srresnet
from checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from conftest import REPO, SMALL, cli, photo, run_process
from inference import MIN_TILE, MIN_TILE_OVERLAP, Upscaler, load_generator, tiling
from models import SRResNet
from outputs import OutputError
from images import load_image
from utils import UserError, convert_image, downsample

SHIPPED = REPO / 'weights' / 'srresnet_x4.pt'


def one_error_line(result):
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------------------------
# 22. Every numeric flag of every script is checked at parse time

class _Parser(Exception):
    pass


def parser_of(main):
    """The ArgumentParser a script's main/get_args builds, caught at its parse_args call."""
    def capture(self, *args, **kwargs):
        raise _Parser(self)
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        main()
    except _Parser as e:
        return e.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError('no parser')


def script_parsers():
    import checkpoints
    import create_data_lists
    import eval as eval_py
    return {'train_srresnet': train_srresnet.get_args, 'train_srgan': train_srgan.get_args,
            'super_resolve': super_resolve.parse_args, 'eval': eval_py.main, 'checkpoints': checkpoints.main,
            'create_data_lists': create_data_lists.main}


# typed flags that take text, not a number: test_an_extension_is_checked_when_parsed, and --degrade's stages
# (tests/test_degradations.py)
TEXT_FLAGS = {'--ext', '--degrade'}


def test_an_extension_is_checked_when_parsed():
    assert super_resolve.parse_args(['a.png', '--ext', 'png']).ext == '.png'
    assert super_resolve.parse_args(['a.png', '--ext', '.JPG']).ext == '.JPG'
    with pytest.raises(argparse.ArgumentTypeError, match=r'^\.gif: images are written as \.png, '):
        super_resolve.image_extension('gif')


@pytest.mark.parametrize('script', ['train_srresnet', 'train_srgan', 'super_resolve', 'eval', 'create_data_lists',
                                    'checkpoints'])
def test_every_numeric_flag_is_range_checked_at_parse_time(script):
    parser = parser_of(script_parsers()[script])
    numeric = [action for action in parser._actions
               if action.type is not None and action.type is not str and action.option_strings[0] not in TEXT_FLAGS]
    unchecked = [action.option_strings[0] for action in numeric if action.type in (int, float) and not action.choices]
    assert not unchecked  # a bare int/float takes -1, 0 or nan, and a library fails on it later
    for action in numeric:
        if action.choices:
            continue
        for bad in ('nan', 'inf', '-1', 'x'):
            expected = f"^'?{bad}'? is not (an integer|a number|a length of time)"  # --time-budget: 90s, 10m, 2h
            with pytest.raises(argparse.ArgumentTypeError, match=expected):
                action.type(bad)


@pytest.mark.parametrize('flags, message', [
    (['--lr', 'nan'], 'argument --lr: nan is not a number > 0'),
    (['--beta1', '1'], 'argument --beta1: 1 is not a number >= 0 and < 1'),
    (['--crop-size', '0'], 'argument --crop-size: 0 is not an integer >= 8'),
    (['--seed', '-1'], 'argument --seed: -1 is not an integer >= 0 and < 2147483648'),
    (['--n-blocks', '0'], 'argument --n-blocks: 0 is not an integer >= 1'),
    (['--blur-sigma', '-0.5'], 'argument --blur-sigma: -0.5 is not a number >= 0'),
    (['--lr-decay-at', '-5'], 'argument --lr-decay-at: -5 is not an integer >= 0'),
])
def test_bad_training_flags_are_one_usage_line(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train_srresnet.get_args(flags)
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_integer_flags_take_the_papers_1e6():
    assert train_srresnet.get_args(['--iterations', '1e6', '--lr-decay-at', '5e5']).iterations == 1_000_000


# ---------------------------------------------------------------------------------------------------------------
# 8. Tiles too small to match the untiled output are refused

@pytest.mark.parametrize('flags, message', [
    (['--tile', '1'], f'--tile 1 is too small: tiles under {MIN_TILE} LR pixels leave visible seams'),
    (['--tile', '3'], '--tile 3 is too small'),
    (['--tile', '64', '--tile-overlap', '40'], '--tile-overlap 40 must be between 16 (less leaves visible seams) and '
                                                'half of --tile 64 (32)'),
    (['--tile', '64', '--tile-overlap', '4'], '--tile-overlap 4 must be between 16'),
    (['--tile', '-2'], 'argument --tile: -2 is not an integer >= 0'),
    (['--halve'], '--halve applies to --grid only'),
])
def test_bad_tiles_are_refused_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        super_resolve.parse_args(['a.png', *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_default_overlap_shrinks_with_a_small_tile():
    assert tiling(256) == (256, 24) and tiling(32) == (32, 16) and tiling(0) == (None, 24)
    assert super_resolve.parse_args(['a.png', '--tile', '40']).tile_overlap == 20


def test_the_smallest_accepted_tiles_match_the_untiled_output():
    """The shipped SRResNet at the smallest tile and overlap accepted stays within the tiling test's bound (mean
    1/255, max 8/255) of the untiled output; measured on Set14/BSD100 crops: <= 0.06 / 4."""
    if not SHIPPED.is_file():
        pytest.skip('no shipped model')
    from datasets import DEMO_TEST_IMAGES, demo_images
    hr = load_image(demo_images(DEMO_TEST_IMAGES)[0]).crop((100, 0, 420, 256))  # astronaut: face, flag, suit
    lr = convert_image(downsample(hr, 4), 'pil', 'imagenet-norm')  # (3, 64, 80)
    model = load_generator(SHIPPED)
    whole = Upscaler(model, 4, tile=None).tiled(lr)
    tiled = Upscaler(model, 4, *tiling(MIN_TILE, MIN_TILE_OVERLAP)).tiled(lr)
    difference = (tiled - whole).abs() / 2  # on the [0, 1] scale
    assert difference.mean() < 1 / 255 and difference.max() < 8 / 255


# ---------------------------------------------------------------------------------------------------------------
# 13, 21. A file that is not a generator checkpoint is named for what it is

@pytest.mark.parametrize('content, message', [
    (b'hello world\n', 'is a text file (starting "hello world"), not a checkpoint: expected a .pt file written by'),
    (b'', 'is an empty file (0 bytes), not a checkpoint'),
    ('png', 'is a PNG image, not a checkpoint'),
])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(content, message, tmp_path, capsys):
    model = tmp_path / 'model.pt'
    if content == 'png':
        photo(tmp_path / 'p.png').rename(model)
    else:
        model.write_bytes(content)
    photo(tmp_path / 'a.png')
    with pytest.raises(CheckpointError) as stop:
        super_resolve.main([str(tmp_path / 'a.png'), '--model', str(model), '-o', str(tmp_path / 'out')])
    assert str(stop.value) == f'{model} {message}' + str(stop.value).split(message)[1]
    assert 'pickled' not in str(stop.value) and '\n' not in str(stop.value)


@pytest.mark.parametrize('entry, message', [
    ({'model': {'layer1.weight': torch.zeros(1)}}, 'its "model" entry is not an SRResNet\'s weights (found keys such '
                                                   'as layer1.weight)'),
    ({'model': torch.zeros(3)}, 'its "model" entry is not an SRResNet\'s weights (found Tensor)'),
    ({'discriminator': {}}, 'it holds no generator weights'),
    ({'model_config': {'depth': 3}, 'model': SRResNet(n_blocks=1).state_dict()}, 'its "model_config" is not an '
                                                                                 'SRResNet architecture'),
])
def test_a_checkpoint_without_a_generator_is_one_line(entry, message, tmp_path):
    save_checkpoint({'kind': 'srresnet', **entry}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError) as error:
        load_generator(tmp_path / 'other.pt')
    assert str(error.value).startswith(f'{tmp_path / "other.pt"}: {message}')
    result = cli('super_resolve.py', photo(tmp_path / 'a.png'), '--model', tmp_path / 'other.pt', '-o', tmp_path,
                 check=False)
    assert one_error_line(result).startswith(f'error: {tmp_path / "other.pt"}: {message}')


def test_a_discriminator_as_srresnet_checkpoint_is_one_line(demo_data, tmp_path):
    save_checkpoint({'kind': 'srgan', 'discriminator': {'x': torch.zeros(1)}}, tmp_path / 'd.pt')
    result = cli('train_srgan.py', '--srresnet-checkpoint', tmp_path / 'd.pt', '--output-dir', tmp_path / 'run',
                 '--data-folder', demo_data, check=False)
    assert one_error_line(result).startswith(f'error: {tmp_path / "d.pt"}: it holds no generator weights')


# ---------------------------------------------------------------------------------------------------------------
# 14. An -o that is a file

def test_an_existing_file_as_output_folder_is_one_line(tmp_path, tiny_model):
    (tmp_path / 'in').mkdir()
    photo(tmp_path / 'in' / 'a.png')
    (tmp_path / 'notes').write_text('mine')
    with pytest.raises(OutputError, match=r'-o .*notes: cannot write a file without an extension here; name it'):
        super_resolve.main([str(tmp_path / 'in'), '-o', str(tmp_path / 'notes'), '--model', str(tiny_model)])
    assert (tmp_path / 'notes').read_text() == 'mine'
    result = cli('train_srresnet.py', '--output-dir', tmp_path / 'notes', '--data-folder', tmp_path, check=False)
    assert one_error_line(result) == f'error: --output-dir {tmp_path / "notes"} is a file; name a folder'


# ---------------------------------------------------------------------------------------------------------------
# 15. A full disk: one line, and the last checkpoint intact

@pytest.mark.parametrize('what', ['checkpoint', 'sample sheet'])
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(what, demo_data, tmp_path):
    args = ['--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, '--n-blocks', '1', '--checkpoint-every', 2,
            '--val-set', 'none' if what == 'checkpoint' else 'demo', '--val-every', 2]
    cli('train_srresnet.py', *args, '--iterations', 2)
    before = (tmp_path / 'last.pt').read_bytes()
    # the sheets are ~100 kB, the checkpoint ~5 MB: a limit below either makes that write fail
    limit = len(before) // 2 if what == 'checkpoint' else 20_000
    result = run_process('train_srresnet.py', *args, '--iterations', 4, '--resume', 'auto', file_size_limit=limit,
                         check=False)
    failed = tmp_path / ('last.pt' if what == 'checkpoint' else 'samples/iter_0000004.png')
    assert one_error_line(result).startswith(f'error: could not write {failed}: ')
    assert one_error_line(result).endswith(f'{tmp_path / "last.pt"} (iteration 2) is the last good state. Free some '
                                           f'space (or choose another --output-dir) and continue with --resume auto')
    assert (tmp_path / 'last.pt').read_bytes() == before
    assert not [name for name in os.listdir(tmp_path) if 'partial' in name]
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 2


def test_a_full_disk_while_upscaling_is_one_line_per_file(tmp_path, tiny_model):
    inputs = [photo(tmp_path / f'{name}.png', (64, 64), seed) for seed, name in enumerate('ab')]
    result = run_process('super_resolve.py', *inputs, '-o', tmp_path / 'out', '--model', tiny_model,
                         file_size_limit=4000, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert sum(line.startswith('error: could not write ') and 'File too large' in line for line in lines) == 2
    assert lines[-1] == 'error: 0 written, 0 skipped (already there), 2 failed'
    assert os.listdir(tmp_path / 'out') == []  # nothing half-written


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume(demo_data, tmp_path):
    args = ['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SMALL, '--n-blocks', '1',
            '--val-set', 'none']
    train_srresnet.main([*args, '--iterations', '2'])
    with open(tmp_path / 'log.jsonl', 'a') as f:
        f.write('{"iteration": 3, "lo')  # killed while writing
    train_srresnet.main([*args, '--iterations', '3', '--resume', 'auto'])
    from pictures import read_log
    assert [row['iteration'] for row in read_log(tmp_path / 'log.jsonl')] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------
# 16. Ctrl-C in the middle of a folder

def test_ctrl_c_during_a_folder_is_one_line_and_keeps_the_finished_files(tmp_path, tiny_model, monkeypatch,
                                                                         capsys):
    inputs = [photo(tmp_path / f'{name}.png') for name in 'abc']
    original, calls = super_resolve.super_resolve_file, []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    monkeypatch.setattr(super_resolve, 'super_resolve_file', interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):  # run_main then says 'stopped (Ctrl-C)' and exits 130
        super_resolve.main([*map(str, inputs), '-o', str(tmp_path / 'out'), '--model', str(tiny_model)])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        '1 written, 0 skipped, 0 failed, 2 not done; the same command goes on from there (it skips what exists)')
    assert sorted(os.listdir(tmp_path / 'out')) == ['a_x2.png']


# ---------------------------------------------------------------------------------------------------------------
# 10. A resumed SRGAN run keeps its loss

def test_resuming_srgan_with_another_loss_is_refused(demo_data, tmp_path):
    args = ['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SMALL, '--val-set', 'none',
            '--srresnet-checkpoint', 'none', '--content-loss', 'mse']
    train_srgan.main([*args, '--iterations', '1'])
    for flags, message in ((['--content-loss', 'vgg22'], '--content-loss mse, not vgg22; resume it with '
                                                         '--content-loss mse'),
                           (['--adversarial-weight', '0.01'], '--adversarial-weight 0.001, not 0.01; resume it with '
                                                              '--adversarial-weight 0.001')):
        with pytest.raises(UserError, match=f'the run being resumed trains with {message}'):
            train_srgan.main([*args, *flags, '--iterations', '2', '--resume', 'auto', '--vgg-weights', 'none'])
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 1


@pytest.mark.parametrize('script', ['train_srresnet.py', 'train_srgan.py', 'eval.py', 'super_resolve.py',
                                    'create_data_lists.py', 'checkpoints.py'])
def test_ctrl_c_anywhere_in_a_script_is_one_line(script, monkeypatch):
    """Every script runs its main() through utils.run_main: Ctrl-C (here while it reads its arguments; also a
    training run's second one, which stops without saving) is 'stopped (Ctrl-C)' and exit status 130, not a
    KeyboardInterrupt traceback."""
    text = (REPO / script).read_text()  # run_main(main) last: after every function main may call
    assert text.rstrip().endswith('    run_main(main)')
    assert text.rfind("if __name__ == '__main__':") > text.rfind('def ')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', interrupted)
    result = cli(script, check=False)
    assert result.returncode == 130 and result.stderr.strip() == 'stopped (Ctrl-C)'

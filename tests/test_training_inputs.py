"""What training reads and writes (issue 26): the data lists (one reader; every listed image present and readable
when training starts), the training log (one reader: rows of the expected shape, others skipped with a count),
--animate on a damaged run, --trunk-from at the same scale, where a run and its animation may be written, a run
stopped by a signal, and one with nothing left to do. Tiny images and models: the file runs in seconds."""

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import train_srresnet
import monitor
from checkpoints import load_checkpoint, save_checkpoint
from conftest import QUICK_X2, TINY, photo
from datasets import DataListError, read_image_list
from models import SRResNet
from outputs import OutputError
from pictures import read_log
from utils import UserError

TINY_X2 = [*TINY, *QUICK_X2]


@pytest.fixture
def data(tmp_path):
    """images/ (three training pictures, one test picture) and data/ (their lists, as create_data_lists.py writes)."""
    train = [str(photo(tmp_path / 'images' / 'train' / f'{k}.png', (40, 32), seed=k)) for k in range(3)]
    test = [str(photo(tmp_path / 'images' / 'test' / 'a.png', (40, 32), seed=9))]
    folder = tmp_path / 'data'
    folder.mkdir()
    (folder / 'train_images.json').write_text(json.dumps(train))
    (folder / 'tiny_test_images.json').write_text(json.dumps(test))
    return SimpleNamespace(folder=folder, train=train, test=test)


def train(data, output_dir, *flags):
    return train_srresnet.main(['--data-folder', str(data.folder), '--output-dir', str(output_dir), *TINY_X2,
                                '--iterations', '1', '--val-set', 'none', *flags])


# ---------------------------------------------------------------------------------------------------------------
# The data lists

@pytest.mark.parametrize('content, message', [
    (None, 'not found; write the data lists first with `python create_data_lists.py`'),
    (b'\xff\xfe not json', 'is not JSON, so not a data list; rebuild the lists with create_data_lists.py'),
    (b'{"images": ["a.png"]}', 'is JSON but not a list of image paths; rebuild the lists'),
    (b'["a.png", 3]', 'is JSON but not a list of image paths'),
    (b'[]', 'lists no images; rebuild the lists'),
])
def test_a_data_list_of_another_shape_is_one_line(tmp_path, content, message):
    path = tmp_path / 'train_images.json'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataListError, match=f'^{path}') as error:
        read_image_list(path)
    assert message in str(error.value) and '\n' not in str(error.value)


def test_a_data_list_reads_as_its_paths(tmp_path):
    (tmp_path / 'list.json').write_text('["a.png", "sub/b.jpg"]')
    assert read_image_list(tmp_path / 'list.json') == ['a.png', 'sub/b.jpg']


@pytest.mark.parametrize('damage, cache', [('deleted', 'auto'), ('deleted', 'off'), ('cut short', 'auto'),
                                           ('not a file', 'off')])
def test_a_listed_image_that_cannot_be_used_is_one_line_when_training_starts(data, tmp_path, damage, cache):
    """It was a FileNotFoundError traceback (decoded_size) or an ImageLoadError traceback (ImageCache.build) on the
    default cache path; now one line naming the first bad image, how many, and what to do; nothing written."""
    bad = data.train[1]
    os.remove(bad)
    if damage == 'cut short':
        Image.new('RGB', (40, 32)).save(bad)
        with open(bad, 'r+b') as f:
            f.truncate(os.path.getsize(bad) // 2)
    elif damage == 'not a file':
        os.mkdir(bad)
    with pytest.raises(DataListError) as error:
        train(data, tmp_path / 'run', '--image-cache', cache)
    message = str(error.value)
    assert message.startswith(f'{data.folder / "train_images.json"}: 1 of 3 listed images cannot be used, the '
                              f'first: {bad}: ')
    assert message.endswith('rebuild the lists with create_data_lists.py (it skips files it cannot use)')
    assert '\n' not in message and not (tmp_path / 'run').exists()


# ---------------------------------------------------------------------------------------------------------------
# Where a run writes

def test_the_output_dir_is_a_folder_outside_the_folders_of_the_listed_images(data, tmp_path):
    """Sample sheets are PNG files: inside an image folder, the next create_data_lists.py would list them."""
    for output_dir in (tmp_path / 'images' / 'train' / 'run', tmp_path / 'images' / 'test'):
        with pytest.raises(OutputError, match=f'^--output-dir {output_dir} is inside .*images/(train|test), which '
                                              f'this command reads as input'):
            train(data, output_dir, '--val-set', 'tiny')
    (tmp_path / 'notes').write_text('mine')
    with pytest.raises(OutputError, match='is a file; name a folder'):
        train(data, tmp_path / 'notes')
    assert (tmp_path / 'notes').read_text() == 'mine'
    assert sorted(os.listdir(tmp_path / 'images' / 'train')) == ['0.png', '1.png', '2.png']


def test_a_run_without_validation_does_not_point_to_animate(data, tmp_path, capsys):
    """--val-set none makes no sample sheets: the run used to end with a note to pass a run's folder to --animate."""
    train(data, tmp_path / 'run')
    out = capsys.readouterr()
    assert 'done: 1 iterations' in out.out
    assert '--animate' not in out.out + out.err and 'samples' not in out.out + out.err
    assert not (tmp_path / 'run' / 'progress.webp').exists()


def test_a_stopped_run_is_a_user_error_with_the_signals_exit_status(data, tmp_path, monkeypatch):
    def got_sigterm(self, run):
        self.signal_name, self.signal_number = 'SIGTERM', signal.SIGTERM
        return True
    monkeypatch.setattr(monitor.StopSignals, 'requested', got_sigterm)
    with pytest.raises(UserError, match='^stopped by SIGTERM at iteration 1; continue with --resume auto$') as error:
        train(data, tmp_path / 'run', '--iterations', '5')
    assert error.value.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(tmp_path / 'run' / 'last.pt')['iteration'] == 1  # saved before it stopped


def test_resuming_a_finished_run_returns_with_nothing_to_do(data, tmp_path, capsys):
    """Not a SystemExit(0) from inside the library: main returns, having built and written nothing."""
    train(data, tmp_path / 'run', '--iterations', '2')
    before = (tmp_path / 'run' / 'last.pt').read_bytes()
    assert train(data, tmp_path / 'run', '--iterations', '2', '--resume', 'auto') is None
    assert 'is at iteration 2, --iterations is 2: nothing to do' in capsys.readouterr().out
    assert (tmp_path / 'run' / 'last.pt').read_bytes() == before


# ---------------------------------------------------------------------------------------------------------------
# --trunk-from at the same scale

def test_trunk_from_at_the_same_scale_copies_every_tensor(data, tmp_path, capsys):
    """Fine-tuning the shipped model (weights/srresnet_x4.pt at x4) used to start its sub-pixel stages at random."""
    config = dict(large_kernel_size=9, small_kernel_size=3, n_channels=8, n_blocks=1, scaling_factor=2)
    torch.manual_seed(0)
    donor = SRResNet(**config)
    with torch.no_grad():
        for t in donor.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t))  # BatchNorm statistics and PReLU slopes away from their defaults too
    recorded = {'n_channels': 8, 'n_blocks': 1, 'scaling_factor': 2}  # the kernel sizes left out: SRResNet's defaults
    save_checkpoint({'kind': 'srresnet', 'model_config': recorded, 'model': donor.state_dict()}, tmp_path / 'x2.pt')
    model = SRResNet(**config)
    n, stages = train_srresnet.load_trunk(model, config, tmp_path / 'x2.pt')
    expected = donor.state_dict()
    assert stages == 'copied' and n == len(expected)
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())

    train(data, tmp_path / 'run', '--trunk-from', str(tmp_path / 'x2.pt'))
    assert (f'--trunk-from: {n} tensors from {tmp_path / "x2.pt"}; every tensor, at the same scale: a fine-tuning '
            f'start') in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# The training log, and --animate on a damaged run

def fake_run(folder, iterations, size=(60, 40)):
    (folder / 'samples').mkdir(parents=True)
    rows = []
    for i, iteration in enumerate(iterations):
        Image.new('RGB', size, (40 + 60 * i,) * 3).save(folder / 'samples' / f'iter_{iteration:07d}.png')
        rows.append({'iteration': iteration, 'val_psnr_Set5': 20.0 + i, 'val_ssim_Set5': 0.5})
    (folder / 'log.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
    return folder


def test_the_log_reader_keeps_rows_of_the_expected_shape(tmp_path, capsys):
    lines = ['{"iteration": 1, "loss": 0.5}', '[1, 2, 3]', '{"loss": 0.4}', '{"iteration": 2, "val_psnr_Set5": "20"}',
             '', '{"iteration": "3", "loss": 0.3}', '{"iteration": 4, "loss": true}', 'not json',
             '{"iteration": 5, "loss": 0.2, "lr": 0.0001}', '{"iteration": 6, "lo']  # the last one cut short by a kill
    (tmp_path / 'log.jsonl').write_text('\n'.join(lines))
    rows = read_log(tmp_path / 'log.jsonl')
    assert rows == [{'iteration': 1, 'loss': 0.5}, {'iteration': 5, 'loss': 0.2, 'lr': 0.0001}]
    assert capsys.readouterr().err == (f'note: {tmp_path / "log.jsonl"}: 6 lines skipped, not log rows (a JSON object '
                                       f'with an integer "iteration" and numbers), the first: line 2\n')
    (tmp_path / 'whole.jsonl').write_text('{"iteration": 1, "loss": 0.5}\n{"iteration": 2, "loss": 0.4}')
    assert len(read_log(tmp_path / 'whole.jsonl')) == 2 and capsys.readouterr().err == ''  # no newline at the end


def test_animate_skips_log_lines_and_sheets_it_cannot_read(tmp_path, capsys):
    run = fake_run(tmp_path / 'run', [100, 200, 300])
    with open(run / 'log.jsonl', 'a') as log:
        log.write('[1, 2, 3]\n{"iteration": 200, "val_psnr_Set5": "21.5"}\n{"val_psnr_Set5": 30}\n')
    sheet = run / 'samples' / 'iter_0000300.png'
    sheet.write_bytes(sheet.read_bytes()[:60])  # a sheet cut short
    train_srresnet.main(['--animate', str(run)])
    out = capsys.readouterr()
    assert f'animation: {run}/progress.webp (2 frames, ' in out.out
    notes = out.err.strip().splitlines()
    assert len(notes) == 2 and notes[0].startswith(f'note: {run / "log.jsonl"}: 3 lines skipped, not log rows')
    assert notes[1].startswith(f'note: 1 sample sheet left out, unreadable; the first: {sheet}: ')
    with Image.open(run / 'progress.webp') as animation:
        assert animation.n_frames == 2

    for name in ('iter_0000100.png', 'iter_0000200.png'):  # none left that can be read: one line
        (run / 'samples' / name).write_bytes(b'')
    with pytest.raises(UserError, match=f'^{run}/samples: 3 of its 3 sample sheets cannot be read .*too few left'):
        train_srresnet.main(['--animate', str(run)])


def test_animate_replaces_the_runs_own_animation_but_no_other_file(tmp_path, capsys):
    run = fake_run(tmp_path / 'run', [100, 200])
    (run / 'progress.webp').write_bytes(b'an earlier animation')
    train_srresnet.main(['--animate', str(run)])  # the run's own: replaced
    assert (run / 'progress.webp').read_bytes()[:4] == b'RIFF'
    (tmp_path / 'mine.gif').write_bytes(b'mine')
    with pytest.raises(OutputError, match=f'^--animate-to {tmp_path / "mine.gif"} exists; pass --overwrite'):
        train_srresnet.main(['--animate', str(run), '--animate-to', str(tmp_path / 'mine.gif')])
    assert (tmp_path / 'mine.gif').read_bytes() == b'mine'
    train_srresnet.main(['--animate', str(run), '--animate-to', str(tmp_path / 'mine.gif'), '--overwrite'])
    assert (tmp_path / 'mine.gif').read_bytes()[:3] == b'GIF'
    (tmp_path / 'folder.webp').mkdir()
    refused = [(run / 'samples' / 'x.webp', 'which this command reads as input'),
               (run / 'log.jsonl', 'which this command reads|cannot write .jsonl'),
               (tmp_path / 'folder.webp', 'is a folder')]
    for path, message in refused:
        with pytest.raises(OutputError, match=message):
            train_srresnet.main(['--animate', str(run), '--animate-to', str(path), '--overwrite'])
    assert sorted(os.listdir(run / 'samples')) == ['iter_0000100.png', 'iter_0000200.png']
    assert read_log(run / 'log.jsonl')[-1]['iteration'] == 200


def test_a_missing_validation_image_is_one_line_before_training(data, tmp_path):
    """It used to be found at the first validation, --val-every iterations into the run."""
    os.remove(data.test[0])
    with pytest.raises(DataListError, match=f'^{data.folder / "tiny_test_images.json"}: 1 of 1 listed image cannot '
                                            f'be used, the first: {data.test[0]}: no such file; rebuild the lists'):
        train(data, tmp_path / 'run', '--val-set', 'tiny')
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('lists, chosen', [(['val', 'Set5', 'tiny'], 'val'), (['Set5', 'tiny'], 'Set5'),
                                           (['tiny'], 'tiny')])
def test_val_set_auto_validates_on_the_held_out_list_before_any_test_set(data, tmp_path, capsys, lists, chosen):
    """The held-out list (create_data_lists.py --val-images) chooses best.pt when it exists; a test set only when
    nothing else is listed, with a note; the checkpoints record which list chose."""
    (data.folder / 'tiny_test_images.json').unlink()
    for name in lists:
        (data.folder / f'{name}_test_images.json').write_text(json.dumps(data.test))
    train_srresnet.main(['--data-folder', str(data.folder), '--output-dir', str(tmp_path / 'run'), *TINY_X2,
                         '--iterations', '1'])
    assert load_checkpoint(tmp_path / 'run' / 'best.pt')['config']['val_set'] == chosen
    assert f'val_psnr_{chosen}' in read_log(tmp_path / 'run' / 'log.jsonl')[-1]
    noted = 'note: --val-set auto: validating on Set5, a test set, which then chooses best.pt'
    assert (noted in capsys.readouterr().out) == (chosen == 'Set5')

"""Nothing a user owns is lost, nothing fails silently (issue 15's data-loss cases and their siblings): outputs never
replace inputs or each other, a run's checkpoints are never overwritten by a new run, diverged weights never reach
a checkpoint and the message says what was kept. (A stopped run does not exit as a finished one: test_cli_flags.py's
test_signal_saves_last_pt_and_resume_continues, through a real process.)"""

import json
import os
import signal

import pytest
import torch

import create_data_lists
import super_resolve
import train_srresnet
from checkpoints import CheckpointError, load_checkpoint, main as checkpoint_tool, save_checkpoint
from conftest import SMALL, photo
from outputs import OutputError
from utils import UserError

SHORT_RUN = [*SMALL, '--n-blocks', '1', '--val-set', 'none']


def test_an_output_never_replaces_its_input(tmp_path, tiny_model):
    original = photo(tmp_path / 'a.png').read_bytes()
    for flags in (['-o', str(tmp_path), '--suffix', '', '--overwrite'], ['-o', str(tmp_path / 'a.png'), '--overwrite']):
        with pytest.raises(OutputError, match='which this command reads; write to another file'):
            super_resolve.main([str(tmp_path / 'a.png'), '--model', str(tiny_model), *flags])
    assert (tmp_path / 'a.png').read_bytes() == original


def test_two_inputs_never_write_one_output(tmp_path, tiny_model):
    for folder in ('c1', 'c2'):
        (tmp_path / folder).mkdir()
        photo(tmp_path / folder / 'a.png')
    photo(tmp_path / 'b.png')
    photo(tmp_path / 'b.jpg')
    cases = [[str(tmp_path / 'c1' / 'a.png'), str(tmp_path / 'c2' / 'a.png')],
             [str(tmp_path / 'b.png'), str(tmp_path / 'b.jpg'), '--ext', '.png']]
    for args in cases:
        with pytest.raises(OutputError, match='are one file'):
            super_resolve.main([*args, '-o', str(tmp_path / 'out'), '--model', str(tiny_model), '--overwrite'])
    assert not (tmp_path / 'out').exists()  # refused before any work


def test_an_output_folder_holding_every_input_is_an_error_not_zero_files(tmp_path, tiny_model):
    photo(tmp_path / 'a.png')
    with pytest.raises(OutputError, match=r'is inside .*, which this command reads as input'):
        super_resolve.main([str(tmp_path), '-o', str(tmp_path), '--model', str(tiny_model)])


def test_a_new_run_never_overwrites_a_best_pt(demo_data, tmp_path):
    save_checkpoint({'kind': 'srresnet', 'iteration': 7}, tmp_path / 'best.pt')
    for resume in ([], ['--resume', 'auto']):
        with pytest.raises(UserError, match='holds .*best.pt but no last.pt; continue from it with --resume'):
            train_srresnet.main(['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SHORT_RUN,
                                 '--iterations', '1', *resume])
    assert load_checkpoint(tmp_path / 'best.pt')['iteration'] == 7


def test_export_and_convert_never_overwrite(tmp_path, tiny_model, capsys):
    before = tiny_model.read_bytes()
    with pytest.raises(OutputError, match='which this command reads'):
        checkpoint_tool(['export', str(tiny_model), str(tiny_model), '--overwrite'])
    (tmp_path / 'out.pt').write_bytes(b'mine')
    for command in ('export', 'convert'):
        with pytest.raises(OutputError, match='exists; pass --overwrite'):
            checkpoint_tool([command, str(tiny_model), str(tmp_path / 'out.pt')])
    assert tiny_model.read_bytes() == before and (tmp_path / 'out.pt').read_bytes() == b'mine'


def test_resuming_an_exported_model_says_what_it_is(demo_data, tmp_path, tiny_model):
    save_checkpoint({'kind': 'srresnet', 'model_config': {}, 'model': {}, 'iteration': 4}, tmp_path / 'exported.pt')
    with pytest.raises(UserError, match='holds a srresnet model alone .*cannot be resumed'):
        train_srresnet.main(['--data-folder', str(demo_data), '--output-dir', str(tmp_path / 'run'), *SHORT_RUN,
                             '--resume', str(tmp_path / 'exported.pt')])


def test_data_lists_are_written_atomically(tmp_path, monkeypatch):
    create_data_lists.write_list(['a.png'], str(tmp_path), 'train_images.json')

    def full_disk(obj, f, **kwargs):
        f.write('["b.p')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(create_data_lists.json, 'dump', full_disk)
    with pytest.raises(OSError):
        create_data_lists.write_list(['b.png'], str(tmp_path), 'train_images.json')
    assert json.loads((tmp_path / 'train_images.json').read_text()) == ['a.png']
    assert os.listdir(tmp_path) == ['train_images.json']  # no partial file left


def test_divergence_on_a_fresh_run_says_nothing_was_saved(demo_data, tmp_path):
    with pytest.raises(UserError) as stop:
        train_srresnet.main(['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SHORT_RUN,
                             '--iterations', '6', '--lr', '1e30'])
    assert 'the training diverged' in str(stop.value) and 'no last.pt was saved yet' in str(stop.value)
    assert not (tmp_path / 'last.pt').exists()


def test_non_finite_weights_never_reach_a_checkpoint(demo_data, tmp_path, monkeypatch):
    import monitor
    monkeypatch.setattr(monitor, 'save_run', lambda *a: pytest.fail('saved non-finite weights'))
    original = monitor.Monitor.check_weights

    def wreck_then_check(self, sr_model, lr_imgs):  # a step whose own loss was finite wrecked them
        with torch.no_grad():
            next(sr_model.parameters()).fill_(float('nan'))
        return original(self, sr_model, lr_imgs)
    monkeypatch.setattr(monitor.Monitor, 'check_weights', wreck_then_check)
    with pytest.raises(UserError, match='non-finite model weights at iteration 1; the training diverged'):
        train_srresnet.main(['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SHORT_RUN,
                             '--iterations', '2', '--checkpoint-every', '1'])
    assert not (tmp_path / 'last.pt').exists()


def test_finite_but_wrecked_weights_never_reach_a_checkpoint(demo_data, tmp_path):
    """--lr 1e6: the first step's loss (computed before it) is finite, its weights are finite but wrecked, and the
    next step's loss is not: last.pt must keep the state before them, and resume from it."""
    args = ['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SHORT_RUN, '--checkpoint-every', '1']
    train_srresnet.main([*args, '--iterations', '2'])
    with pytest.raises(UserError) as stop:
        train_srresnet.main([*args, '--iterations', '6', '--resume', 'auto', '--lr', '1e6'])
    assert str(stop.value).startswith('weights that compute a non-finite output at iteration 3; the training '
                                      'diverged and stopped without saving: ')
    assert f'{tmp_path / "last.pt"} (iteration 2) is the last good state' in str(stop.value)
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 2
    train_srresnet.main([*args, '--iterations', '4', '--resume', 'auto'])  # the state kept is a good one
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 4


def test_resuming_a_finished_run_says_there_is_nothing_to_do(demo_data, tmp_path, capsys):
    args = ['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SHORT_RUN]
    train_srresnet.main([*args, '--iterations', '2'])
    train_srresnet.main([*args, '--iterations', '1', '--resume', 'auto'])  # returns: nothing is wrong
    assert 'nothing to do' in capsys.readouterr().out
    with pytest.raises(UserError, match='trains x4, not --scaling-factor 2; resume with --scaling-factor 4'):
        train_srresnet.main([*args, '--iterations', '3', '--resume', 'auto', '--scaling-factor', '2'])


def test_half_written_checkpoints_of_a_killed_run_are_removed(demo_data, tmp_path):
    args = ['--data-folder', str(demo_data), '--output-dir', str(tmp_path), *SHORT_RUN]
    train_srresnet.main([*args, '--iterations', '1'])
    (tmp_path / '.last.partial4242.pt').write_bytes(b'x' * 1000)  # what a kill during torch.save leaves
    (tmp_path / 'notes.txt').write_text('mine')
    train_srresnet.main([*args, '--iterations', '2', '--resume', 'auto'])
    assert sorted(os.listdir(tmp_path)) == ['last.pt', 'log.jsonl', 'loss_curves.png', 'notes.txt']


def test_an_empty_checkpoint_file_is_one_line(tmp_path):
    (tmp_path / 'empty.pt').write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'empty.pt is an empty file \(0 bytes\), not a checkpoint'):
        checkpoint_tool(['export', str(tmp_path / 'empty.pt'), str(tmp_path / 'out.pt')])


def test_stop_signals_catches_a_real_sigterm_and_close_puts_the_handlers_back():
    """The handlers the training loop installs, under a real signal (the exit status: test_cli_flags.py)."""
    from monitor import StopSignals
    stops = (signal.SIGINT, signal.SIGTERM)
    before = [signal.getsignal(sig) for sig in stops]
    stop = StopSignals()
    try:
        assert all(signal.getsignal(sig) is not handler for sig, handler in zip(stops, before))
        os.kill(os.getpid(), signal.SIGTERM)  # to this process: without the handler, pytest would end here
        assert stop.signal_number == signal.SIGTERM and stop.signal_name == 'SIGTERM'
    finally:
        stop.close()
    assert [signal.getsignal(sig) for sig in stops] == before

"""Resuming: an lr schedule moved on resume, frozen BatchNorm and the moving average across a resume, SIGKILL then
resume giving the same losses, DDP on CPU (gloo), RNG state in a weights-only checkpoint, and a checkpoint written
before the redesign. (Split from test_train.py so that the two halves run side by side under pytest -n 2.)"""

import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import REPO, SMALL, cli, last_line, run_process, start_process, train_rows
from checkpoints import load_checkpoint, save_checkpoint
from inference import load_generator
from models import SRResNet
from checkpoints import rng_state, set_rng_state


def test_srresnet_lr_decay_can_be_moved_on_resume(demo_data, tmp_path):
    args = ['--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, '--n-blocks', '1', '--val-set', 'none',
            '--augment']
    cli('train_srresnet.py', *args, '--iterations', 4, '--lr-decay-at', 2)
    assert [row['lr'] for row in train_rows(tmp_path)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])
    assert load_checkpoint(tmp_path / 'last.pt')['config']['augment'] is True
    cli('train_srresnet.py', *args, '--iterations', 7, '--lr-decay-at', 5, '--resume', 'auto')
    assert [row['lr'] for row in train_rows(tmp_path)][4:] == pytest.approx([1e-4, 1e-5, 1e-5])


def test_srresnet_freeze_bn_at_keeps_the_running_statistics_and_trains_the_rest(demo_data, tmp_path):
    args = ['--data-folder', demo_data, *SMALL, '--n-blocks', '1', '--val-set', 'none', '--checkpoint-every', 1]
    states = {}
    for name, iterations, extra in (('free', 3, []), ('frozen', 2, ['--freeze-bn-at', 2]),
                                    ('frozen', 4, ['--freeze-bn-at', 2, '--resume', 'auto'])):
        cli('train_srresnet.py', *args, '--output-dir', tmp_path / name, '--iterations', iterations, *extra)
        states[name, iterations] = load_checkpoint(tmp_path / name / 'last.pt')['model']
    bn = [k for k in states['free', 3] if k.endswith(('running_mean', 'running_var'))]
    weights = [k for k in states['free', 3] if k.endswith('.weight')]
    assert len(bn) == 2 * 3 and weights  # 2 BN layers in the block + the one after the blocks
    # without the flag a third iteration moves every BN statistic; with it, iterations 3 and 4 move none of them
    assert all(not torch.equal(states['free', 3][k], states['frozen', 2][k]) for k in bn)
    assert all(torch.equal(states['frozen', 4][k], states['frozen', 2][k]) for k in bn)
    assert all(not torch.equal(states['frozen', 4][k], states['frozen', 2][k]) for k in weights)
    assert load_checkpoint(tmp_path / 'frozen' / 'last.pt')['config']['freeze_bn_at'] == 2


def test_srresnet_ema_decay_averages_the_weights_and_is_what_the_checkpoint_serves(demo_data, tmp_path):
    args = ['--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, '--n-blocks', '1', '--val-set', 'demo',
            '--ema-decay', 0.75]
    cli('train_srresnet.py', *args, '--iterations', 1)
    first = load_checkpoint(tmp_path / 'last.pt')
    cli('train_srresnet.py', *args, '--iterations', 2, '--resume', 'auto')
    second = load_checkpoint(tmp_path / 'last.pt')
    floats = [k for k, v in second['model'].items() if v.is_floating_point()]
    assert any(k.endswith('running_var') for k in floats)
    assert 'conv_block2.conv_block.1.num_batches_tracked' in second['ema']
    for k, v in second['ema'].items():  # resumed average = 0.75 x the previous one + 0.25 x the new weights
        expected = 0.75 * first['ema'][k] + 0.25 * second['model'][k] if k in floats else second['model'][k]
        assert torch.allclose(v, expected, rtol=1e-5, atol=1e-7), k
    assert not torch.equal(second['ema']['conv_block1.conv_block.0.weight'],
                           second['model']['conv_block1.conv_block.0.weight'])
    # what validation measured, eval.py / super_resolve.py load and export keeps is the average
    ema_model = SRResNet(**second['model_config'])
    ema_model.load_state_dict(second['ema'])
    lr_imgs = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(load_generator(tmp_path / 'last.pt')(lr_imgs), ema_model.eval()(lr_imgs))
    result = cli('train_srresnet.py', *args, '--iterations', 3, '--resume', 'auto', '--ema-decay', 1,
                 check=False)
    assert result.returncode != 0 and 'argument --ema-decay: 1 is not a number >= 0 and < 1' in last_line(result)


def test_sigkill_then_resume_logs_the_same_losses(demo_data, tmp_path):
    # two threads (run_process's OMP_NUM_THREADS=2) and 64 channels: without --deterministic, the gradient of the tail's
    # indexing (speedups) is added by both threads at once, and a run in a few differs from the next by ~1e-7
    args = ['--data-folder', demo_data, *SMALL, '--workers', '1', '--n-blocks', '2', '--iterations', 10,
            '--checkpoint-every', 3, '--val-set', 'none', '--seed', 7, '--deterministic']
    run_process('train_srresnet.py', *args, '--output-dir', tmp_path / 'whole')

    killed = tmp_path / 'killed'
    process = start_process('train_srresnet.py', *args, '--output-dir', killed, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / 'last.pt').exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)  # no handler can run: what a power cut or the OOM killer does
    assert process.wait() == -signal.SIGKILL
    killed_at = load_checkpoint(killed / 'last.pt')['iteration']
    assert killed_at < 10 and len(train_rows(killed)) < 10

    run_process('train_srresnet.py', *args, '--output-dir', killed, '--resume', 'auto')
    whole, resumed = train_rows(tmp_path / 'whole'), train_rows(killed)
    assert [row['iteration'] for row in resumed] == list(range(1, 11))
    assert [row['loss'] for row in resumed] == [row['loss'] for row in whole]  # bit for bit
    a, b = load_checkpoint(tmp_path / 'whole' / 'last.pt'), load_checkpoint(killed / 'last.pt')
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_ddp_two_processes_gloo(demo_data, tmp_path):
    output_dir = tmp_path / 'ddp'

    def torchrun(*args):
        return run_process('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', 'train_srresnet.py',
                           '--data-folder', demo_data, '--output-dir', output_dir, *SMALL, '--n-blocks', '1',
                           '--val-set', 'none', '--checkpoint-every', '2', *args, env={'OMP_NUM_THREADS': '1'})

    result = torchrun('--iterations', 3)
    assert result.stdout.count('effective batch 4') == 1  # rank 0 alone prints and logs
    assert [row['iteration'] for row in train_rows(output_dir)] == [1, 2, 3]
    checkpoint = load_checkpoint(output_dir / 'last.pt')
    assert checkpoint['iteration'] == 3 and checkpoint['samples_seen'] == 3 * 2 * 2
    assert not any('.partial' in name for name in os.listdir(output_dir))

    torchrun('--iterations', 5, '--resume', 'auto')
    assert [row['iteration'] for row in train_rows(output_dir)] == [1, 2, 3, 4, 5]
    assert load_checkpoint(output_dir / 'last.pt')['iteration'] == 5


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    import random
    import numpy as np
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint({'rng': state}, tmp_path / 'rng.pt')
    set_rng_state(load_checkpoint(tmp_path / 'rng.pt')['rng'])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_srgan_resume_applies_a_moved_lr_decay(demo_data, tmp_path):
    """Both trainers compute the lr from the flags: a train_srgan.py run resumed with another --lr-decay-at follows it
    (it used to restore the old schedule and ignore the flag), and the note says so."""
    args = ['--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, '--srresnet-checkpoint', 'none',
            '--content-loss', 'mse', '--val-set', 'none']
    cli('train_srgan.py', *args, '--iterations', 2, '--lr-decay-at', 1000)
    result = cli('train_srgan.py', *args, '--iterations', 4, '--lr-decay-at', 3, '--resume', 'auto')
    assert '--lr-decay-at 3 (was 1000): applied from here on' in result.stdout
    assert [row['lr'] for row in train_rows(tmp_path)] == pytest.approx([1e-4, 1e-4, 1e-4, 1e-5])
    checkpoint = load_checkpoint(tmp_path / 'last.pt')
    assert [o['param_groups'][0]['lr'] for o in (checkpoint['optimizer_g'], checkpoint['optimizer_d'])] == [1e-5] * 2
    result = cli('train_srgan.py', *args, '--iterations', 5, '--lr', 3e-4, '--beta1', 0.5, '--resume', 'auto')
    assert [row['lr'] for row in train_rows(tmp_path)][4] == pytest.approx(3e-4)  # --lr-decay-at back to 100000
    checkpoint = load_checkpoint(tmp_path / 'last.pt')
    assert checkpoint['optimizer_g']['param_groups'][0]['betas'] == (0.5, 0.999)


def test_a_checkpoint_written_before_the_redesign_still_resumes(demo_data, tmp_path):
    """tests/data/srresnet_last_46b057d.pt: a 2-iteration run (--n-blocks 1 --n-channels 8 --ema-decay 0.5) written by
    the code of commit 46b057d. It loads for inference and resumes, its moving average included."""
    import shutil
    old = REPO / 'tests' / 'data' / 'srresnet_last_46b057d.pt'
    shutil.copy(old, tmp_path / 'last.pt')
    before = load_checkpoint(old)
    assert before['iteration'] == 2 and 'ema' in before
    model = load_generator(old)  # what eval.py and super_resolve.py load: the average
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', tmp_path, *SMALL, '--n-blocks', 1,
        '--n-channels', 8, '--ema-decay', 0.5, '--val-set', 'none', '--iterations', 3, '--resume', 'auto')
    after = load_checkpoint(tmp_path / 'last.pt')
    assert after['iteration'] == 3 and after['samples_seen'] == 3 * 2
    assert [row['iteration'] for row in train_rows(tmp_path)] == [3]  # its own log was not copied: only the new row
    for k, v in after['ema'].items():  # the old average carried on
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.5 * before['ema'][k] + 0.5 * after['model'][k], rtol=1e-5, atol=1e-7)
    assert after['optimizer']['state'] and not torch.equal(after['model']['conv_block1.conv_block.0.weight'],
                                                           before['model']['conv_block1.conv_block.0.weight'])
    result = cli('train_srresnet.py', '--data-folder', demo_data, '--output-dir', tmp_path, *SMALL,
                 '--val-set', 'none', '--iterations', 4, '--resume', 'auto', check=False)
    assert result.returncode == 1 and '--n-blocks and --n-channels' in last_line(result)  # not silently n_blocks 1

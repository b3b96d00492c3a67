"""Training by the clock: --time-budget stops a run at a saved checkpoint with exit status 0, and the same command with
--resume auto goes on to the weights an uninterrupted run reaches; the progress bar shows the time left; one line
estimates, from the first steps, how long --iterations will take. The budget's clock is faked (one second a reading)
where the test needs to know where a run stops."""

import pytest
import torch

import train_srgan
import train_srresnet
import monitor
import training
from checkpoints import load_checkpoint
from conftest import QUICK_X2, TINY, run_process, train_rows

QUICK = [*QUICK_X2, '--val-set', 'none']
TINY_RUN = [*TINY, *QUICK]  # an SRResNet of 0.01M parameters


@pytest.fixture
def fake_clock(monkeypatch):
    """SittingClock reads a clock that moves one second a reading: at the start of a sitting, then once a step; so a
    step takes 1 s and a budget of N s stops a sitting after N steps."""
    ticks = iter(range(10 ** 9))
    monkeypatch.setattr(monitor.SittingClock, 'now', staticmethod(lambda: float(next(ticks))))


@pytest.fixture
def keep_torch_settings():
    """--deterministic in this process switches on torch's deterministic kernels: switched off again after the test."""
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


@pytest.mark.parametrize('text, seconds', [('90s', 90), ('10m', 600), ('2h', 7200), ('1h30m', 5400), ('45', 45),
                                           ('1.5h', 5400), (' 2H ', 7200), ('0.5', 0.5), ('1d', 86400)])
def test_a_time_budget_is_read_with_its_unit(text, seconds):
    assert training.duration(text) == seconds


@pytest.mark.parametrize('text', ['', '0', '0m', '-5', '10x', 'm', '10 m', '5s5', '1e3', 'inf', 'nan', '1h 30m'])
def test_a_bad_time_budget_is_one_usage_line(text, capsys):
    for script in (train_srresnet, train_srgan):
        with pytest.raises(SystemExit) as exit_:
            script.get_args(['--time-budget', text])
        assert exit_.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].endswith(f"error: argument --time-budget: {text!r} is not a length of time > 0 such as 90s, "
                                  f"10m, 2h, 1h30m or a number of seconds"), lines
        assert lines[0].startswith('usage:') and len([line for line in lines if 'error' in line]) == 1


def test_durations_and_the_estimate_line_read_as_words():
    assert [monitor.format_duration(s) for s in (0, 0.4, 42, 60, 1044, 3601, 7200, 1_740_000)] == \
        ['0 s', '0 s', '42 s', '1 min', '17 min 24 s', '1 h', '2 h', '20 d 3 h']
    assert monitor.estimate_line(1.74, 1_000_000) == ('estimate: 1.74 s/iteration here -> 1,000,000 iterations would '
                                                       'take 20 d 3 h (use --time-budget, or a GPU)')
    assert monitor.estimate_line(0.0123, 1_000_000, device_type='cuda') == (
        'estimate: 0.0123 s/iteration here -> 1,000,000 iterations would take 3 h 25 min (use --time-budget)')
    assert monitor.estimate_line(1.74, 1000, 400) == ('estimate: 1.74 s/iteration here -> the 600 iterations left of '
                                                       '1,000 would take 17 min 24 s')  # short: no hint
    assert monitor.estimate_line(1.74, 1_000_000, 0, 'cpu', stop_at=344) == (
        'estimate: 1.74 s/iteration here -> 1,000,000 iterations would take 20 d 3 h; --time-budget stops this '
        'sitting at about iteration 344')
    assert 'stops this sitting' not in monitor.estimate_line(1.74, 600, 0, 'cpu', stop_at=900)  # the run ends first


def test_help_says_how_the_budget_goes_on_and_what_determinism_costs(capsys):
    for script in (train_srresnet, train_srgan):
        with pytest.raises(SystemExit) as exit_:
            script.get_args(['--help'])
        assert exit_.value.code == 0
        text = ' '.join(capsys.readouterr().out.split()).replace('- ', '-')  # argparse wraps lines at hyphens too
        assert 'the same command with --resume auto goes on, the budget counted afresh for that sitting' in text
        assert 'bit-identical checkpoints on one machine' in text and training.DETERMINISTIC_COST in text


def test_a_spent_budget_stops_at_a_checkpoint_and_resuming_gives_the_uninterrupted_weights(
        demo_data, tmp_path, fake_clock, keep_torch_settings, capsys):
    args = ['--data-folder', str(demo_data), *TINY_RUN, '--iterations', '6', '--seed', '3', '--deterministic']
    train_srresnet.main([*args, '--output-dir', str(tmp_path / 'whole')])
    out = capsys.readouterr().out
    assert out.count('estimate:') == 1  # after the 4th step: steps 2-4 took 1 s each on the fake clock
    assert 'estimate: 1 s/iteration here -> 6 iterations would take 6 s\n' in out

    clocked = [*args, '--output-dir', str(tmp_path / 'clocked'), '--time-budget', '4s']
    train_srresnet.main(clocked)  # returns: run_main's exit status 0, not a stopped run's
    out, err = capsys.readouterr()
    assert load_checkpoint(tmp_path / 'clocked' / 'last.pt')['iteration'] == 4  # 4 steps of 1 s: no time for a 5th
    assert 'estimate: 1 s/iteration here -> 6 iterations would take 6 s; --time-budget stops this sitting at about ' \
           'iteration 4\n' in out
    assert out.splitlines()[-1] == (f'time budget spent (4 s this sitting): iteration 4 of 6 saved in '
                                    f'{tmp_path / "clocked"}/last.pt; the same command with --resume auto goes on')
    assert 'budget left=0 s' in err and 'done:' not in out  # the progress bar; not a finished run
    assert (tmp_path / 'clocked' / 'loss_curves.png').is_file()  # the pictures of the run so far

    train_srresnet.main([*clocked, '--resume', 'auto'])  # the budget counts afresh: 4 s, 2 steps left
    assert 'done: 6 iterations' in capsys.readouterr().out
    whole, clocked = (load_checkpoint(tmp_path / name / 'last.pt') for name in ('whole', 'clocked'))
    assert clocked['iteration'] == 6 and whole['model'].keys() == clocked['model'].keys()
    assert all(torch.equal(whole['model'][k], clocked['model'][k]) for k in whole['model'])  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(whole['optimizer']['state'][0].values(),
                                                 clocked['optimizer']['state'][0].values()))
    assert [row['loss'] for row in train_rows(tmp_path / 'whole')] == \
        [row['loss'] for row in train_rows(tmp_path / 'clocked')]


def test_train_srgan_stops_on_its_budget_too(demo_data, tmp_path, fake_clock, capsys):
    output_dir = tmp_path / 'srgan'
    train_srgan.main(['--data-folder', str(demo_data), *QUICK, '--output-dir', str(output_dir), '--iterations', '5',
                      '--srresnet-checkpoint', 'none', '--content-loss', 'mse', '--time-budget', '2'])
    assert load_checkpoint(output_dir / 'last.pt')['iteration'] == 2
    assert capsys.readouterr().out.splitlines()[-1].startswith('time budget spent (2 s this sitting): iteration 2 of 5')


def test_a_spent_budget_exits_with_status_0_and_says_how_to_go_on(demo_data, tmp_path):
    """The real clock, through the command line: a budget spent before the first step ends stops after that step."""
    args = ['--data-folder', demo_data, *TINY_RUN, '--output-dir', tmp_path, '--iterations', 50,
            '--time-budget', '0.001']
    result = run_process('train_srresnet.py', *args)  # fails the test unless the exit status is 0
    assert result.stdout.strip().splitlines()[-1] == (f'time budget spent (0 s this sitting): iteration 1 of 50 saved '
                                                      f'in {tmp_path}/last.pt; the same command with --resume auto '
                                                      f'goes on')
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 1
    run_process('train_srresnet.py', *args, '--resume', 'auto')
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 2
    assert [row['iteration'] for row in train_rows(tmp_path)] == [1, 2]

"""The README's quick start, run as written (with fewer iterations) in a copy of the scripts, offline: the data
lists, SRResNet, SRGAN from it, the eval.py table and the visualize_sr grids. CI runs the tests, so the README's
command cannot rot. About a minute on two cores."""

import os
import re
import shutil
import sys

from PIL import Image

from conftest import REPO, run_process
from checkpoints import load_checkpoint

QUICKSTART = re.compile(r'<!-- quickstart[^>]*-->\s*```bash\n(.*?)```\s*<!-- /quickstart -->', re.S)


def quickstart_command():
    commands = QUICKSTART.findall((REPO / 'README.md').read_text())
    assert len(commands) == 1, 'README.md needs one ```bash block between <!-- quickstart --> and <!-- /quickstart -->'
    return commands[0]


def run_quickstart(command, cwd, env):
    # `python` is the interpreter running the tests, whatever the PATH holds
    script = f'python() {{ "{sys.executable}" "$@"; }}\n{command}'
    return run_process('-c', script, program='bash', cwd=cwd, env=env, check=False, timeout=600)


def test_readme_quickstart_runs_offline_and_writes_what_it_says(tmp_path):
    command = quickstart_command()
    assert command.count('--iterations') == 2 and 'runs/quickstart' in command
    short = re.sub(r'--iterations \d+', '--iterations 2 --batch-size 4', command)

    repo = tmp_path / 'repo'
    repo.mkdir()
    for script in REPO.glob('*.py'):  # the flat layout: the scripts are the whole program
        shutil.copy(script, repo)
    (repo / 'weights').mkdir()
    shutil.copy(REPO / 'weights' / 'srresnet_x4.pt', repo / 'weights')  # what the quick start fine-tunes
    # offline for certain: no cached VGG19 weights, and every download goes to a closed local port (refused at once)
    proxy = 'http://127.0.0.1:9'
    env = {k: None for k in os.environ if k.lower() in {'no_proxy', 'http_proxy', 'https_proxy'}}  # None: unset
    env.update(TORCH_HOME=str(tmp_path / 'torch'), http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy,
               HTTPS_PROXY=proxy, OMP_NUM_THREADS='2', PYTHONDONTWRITEBYTECODE='1')

    result = run_quickstart(short, repo, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    q = 'runs/quickstart'

    # each step says where its outputs are
    for line in (f'wrote {q}/data/train_images.json and {q}/data/demo_test_images.json',
                 f'done: 2 iterations, {q}/srresnet/last.pt', f'done: 2 iterations, {q}/srgan/last.pt',
                 f'wrote {q}/grids/astronaut_grid.png', f'wrote {q}/grids/chelsea_grid.png'):
        assert line in out, line

    # offline, SRGAN says so in one line and trains with the paper's MSE content loss
    notes = [line for line in out.splitlines() if 'VGG19' in line or 'Downloading' in line]
    assert len(notes) == 1 and notes[0].startswith('note: --content-loss auto: could not get the VGG19'), notes
    srresnet, srgan = load_checkpoint(repo / q / 'srresnet/last.pt'), load_checkpoint(repo / q / 'srgan/last.pt')
    assert (srresnet['kind'], srresnet['iteration'], srresnet['model_config']['n_blocks']) == ('srresnet', 2, 16)
    assert (srgan['kind'], srgan['iteration'], srgan['config']['content_loss']) == ('srgan', 2, 'mse')
    assert srgan['config']['srresnet_checkpoint'] == f'{q}/srresnet/last.pt'

    # the eval.py table: bicubic (its known value on the demo photos), SRResNet, SRGAN-MSE
    rows = {line.split(' | ')[0].strip('| '): line for line in out.splitlines() if line.startswith('| ')}
    assert rows['bicubic'].startswith('| bicubic | x4 | 29.15 / 0.8236 |')
    assert f'{q}/srresnet/last.pt (SRResNet)' in rows and f'{q}/srgan/last.pt (SRGAN-MSE)' in rows
    assert rows['weights/srresnet_x4.pt (SRResNet)'].startswith('| weights/srresnet_x4.pt (SRResNet) | x4 | 30.60 / ')
    assert 'every tensor, at the same scale: a fine-tuning start' in out

    # visualize_sr's 2x2 grids: 2 W + 3 margins wide (astronaut 512x512, margin 40; chelsea 448x300, margin 24)
    assert Image.open(repo / q / 'grids/astronaut_grid.png').size == (1144, 1144)
    assert Image.open(repo / q / 'grids/chelsea_grid.png').size == (968, 672)
    assert sorted(p.name for p in repo.iterdir()) == sorted([*(p.name for p in REPO.glob('*.py')), 'runs', 'weights'])

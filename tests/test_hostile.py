"""The classes, not the cases: every script run with generated hostile inputs and outputs (the same as an input, an
existing file, a folder, a file where a folder belongs, an unknown extension, a name at the length limit, inside an
input folder; inputs that are empty, truncated, of another format, of several frames, JSON of another shape).

For each combination: the script succeeds, or exits non-zero with one `error:` line (argparse's usage lines aside);
never a traceback; every file that was there before is byte-identical afterwards (no --overwrite is given), and an
output never lands on another's path. Scripts run in this process as their __main__ (conftest.cli), so the table runs
in well under a minute."""

import csv
import hashlib
import itertools
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import checkpoints
import create_data_lists
import deploy
import eval as eval_script
import super_resolve
import train_srgan
import train_srresnet
from conftest import cli, photo, save_srresnet

LONGEST = 'n' * 251  # + '.png': a legal name of 255 bytes
TOO_LONG = 'n' * 256  # too long with any extension, and as a folder's name


@pytest.fixture(scope='module')
def sandbox_template(tmp_path_factory):
    """One folder of every kind of input, good and hostile, copied for each case."""
    root = tmp_path_factory.mktemp('sandbox')
    (root / 'images').mkdir()
    for i in range(2):
        photo(root / 'images' / f'im{i}.png', seed=i)
    photo(root / 'good.png')
    frames = [Image.fromarray(np.full((20, 24, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(root / 'frames.gif', save_all=True, append_images=frames[1:])
    frames[0].save(root / 'pages.tif', save_all=True, append_images=frames[1:])
    (root / 'empty.png').write_bytes(b'')
    (root / 'truncated.png').write_bytes((root / 'good.png').read_bytes()[:60])
    (root / 'text.png').write_text('not an image\n')
    save_srresnet(root / 'model.pt', n_channels=8, n_blocks=1, scaling_factor=2)
    (root / 'empty.pt').write_bytes(b'')
    (root / 'truncated.pt').write_bytes((root / 'model.pt').read_bytes()[:500])
    shutil.copy(root / 'good.png', root / 'image.pt')
    (root / 'text.pt').write_text('{"model": 1}\n')
    (root / 'afile').write_text('a file where a folder belongs\n')
    for ext in ('.png', '.pt', '.onnx', '.csv', '.gif'):
        (root / f'existing{ext}').write_bytes(b'a file of the user\n')
    good_list = ['images/im0.png', 'images/im1.png']  # relative: each case's copy of the sandbox reads its own
    lists = {'data': good_list, 'lists_dict': {'a': 1}, 'lists_numbers': [1, 2, 3], 'lists_string': 'images/im0.png',
             'lists_missing': good_list + ['images/gone.png'], 'lists_bad_image': good_list + ['truncated.png']}
    for folder, content in lists.items():
        (root / folder).mkdir()
        (root / folder / 'train_images.json').write_text(json.dumps(content))
    (root / 'lists_truncated').mkdir()
    (root / 'lists_truncated' / 'train_images.json').write_text('["images/im0.png", ')
    run = root / 'run'
    (run / 'samples').mkdir(parents=True)
    for i in (1, 2):
        photo(run / 'samples' / f'iter_{i:07d}.png', (32, 16), seed=i)
    (run / 'log.jsonl').write_text('[1, 2, 3]\n{"loss": 1}\n{"iteration": 1, "val_psnr_x": "high"}\n'
                                   '{"iteration": 2, "val_psnr_x": 20.5}\n{"iterat')
    return root


@pytest.fixture
def sandbox(sandbox_template, tmp_path):
    root = tmp_path / 'sandbox'
    shutil.copytree(sandbox_template, root)
    return root


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob('*') if p.is_file()}


def run(module, argv, cwd):
    """`python module.py argv` in this process (conftest.cli), in `cwd` -> (exit status, stderr). A traceback fails
    the test."""
    result = cli(f'{module.__name__}.py', *argv, cwd=cwd, check=False)
    return result.returncode, result.stderr


# ----------------------------------------------------------------------------------------------------------------
# The table: (script, argv with {slots}) x hostile values for one slot at a time

GOOD = {'image': 'good.png', 'model': 'model.pt', 'out_image': 'out/result.png', 'out_pt': 'out/exported.pt',
        'out_onnx': 'out/model.onnx', 'out_csv': 'out/rows.csv', 'out_dir': 'out/page', 'list_folder': 'data',
        'images': 'images', 'run': 'run', 'out_anim': 'out/progress.gif', 'out_lists': 'out/lists',
        'out_run': 'out/run'}

TRAIN_FLAGS = ['--iterations', '1', '--batch-size', '2', '--crop-size', '16', '--workers', '0', '--device', 'cpu',
               '--scaling-factor', '2', '--val-set', 'none', '--compile', 'off', '--log-every', '1']
COMMANDS = {
    'super_resolve': (super_resolve, ['{image}', '--model', '{model}', '-o', '{out_image}', '--device', 'cpu']),
    'eval csv': (eval_script, ['{model}', '--test-folders', '{images}', '--csv', '{out_csv}', '--workers', '0',
                               '--device', 'cpu']),
    'eval html': (eval_script, ['{model}', '--test-folders', '{images}', '--html', '{out_dir}', '--workers', '0',
                                '--device', 'cpu']),
    'eval save-dir': (eval_script, ['{model}', '--test-folders', '{images}', '--save-dir', '{out_dir}',
                                    '--workers', '0', '--device', 'cpu']),
    'export': (checkpoints, ['export', '{model}', '{out_pt}']),
    'deploy': (deploy, ['{model}', '{out_onnx}']),
    'animate': (train_srresnet, ['--animate', '{run}', '--animate-to', '{out_anim}']),
    'lists': (create_data_lists, ['--test-folders', '{images}', '--output-folder', '{out_lists}', '--workers', '0']),
    'train': (train_srresnet, ['--data-folder', '{list_folder}', '--trunk-from', '{model}', '--output-dir',
                               '{out_run}', *TRAIN_FLAGS, '--n-channels', '8', '--n-blocks', '1']),
    'srgan': (train_srgan, ['--data-folder', '{list_folder}', '--srresnet-checkpoint', '{model}', '--output-dir',
                            '{out_run}', *TRAIN_FLAGS, '--content-loss', 'mse']),
}

HOSTILE_INPUTS = {
    'image': ['empty.png', 'truncated.png', 'text.png', 'frames.gif', 'pages.tif', 'model.pt', 'missing.png',
              'lists_dict/train_images.json', 'lists_numbers/train_images.json', 'lists_string/train_images.json',
              'lists_truncated/train_images.json', 'lists_missing/train_images.json'],
    'model': ['empty.pt', 'truncated.pt', 'image.pt', 'text.pt', 'good.png', 'missing.pt', 'images',
              'data/train_images.json'],
    'images': ['empty.png', 'afile', 'missing', 'run/samples'],
    'list_folder': ['images', 'missing', 'afile', 'lists_dict', 'lists_numbers', 'lists_string', 'lists_truncated',
                    'lists_missing', 'lists_bad_image'],
    'run': ['images', 'afile', 'missing', 'data', 'run/samples'],
}

def input_folder(slots):
    """The folder of input files a command reads: its images, its run's sample sheets (the run folder itself is where
    --animate writes by default), or the folder of the images its lists name."""
    return slots.get('images') or ('run/samples' if 'run' in slots else 'images' if 'list_folder' in slots else None)

HOSTILE_OUTPUTS = {  # what -> (the output given its command's slots and the output's extension, must it be refused)
    'same as an input': (lambda slots, ext: next((slots[s] for s in ('image', 'model', 'run') if s in slots), None),
                         True),
    'an existing file': (lambda slots, ext: f'existing{ext or ".png"}', None),  # refused, or skipped as it is
    'an input folder': (lambda slots, ext: input_folder(slots), True),
    'a file where a folder belongs': (lambda slots, ext: f'afile/out{ext}', True),
    'inside an input folder': (lambda slots, ext: input_folder(slots) and f'{input_folder(slots)}/new{ext}', True),
    'a name too long': (lambda slots, ext: f'out/{TOO_LONG}{ext}', True),
}
OUTPUT_SLOTS = {'out_image': '.png', 'out_pt': '.pt', 'out_onnx': '.onnx', 'out_csv': '.csv', 'out_dir': '',
                'out_anim': '.gif', 'out_lists': '', 'out_run': ''}


def cases():
    for name, (_, argv) in COMMANDS.items():
        slots = [s for s in GOOD if '{' + s + '}' in ' '.join(argv)]
        for slot in slots:
            for value in HOSTILE_INPUTS.get(slot, []):
                yield pytest.param(name, {slot: value}, False, id=f'{name}: {slot}={value}')
            if slot not in OUTPUT_SLOTS:
                continue
            ext = OUTPUT_SLOTS[slot]
            for what, (make, refused) in HOSTILE_OUTPUTS.items():
                value = make({s: GOOD[s] for s in slots}, ext)
                if value is not None:
                    yield pytest.param(name, {slot: value}, refused, id=f'{name}: {slot} {what}')
            if ext:
                yield pytest.param(name, {slot: 'out/result.unknownext'}, True, id=f'{name}: {slot} unknown ext')
                yield pytest.param(name, {slot: f'out/{LONGEST[:255 - len(ext)]}{ext}'}, None,
                                   id=f'{name}: {slot} at the length limit')


@pytest.mark.parametrize('name, hostile, refused', list(cases()))
def test_a_hostile_combination_succeeds_or_is_one_line(name, hostile, refused, sandbox):
    module, template = COMMANDS[name]
    slots = {**GOOD, **hostile}
    argv = [arg.format(**slots) for arg in template]
    before = snapshot(sandbox)
    code, err = run(module, argv, sandbox)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert 'Traceback' not in err
    if code == 2:  # argparse: its usage, then 'PROG: error: ...'
        assert lines and ': error: ' in lines[-1] and any(line.startswith('usage: ') for line in lines), err
    elif code:  # utils.run_main: 'error: ...', the last line
        assert lines and lines[-1].startswith('error: '), err
    if refused:
        assert code != 0, f'{name} {hostile}: exit 0, expected a refusal; stderr:\n{err}'
    after = snapshot(sandbox)
    changed = [str(p.relative_to(sandbox)) for p in before if after.get(p) != before[p]]
    assert not changed, f'{name} {hostile}: changed or removed {changed}'
    assert not [p for p in after if '.partial' in p.name], 'a temporary file was left behind'


def test_the_table_covers_every_script_and_every_hostile_class():
    ids = [c.id for c in cases()]
    assert len(ids) == len(set(ids)) and len(ids) > 100
    scripts = {module.__name__ for module, _ in COMMANDS.values()}
    assert scripts == {'super_resolve', 'eval', 'checkpoints', 'deploy', 'train_srresnet', 'train_srgan',
                       'create_data_lists'}
    for what in HOSTILE_OUTPUTS:
        assert any(what in i for i in ids)


# ----------------------------------------------------------------------------------------------------------------
# Several outputs of one command: never two on one path

COLLIDING_NAMES = [('a b.png', 'a_b.png'), ('x.png', 'x.jpg', 'sub/x.png'), ('A.png', 'a.png')]


@pytest.mark.parametrize('names', COLLIDING_NAMES, ids=[' + '.join(n) for n in COLLIDING_NAMES])
def test_eval_writes_one_file_per_image_and_model(names, sandbox):
    folder = sandbox / 'set'
    for i, name in enumerate(names):
        photo(folder / name, (24, 24), seed=i)
    (sandbox / 'm a').mkdir()
    (sandbox / 'm_a').mkdir()
    shutil.copy(sandbox / 'model.pt', sandbox / 'm a' / 'best.pt')
    shutil.copy(sandbox / 'model.pt', sandbox / 'm_a' / 'best.pt')
    argv = ['m a/best.pt', 'm_a/best.pt', '--test-folders', 'set', '--csv', 'rows.csv', '--save-dir', 'sr',
            '--html', 'page', '--workers', '0', '--device', 'cpu']
    code, err = run(eval_script, argv, sandbox)
    assert code == 0, err
    with open(sandbox / 'rows.csv') as f:
        rows = list(csv.DictReader(f))
    images = {row['image'] for row in rows}
    assert len(images) == len(names), rows
    n_models = 3  # bicubic (added by --html) and the two checkpoints
    assert len(rows) == len(names) * n_models
    assert len(list((sandbox / 'sr').rglob('*.png'))) == len(names) * 2  # the two checkpoints' SR images
    page_images = list((sandbox / 'page' / 'images').rglob('*.png'))
    assert len(page_images) == len(names) * (n_models + 1)  # and one HR each


def test_the_generated_cases_change_nothing_even_in_combination(sandbox):
    """Two hostile slots at once (a bad model and an output on an input) still refuse without touching anything."""
    before = snapshot(sandbox)
    for model, out in itertools.product(['empty.pt', 'model.pt'], ['good.png', 'images/im0.png']):
        code, err = run(super_resolve, ['good.png', 'images', '--model', model, '-o', out], sandbox)
        assert code != 0 and err.strip().splitlines()[-1].startswith('error: '), err
    assert snapshot(sandbox) == before


# ----------------------------------------------------------------------------------------------------------------
# The Python functions that write a file a caller names: never over what they read

def library_writers(root):
    """name -> (a call writing to `output`, the files it reads)."""
    model, photo = root / 'model.pt', root / 'good.png'
    return {
        'visualize_sr': (lambda output: super_resolve.visualize_sr(photo, srresnet_checkpoint=model, save_path=output,
                                                                   device='cpu'), [photo, model]),
        'export_generator': (lambda output: checkpoints.export_generator(model, output), [model]),
        'export_onnx': (lambda output: deploy.export_onnx(model, output), [model]),
        'create_demo_lists': (lambda output: create_data_lists.create_demo_lists(output), []),
    }


@pytest.mark.parametrize('writer', ['visualize_sr', 'export_generator', 'export_onnx'])
def test_a_library_writer_never_replaces_what_it_reads(writer, sandbox):
    from outputs import OutputError
    write, reads = library_writers(sandbox)[writer]
    before = snapshot(sandbox)
    for read in reads:
        with pytest.raises(OutputError, match='which this command reads'):
            write(read)
    with pytest.raises(OutputError, match='is a folder'):
        write(sandbox / 'images')
    assert snapshot(sandbox) == before


def test_the_demo_lists_never_replace_a_file_that_is_not_a_list(sandbox):
    from outputs import OutputError
    (sandbox / 'lists').mkdir()
    (sandbox / 'lists' / 'train_images.json').write_text('my notes\n')
    before = snapshot(sandbox)
    with pytest.raises(OutputError, match='is not a data list'):
        library_writers(sandbox)['create_demo_lists'][0](sandbox / 'lists')
    assert snapshot(sandbox) == before

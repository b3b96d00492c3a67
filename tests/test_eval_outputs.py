"""eval.py's outputs (--csv, --save-dir, --html) through the one output policy: no input replaced, no existing file
replaced without --overwrite, nothing written inside a test folder, names that never collide (rows, pages and saved
images say which image and which model they are); bicubic beside every model on the page; a model that loads and
then fails to run skipped and reported, not a traceback."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
import metrics
from checkpoints import CheckpointError
from conftest import photo, save_srresnet
from inference import Upscaler
from utils import UserError


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    """{scale: a tiny SRResNet checkpoint} for x2 and x4 (8 channels, 1 block)."""
    folder = tmp_path_factory.mktemp('models')
    return {s: save_srresnet(folder / f'tiny_x{s}.pt', seed=s, n_channels=8, n_blocks=1, scaling_factor=s)
            for s in (2, 4)}


def run(*args):
    """eval.py ARGS --workers 0 --device cpu in this process -> its UserError's message, or None when it ended well.
    Any other exception (a traceback) fails the test."""
    try:
        eval_py.main([*map(str, args), '--workers', '0', '--device', 'cpu'])
    except UserError as e:
        assert '\n' not in str(e)
        return str(e)
    return None


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def page_data(folder):
    """The cards of an --html page: what it shows of each image, its panels and their numbers."""
    text = (Path(folder) / 'index.html').read_text()
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1))


def snapshot(folder):
    """{path: bytes} of every file under `folder`."""
    return {p: p.read_bytes() for p in Path(folder).rglob('*') if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# No input replaced, no existing file replaced without --overwrite, nothing inside a test folder

def test_an_input_is_never_an_output_even_with_overwrite(tiny_models, tmp_path, capsys):
    """--csv m.pt used to replace the checkpoint with CSV text and exit 0; --csv naming a test image replaced it;
    --save-dir over the images a test list names wrote the SR images over them."""
    model = tmp_path / 'm.pt'
    model.write_bytes(tiny_models[2].read_bytes())
    photo(tmp_path / 'test' / 'a.png')
    listed = tmp_path / 'sr' / 'bicubic' / 'listed' / 'a.png'  # where --save-dir sr would write bicubic's a.png
    photo(listed, seed=1)
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'listed_test_images.json').write_text(json.dumps([str(listed)]))
    before = snapshot(tmp_path)
    for overwrite in ([], ['--overwrite']):
        listed_set = ['--test-sets', 'listed', '--data-folder', tmp_path / 'data']
        for args in (['--test-folders', tmp_path / 'test', '--csv', model],
                     ['--test-folders', tmp_path / 'test', '--csv', tmp_path / 'test' / 'a.png'],
                     [*listed_set, '--csv', tmp_path / 'data' / 'listed_test_images.json'],
                     [*listed_set, '--save-dir', tmp_path / 'sr']):
            message = run('bicubic', model, *args, *overwrite)
            assert message is not None and 'which this command reads; write to another file' in message, message
    assert snapshot(tmp_path) == before
    assert 'Traceback' not in capsys.readouterr().err


def test_existing_outputs_are_refused_without_overwrite_and_replaced_with_it(tmp_path, capsys):
    photo(tmp_path / 'test' / 'a.png')
    (tmp_path / 'page').mkdir()
    (tmp_path / 'page' / 'index.html').write_text('my own page')
    (tmp_path / 'rows.csv').write_text('my own table')
    photo(tmp_path / 'sr' / 'bicubic' / 'test' / 'a.png', seed=1)
    before = snapshot(tmp_path)
    outputs = {'--html': tmp_path / 'page', '--csv': tmp_path / 'rows.csv', '--save-dir': tmp_path / 'sr'}
    for flag, path in outputs.items():
        message = run('bicubic', '--test-folders', tmp_path / 'test', flag, path)
        assert message is not None and message.endswith('exists; pass --overwrite to replace it, or choose another '
                                                        'name')
    assert snapshot(tmp_path) == before  # refused before any work: nothing written, not even the page's images
    assert run('bicubic', '--test-folders', tmp_path / 'test', *[x for item in outputs.items() for x in item],
               '--overwrite') is None
    assert len(page_data(tmp_path / 'page')) == 1
    assert [r['image'] for r in read_csv(tmp_path / 'rows.csv')] == ['a']
    saved = tmp_path / 'sr' / 'bicubic' / 'test' / 'a.png'
    assert saved.read_bytes() != before[saved]
    assert not list(tmp_path.rglob('.*partial*'))


def test_outputs_inside_a_test_folder_are_refused(tmp_path):
    """The page's and --save-dir's images there were scored as test images by the next run (Set PSNR 20.75 ->
    25.40 dB)."""
    photo(tmp_path / 'test' / 'a.png')
    for flag, path in (('--html', tmp_path / 'test' / 'page'), ('--save-dir', tmp_path / 'test' / 'sr'),
                       ('--csv', tmp_path / 'test' / 'rows.csv')):
        message = run('bicubic', '--test-folders', tmp_path / 'test', flag, path)
        assert message is not None and f'is inside {tmp_path / "test"}, which this command reads as input' in message
    assert [p.name for p in (tmp_path / 'test').iterdir()] == ['a.png']


def test_csv_is_a_csv_and_two_test_sets_of_one_name_are_refused(tmp_path):
    photo(tmp_path / 'a' / 'set' / 'x.png')
    photo(tmp_path / 'b' / 'set' / 'y.png')
    message = run('bicubic', '--test-folders', tmp_path / 'a' / 'set', '--csv', tmp_path / 'rows.txt')
    assert message == f'--csv {tmp_path / "rows.txt"}: cannot write .txt here; name it *.csv'
    message = run('bicubic', '--test-folders', tmp_path / 'a' / 'set', tmp_path / 'b' / 'set')
    assert message == 'two test sets are named set; pass each once, or rename a folder'
    assert not list(tmp_path.rglob('*.txt'))


# ---------------------------------------------------------------------------------------------------------------
# Names without collisions: rows, page and saved images

def test_names_never_collide_and_numbers_stay_under_their_pictures(tiny_models, tmp_path, monkeypatch):
    """x.png, x.jpg and sub/x.png were 3 identical 'x' rows; 'a b.png' and 'a_b.png', or models 'm a/best.pt' and
    'm_a/best.pt', wrote one file (report.slug), so the page showed one picture under two sets of numbers."""
    folder = tmp_path / 'mine'
    for seed, name in enumerate(('x.png', 'x.jpg', 'sub/x.png', 'a b.png', 'a_b.png')):
        photo(folder / name, seed=seed)
    for seed, name in ((2, 'm a'), (4, 'm_a')):  # two different x2 models, by their weights
        (tmp_path / name).mkdir()
        save_srresnet(tmp_path / name / 'best.pt', seed=seed, n_channels=8, n_blocks=1, scaling_factor=2)
    monkeypatch.chdir(tmp_path)
    assert run('m a/best.pt', 'm_a/best.pt', '--test-folders', 'mine', '--csv', 'rows.csv', '--html', 'page',
               '--save-dir', 'sr') is None

    rows = read_csv('rows.csv')
    images = {'x.jpg': 'x.jpg', 'mine/x.png': 'x.png', 'sub/x.png': 'sub/x.png', 'a b': 'a b.png', 'a_b': 'a_b.png'}
    assert sorted({r['image'] for r in rows}) == sorted(images)
    assert len({(r['model'], r['image']) for r in rows}) == len(rows) == 3 * 5  # bicubic added by --html
    cards = page_data('page')
    assert sorted(card['image'] for card in cards) == sorted(images)
    sources = [card['hr'] for card in cards] + [p['src'] for card in cards for p in card['panels']]
    assert len(set(sources)) == len(sources) == 5 * 4
    for card in cards:  # the HR is the card's image; each panel's numbers are its own picture's
        hr = np.array(Image.open(Path('page') / card['hr']))
        assert np.array_equal(hr, np.asarray(Image.open(folder / images[card['image']]).convert('RGB')))
        hr_pm1 = torch.from_numpy(hr).permute(2, 0, 1).double() / 127.5 - 1
        for panel in card['panels']:
            sr = torch.from_numpy(np.array(Image.open(Path('page') / panel['src']))).permute(2, 0, 1)
            psnr, _ = metrics.evaluate_image(sr.double() / 127.5 - 1, hr_pm1, 2)
            # the same picture (8-bit rounding aside: 0.01 dB); another image would be dBs away
            assert psnr.item() == pytest.approx(panel['psnr'], abs=0.01), (card['image'], panel['model'])
            (row,) = [r for r in rows if r['image'] == card['image'] and r['model'] == panel['model']]
            assert float(row['psnr']) == pytest.approx(panel['psnr'], abs=1e-9)
            saved = [p for p in Path('sr').rglob('*.png')
                     if np.array_equal(np.asarray(Image.open(p)), sr.permute(1, 2, 0).numpy())]
            assert len(saved) == (panel['model'] != 'bicubic')  # --save-dir holds this very picture, once
    assert len(list(Path('sr').rglob('*.png'))) == 2 * 5  # the models named: not bicubic, added for the page


def test_a_test_list_keeps_the_standard_names(tmp_path):
    for name in ('baby', 'bird'):
        photo(tmp_path / 'Set5' / f'{name}.png')
    (tmp_path / 'data').mkdir()
    listed = [tmp_path / 'Set5' / 'baby.png', tmp_path / 'Set5' / 'bird.png', tmp_path / 'Set5' / '.' / 'baby.png']
    (tmp_path / 'data' / 'mine_test_images.json').write_text(json.dumps([str(path) for path in listed]))
    assert run('bicubic', '--test-sets', 'mine', '--data-folder', tmp_path / 'data', '--csv',
               tmp_path / 'rows.csv') is None
    assert [r['image'] for r in read_csv(tmp_path / 'rows.csv')] == ['baby', 'bird']  # an image listed twice: once


# ---------------------------------------------------------------------------------------------------------------
# Bicubic beside every model on the page

def test_the_page_shows_bicubic_beside_every_model_at_every_scale(tiny_models, tmp_path, capsys):
    """With x2 and x4 models, bicubic ran at x2 only while the page's note said it stood beside every model."""
    photo(tmp_path / 'test' / 'a.png')
    assert run('bicubic', tiny_models[2], tiny_models[4], '--test-folders', tmp_path / 'test', '--html',
               tmp_path / 'page', '--save-dir', tmp_path / 'sr', '--csv', tmp_path / 'rows.csv') is None
    out, err = capsys.readouterr()
    assert 'note: --html: bicubic also at x4, so that the page shows it beside every model' in err
    cards = page_data(tmp_path / 'page')
    assert sorted(card['scale'] for card in cards) == [2, 4]
    for card in cards:
        assert [panel['kind'] for panel in card['panels']].count('bicubic') == 1, card
    assert '| bicubic | x2 | ' in out and '| bicubic | x4 | ' in out
    bicubic = [r for r in read_csv(tmp_path / 'rows.csv') if r['model'] == 'bicubic']
    assert sorted(r['scale'] for r in bicubic) == ['2', '4']
    # --save-dir holds the models named: bicubic at x2 (the first checkpoint's scale), not the page's x4 one
    folders = sorted(p.relative_to(tmp_path / 'sr').parts[0] for p in (tmp_path / 'sr').rglob('*.png'))
    assert len(folders) == len(set(folders)) == 3 and folders[0] == 'bicubic'
    assert Image.open(tmp_path / 'sr' / 'bicubic' / 'test' / 'a.png').size == (24, 20)  # x2 of the 12x10 LR


# ---------------------------------------------------------------------------------------------------------------
# A model that loads but cannot run is skipped and reported, not a traceback

class Refusing(torch.nn.Module):
    """What a model whose runner refuses an input does (an .onnx fixed at 16x16): a CheckpointError naming it.
    fails_from: the call from which it refuses (1: the warm-up)."""

    def __init__(self, name, fails_from):
        super().__init__()
        self.name, self.fails_from, self.calls = name, fails_from, 0

    def forward(self, lr_imgs):  # (N, 3, h, w) -> (N, 3, 2 h, 2 w) in [-1, 1]
        self.calls += 1
        if self.calls >= self.fails_from:
            raise CheckpointError(f'{self.name}: its input is fixed at 16x16, not {tuple(lr_imgs.shape[2:])}; '
                                  f'export it again with `python deploy.py`')
        return torch.zeros(lr_imgs.shape[0], 3, lr_imgs.shape[2] * 2, lr_imgs.shape[3] * 2)


def test_a_model_that_fails_while_running_is_skipped_and_reported(tiny_models, tmp_path, monkeypatch, capsys):
    for seed in range(2):
        photo(tmp_path / 'test' / f'{seed}.png', seed=seed)
    fakes = {'fixed.onnx': Refusing('fixed.onnx', fails_from=2), 'uint8.onnx': Refusing('uint8.onnx', fails_from=1)}
    load_model = eval_py.load_model
    monkeypatch.setattr(eval_py, 'load_model', lambda name, *args: eval_py.Model(
        name, 'srresnet', 2, Upscaler(fakes[name], 2, tile=None)) if name in fakes else load_model(name, *args))
    message = run(tiny_models[2], 'fixed.onnx', 'uint8.onnx', '--test-folders', tmp_path / 'test',
                  '--csv', tmp_path / 'rows.csv', '--html', tmp_path / 'page')
    assert message == '2 models skipped; the table above leaves them out'
    assert fakes['fixed.onnx'].calls == 2 and fakes['uint8.onnx'].calls == 1  # not run again once it failed
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert errors == [
        f'error: fixed.onnx: its input is fixed at 16x16, not (10, 12); export it again with `python deploy.py` '
        f'(met on {tmp_path / "test" / "0.png"}; its results are left out)',
        'error: uint8.onnx: its input is fixed at 16x16, not (16, 16); export it again with `python deploy.py` '
        '(met on a 16x16 image; its results are left out)']
    assert 'Traceback' not in err and '.onnx' not in out
    rows = read_csv(tmp_path / 'rows.csv')
    assert sorted((r['model'], r['image']) for r in rows) == sorted(
        (model, image) for model in ('bicubic', str(tiny_models[2])) for image in ('0', '1'))
    shown = {panel['model'] for card in page_data(tmp_path / 'page') for panel in card['panels']}
    assert shown == {'bicubic', str(tiny_models[2])}  # fixed.onnx's first image left out too

    # and when no model can run, that is the one error
    fakes['uint8.onnx'].calls = 0
    assert run('uint8.onnx', '--test-folders', tmp_path / 'test').startswith('uint8.onnx: its input is fixed')


def _onnx_upscaler(path, metadata=None, fixed=None, two_inputs=False, uint8=False):
    """A nearest-neighbour x2 .onnx of (N, 3, H, W) in [0, 1], with what makes it hostile: metadata (our keys, e.g.
    a wrong scale), a fixed input side, a second input, a uint8 input."""
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    from onnx import TensorProto, helper
    shape = [1, 3, fixed, fixed] if fixed else ['n', 3, 'h', 'w']
    scales = helper.make_tensor('scales', TensorProto.FLOAT, [4], [1, 1, 2, 2])
    nodes = [helper.make_node('Cast', ['x'], ['xf'], to=TensorProto.FLOAT)] if uint8 else []
    nodes.append(helper.make_node('Resize', ['xf' if uint8 else 'x', '', 'scales'], ['y'], mode='nearest'))
    inputs = [helper.make_tensor_value_info('x', TensorProto.UINT8 if uint8 else TensorProto.FLOAT, shape)]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info('strength', TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, 'hostile', inputs, [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)],
                              [scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    helper.set_model_props(model, metadata or {})
    onnx.save(model, str(path))
    return path


def test_hostile_onnx_models_are_skipped_or_run_at_their_true_scale_never_a_traceback(tmp_path, capsys):
    """An .onnx that loads and then crashed aborted the whole run: a metadata scale that is wrong, 0 or 'abc', an
    input fixed at 8x8, two inputs, a uint8 input."""
    photo(tmp_path / 'test' / 'a.png')
    models = [_onnx_upscaler(tmp_path / 'abc.onnx', {'scale': 'abc'}),
              _onnx_upscaler(tmp_path / 'zero.onnx', {'scale': '0'}),
              _onnx_upscaler(tmp_path / 'wrong.onnx', {'scale': '4'}),
              _onnx_upscaler(tmp_path / 'fixed.onnx', {'scale': '2'}, fixed=8),
              _onnx_upscaler(tmp_path / 'two.onnx', two_inputs=True),
              _onnx_upscaler(tmp_path / 'uint8.onnx', uint8=True)]
    message = run('bicubic', *models, '--test-folders', tmp_path / 'test', '--csv', tmp_path / 'rows.csv',
                  '--scale', '2')
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    rows = read_csv(tmp_path / 'rows.csv')
    assert [r['scale'] for r in rows if r['model'] == 'bicubic'] == ['2']
    lines = err.splitlines()
    for model in models[:3]:  # a wrong scale in the metadata: said, and measured at the scale it really has
        assert [r['scale'] for r in rows if r['model'] == str(model)] == ['2'], model
        (note,) = [line for line in lines if line.startswith(f'note: {model}: its metadata says scale ')]
        assert note.endswith('but it upscales x2 (measured on a 12x16 image); using x2'), note
    for model in models[3:]:  # one that cannot run: reported in one line and left out
        assert not [r for r in rows if r['model'] == str(model)], model
        assert len([line for line in lines if line.startswith(f'error: {model}: ')]) == 1, model
    assert message == '3 models skipped; the table above leaves them out'

"""The self-ensemble (--self-ensemble, EDSR+): the 8 flips and rotations of the input, each undone exactly after the
model; an equivariant model unchanged by it; the mean of 8 passes made by hand; and the one mechanism
(inference.Upscaler) reaching tiles, the out-of-memory fallback, video frames, the grid, super_resolve.py and
eval.py, where its rows are marked and never on by default."""

import csv
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval as eval_py
import super_resolve
import video
from checkpoints import save_checkpoint
from conftest import SmallMemory
from inference import DIHEDRAL, Upscaler, dihedral, load_generator, load_upscaler, undo_dihedral
from models import SRResNet
from images import read_image
from utils import convert_image

# The dihedral group written out independently of inference.py: (forward, inverse) on (..., H, W)
BY_HAND = [
    (lambda x: x, lambda y: y),
    (lambda x: x.flip(-1), lambda y: y.flip(-1)),  # left-right
    (lambda x: x.flip(-2), lambda y: y.flip(-2)),  # top-bottom
    (lambda x: torch.rot90(x, 1, (-2, -1)), lambda y: torch.rot90(y, 3, (-2, -1))),
    (lambda x: torch.rot90(x, 2, (-2, -1)), lambda y: torch.rot90(y, 2, (-2, -1))),
    (lambda x: torch.rot90(x, 3, (-2, -1)), lambda y: torch.rot90(y, 1, (-2, -1))),
    (lambda x: x.transpose(-2, -1), lambda y: y.transpose(-2, -1)),  # the main diagonal
    (lambda x: x.flip(-1, -2).transpose(-2, -1), lambda y: y.transpose(-2, -1).flip(-1, -2)),  # the other diagonal
]


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = {'n_channels': 8, 'n_blocks': 1, 'scaling_factor': 2}
    path = tmp_path_factory.mktemp('model') / 'tiny.pt'
    save_checkpoint({'kind': 'srresnet', 'model_config': config, 'model': SRResNet(**config).state_dict()}, path)
    return path


def _lr(*shape, seed=0):  # ImageNet-normalised-like values
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Nearest(torch.nn.Module):
    """x2 nearest-neighbour upsampling: commutes with every flip and rotation."""

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode='nearest')


def test_each_of_the_8_transforms_is_undone_exactly_and_together_they_are_the_dihedral_group():
    x = _lr(2, 3, 5, 7)  # not square: a transposed image is 7 x 5
    outputs = []
    for turns, transposed in DIHEDRAL:
        y = dihedral(x, turns, transposed)
        assert y.shape[-2:] == ((7, 5) if transposed != (turns % 2 == 1) else (5, 7))
        assert torch.equal(undo_dihedral(y, turns, transposed), x)
        outputs.append(y)
    by_hand = [forward(x) for forward, _ in BY_HAND]
    assert all(torch.equal(inverse(forward(x)), x) for forward, inverse in BY_HAND)
    # the same 8 images, each once: every element of the group, none twice
    assert sorted(map(_key, outputs)) == sorted(map(_key, by_hand)) and len(set(map(_key, outputs))) == 8


def _key(img):
    return tuple(img.shape), img.contiguous().numpy().tobytes()


def test_the_ensemble_of_an_equivariant_model_is_the_model():
    lr_imgs = _lr(2, 3, 5, 7)
    plain = Upscaler(Nearest(), 2, tile=None).forward(lr_imgs)
    ensemble = Upscaler(Nearest(), 2, tile=None, self_ensemble=True).forward(lr_imgs)
    assert ensemble.shape == (2, 3, 10, 14)
    torch.testing.assert_close(ensemble, plain, rtol=0, atol=1e-6)


def test_the_ensemble_of_a_tiny_srresnet_is_the_mean_of_8_passes_by_hand(tiny_checkpoint):
    plain = Upscaler.for_model(load_generator(tiny_checkpoint), tile=None)
    ensemble = dataclasses.replace(plain, self_ensemble=True)
    lr_img = _lr(3, 20, 24)  # (3, h, w)
    passes = [inverse(plain.upscale(forward(lr_img))) for forward, inverse in BY_HAND]  # 8 x (3, 40, 48)
    expected = torch.stack(passes).mean(0)
    sr_img = ensemble.upscale(lr_img)
    assert sr_img.shape == (3, 40, 48)
    torch.testing.assert_close(sr_img, expected, rtol=0, atol=1e-6)
    assert (sr_img - passes[0]).abs().mean() > 1e-3  # a random SRResNet is not equivariant: the mean is not a pass
    # video frames go through the same forward: a batch of frames as each frame alone
    frames = torch.stack([lr_img, _lr(3, 20, 24, seed=1)])
    torch.testing.assert_close(video.upscale_frames(ensemble, frames),
                               torch.stack([ensemble.upscale(frame) for frame in frames]), rtol=0, atol=1e-6)


def test_tiles_and_the_out_of_memory_fallback_keep_the_ensemble(tiny_checkpoint):
    network = load_generator(tiny_checkpoint)
    lr_img = _lr(3, 48, 64)
    whole = Upscaler(network, 2, tile=None, self_ensemble=True).upscale(lr_img)
    tiled = Upscaler(network, 2, tile=32, tile_overlap=16, self_ensemble=True).upscale(lr_img)
    messages = []
    small = Upscaler(SmallMemory(network, 40 * 40), 2, tile=None, tile_overlap=16, self_ensemble=True)
    retried = small.upscale(lr_img, on_retry=messages.append)  # 64 -> 32 after out-of-memory
    assert messages == ['out of memory; trying again with --tile 32']
    assert torch.equal(retried, tiled)
    assert (tiled - whole).abs().mean() < 0.01  # tiles blended as without the ensemble
    plain_tiled = Upscaler(network, 2, tile=32, tile_overlap=16).upscale(lr_img)
    assert (tiled - plain_tiled).abs().mean() > 1e-3


def _photo(path, size=(48, 40), seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def test_super_resolve_self_ensemble_writes_the_ensembles_image_and_is_off_by_default(tiny_checkpoint, tmp_path):
    photo = _photo(tmp_path / 'in.png', (24, 20))
    common = [str(photo), '--model', str(tiny_checkpoint), '--device', 'cpu', '--fp32']
    assert not super_resolve.parse_args(common).self_ensemble and not load_upscaler(tiny_checkpoint).self_ensemble
    super_resolve.main(common + ['-o', str(tmp_path / 'plain.png')])
    super_resolve.main(common + ['-o', str(tmp_path / 'ensemble.png'), '--self-ensemble'])
    upscaler = load_upscaler(tiny_checkpoint, precision='fp32')
    expected = super_resolve.super_resolve_image(dataclasses.replace(upscaler, self_ensemble=True), read_image(photo))
    written, plain = (np.asarray(Image.open(tmp_path / name)) for name in ('ensemble.png', 'plain.png'))
    assert written.shape == (40, 48, 3) and np.array_equal(written, np.asarray(expected))
    assert np.array_equal(plain, np.asarray(super_resolve.super_resolve_image(upscaler, read_image(photo))))
    assert not np.array_equal(written, plain)


def test_the_grid_labels_a_self_ensemble_panel(tiny_checkpoint, monkeypatch):
    drawn = {}
    monkeypatch.setattr(super_resolve, 'draw_grid', lambda panels, width, height: drawn.update(panels))
    upscaler = dataclasses.replace(load_upscaler(tiny_checkpoint, precision='fp32'), self_ensemble=True)
    hr_img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    super_resolve.visualize_sr(hr_img, srresnet_checkpoint=upscaler)
    assert list(drawn) == ['Bicubic', 'SRResNet + self-ensemble', 'SRGAN', 'Original HR']
    lr_tensor = convert_image(hr_img.resize((24, 20), Image.BICUBIC), 'pil', 'imagenet-norm')
    expected = convert_image(upscaler.upscale(lr_tensor), '[-1, 1]', 'pil')
    assert np.array_equal(np.asarray(drawn['SRResNet + self-ensemble']), np.asarray(expected))


def test_eval_marks_the_self_ensemble_rows_beside_the_plain_ones(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'set'
    folder.mkdir()
    _photo(folder / 'a.png'), _photo(folder / 'b.png', seed=1)
    args = ['eval.py', 'bicubic', str(tiny_checkpoint), '--test-folders', str(folder), '--workers', '0', '--device',
            'cpu', '--csv']
    monkeypatch.setattr('sys.argv', args + [str(tmp_path / 'plain.csv')])
    eval_py.main()
    plain_out = capsys.readouterr().out
    assert 'self-ensemble' not in plain_out  # off by default
    monkeypatch.setattr('sys.argv', args + [str(tmp_path / 'rows.csv'), '--self-ensemble', '--save-dir',
                                            str(tmp_path / 'sr')])
    eval_py.main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith('| ')][1:]
    assert [line.split(' | ')[0] for line in table] == [
        '| bicubic', f'| {tiny_checkpoint} (SRResNet)', f'| {tiny_checkpoint} (SRResNet) + self-ensemble']
    assert '--self-ensemble' not in table[1] and 'this eval.py --self-ensemble (the mean over 8' in table[2]
    plain_row = next(line for line in plain_out.splitlines() if line.startswith(f'| {tiny_checkpoint} '))
    without_time = [cells[:3] + cells[4:] for cells in (table[1].split(' | '), plain_row.split(' | '))]
    assert without_time[0] == without_time[1]  # the plain row as without --self-ensemble
    with open(tmp_path / 'rows.csv') as f:
        rows = {(r['model'], r['image']): float(r['psnr']) for r in csv.DictReader(f)}
    upscaler = dataclasses.replace(Upscaler.for_model(load_generator(tiny_checkpoint)), self_ensemble=True)
    test_sets = [('set', [str(folder / 'a.png'), str(folder / 'b.png')])]
    rows_by_hand = eval_py.evaluate([eval_py.Model('e', 'srresnet', 2, upscaler)], test_sets)
    expected = {r['image']: r['psnr'] for r in rows_by_hand}
    for image in ('a', 'b'):
        assert rows[f'{tiny_checkpoint} + self-ensemble', image] == pytest.approx(expected[image], abs=1e-9)
        assert rows[f'{tiny_checkpoint} + self-ensemble', image] != rows[str(tiny_checkpoint), image]
    assert len({p.parent.parent for p in (tmp_path / 'sr').glob('*/set/*.png')}) == 3  # bicubic, plain, ensemble

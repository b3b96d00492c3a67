"""deploy.py: the ONNX export of any size (checked against PyTorch in onnxruntime), run by super_resolve.py and
eval.py through their usual paths, the README's plain-onnxruntime example, and one-line errors."""

import contextlib
import csv as csv_module
import io
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import deploy
import eval as eval_py
import images
import inference
import super_resolve
import utils
from checkpoints import CheckpointError, save_checkpoint
from models import SRResNet
from utils import UserError
from conftest import REPO, make_video, run_process, smooth_photo, write_png_16

onnx = pytest.importorskip('onnx', reason='the ONNX tests need onnx, onnxscript and onnxruntime (requirements.txt)')
ort = pytest.importorskip('onnxruntime')

@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """{scale: (the shipped .pt, its .onnx export, what `checkpoints.py export` printed)} for x2 and x4."""
    folder, result = tmp_path_factory.mktemp('onnx'), {}
    for s in (2, 4):
        pt, out = inference.shipped_model(s), folder / f'srresnet_x{s}.onnx'
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            deploy.main([str(pt), str(out)])
        result[s] = pt, out, printed.getvalue()
    return result


def pytorch_fp32(pt, lr_imgs):
    """The plain models.py SRResNet (BatchNorm not folded) between the ranges the export promises:
    (N, 3, H, W) in [0, 1] -> (N, 3, s H, s W) in [0, 1]."""
    model = inference.load_generator(pt)
    with torch.no_grad():
        return utils.convert_image(model(utils.convert_image(lr_imgs, '[0, 1]', 'imagenet-norm')), '[-1, 1]', '[0, 1]')


@pytest.mark.parametrize('s', [2, 4])
def test_onnx_equals_pytorch_at_any_size_and_batch(exported, s):
    pt, path, printed = exported[s]
    assert re.search(r'wrote .*\.onnx; checked with onnxruntime .* from PyTorch fp32 \d\.\de-0[5-9]', printed)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == deploy.OPSET
    for value in (model.graph.input[0], model.graph.output[0]):  # (batch, 3, height, width), only the 3 fixed
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_value for d in dims][1] == 3 and all(dims[i].dim_param for i in (0, 2, 3))
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = {node.op_type for node in model.graph.node}
    assert 'BatchNormalization' not in ops and {'Conv', 'DepthToSpace', 'PRelu', 'Tanh'} <= ops
    metadata = {p.key: p.value for p in model.metadata_props}
    assert set(deploy.METADATA_KEYS) <= set(metadata) and metadata['scale'] == str(s)
    assert metadata['weights'] == 'fp32' and metadata['kind'] == 'srresnet' and pt.name in metadata['source']
    assert 'RGB in [0, 1]' in metadata['input'] and f'(N, 3, {s}H, {s}W)' in metadata['output']

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    rng = torch.Generator().manual_seed(s)
    for n, h, w in [(1, 17, 31), (1, 64, 64), (3, 1, 1), (2, 5, 40)]:
        lr_imgs = torch.rand(n, 3, h, w, generator=rng)
        sr_imgs = session.run(None, {'lr_imgs': lr_imgs.numpy()})[0]
        assert sr_imgs.shape == (n, 3, h * s, w * s) and sr_imgs.dtype == np.float32
        assert np.abs(sr_imgs - pytorch_fp32(pt, lr_imgs).numpy()).max() <= 1e-4, (n, h, w)


def _inputs(folder):
    """An RGB photo, an RGBA logo, a 16-bit RGB PNG, a 16-bit grey scan and a short video with sound."""
    folder.mkdir()
    Image.fromarray(smooth_photo(70, 50)).save(folder / 'photo.png')
    rgba = np.dstack([smooth_photo(30, 20, 1), np.zeros((20, 30), np.uint8)])
    rgba[:, 15:, 3] = 255
    Image.fromarray(rgba).save(folder / 'logo.png')
    y, x = np.mgrid[0:16, 0:24]
    write_png_16(folder / 'rgb48.png', np.stack([1000 + 37 * x + 5 * y, 30000 + 11 * y, 60000 - 13 * x],
                                                axis=2).astype(np.uint16))
    Image.fromarray((np.arange(20 * 30).reshape(20, 30) * 97 + 1000).astype(np.uint16)).save(folder / 'gray16.png')
    make_video(folder / 'clip.mp4')


def test_super_resolve_runs_an_onnx_model_through_the_same_paths(exported, tmp_path):
    """Tiles (a 70x50 photo in tiles of 32), alpha, 16-bit and video: the .onnx writes what the .pt writes."""
    av = pytest.importorskip('av')
    _, path, _ = exported[4]
    _inputs(tmp_path / 'in')
    for model in (inference.shipped_model(4), path):
        super_resolve.main([str(tmp_path / 'in'), '-o', str(tmp_path / model.suffix[1:]), '--model', str(model),
                            '--tile', '32', '--tile-overlap', '16', '--device', 'cpu', '--batch-size', '3', '--fp32'])
    for name in ('photo_x4.png', 'logo_x4.png', 'rgb48_x4.png', 'gray16_x4.png'):
        ours, theirs = (images.read_image(tmp_path / kind / name) for kind in ('pt', 'onnx'))
        assert ours.bits == theirs.bits and ours.rgb.shape == theirs.rgb.shape, name
        assert np.abs(ours.rgb.astype(int) - theirs.rgb.astype(int)).max() <= 1, name  # 1 level of 255 or 65535
        assert (ours.alpha is None) == (theirs.alpha is None)
        assert ours.alpha is None or (ours.alpha == theirs.alpha).all()
    assert images.read_image(tmp_path / 'onnx' / 'rgb48_x4.png').bits == 16
    assert images.read_image(tmp_path / 'onnx' / 'logo_x4.png').alpha is not None

    frames = {}
    for kind in ('pt', 'onnx'):
        with av.open(str(tmp_path / kind / 'clip_x4.mp4')) as container:
            assert [stream.type for stream in container.streams] == ['video', 'audio']
            frames[kind] = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)]).astype(int)
    assert frames['onnx'].shape == frames['pt'].shape == (8, 96, 128, 3)
    assert np.abs(frames['onnx'] - frames['pt']).mean() < 0.5  # the same frames, through a lossy encoder


def test_eval_measures_an_onnx_model_as_its_checkpoint(exported, tmp_path):
    _, path, _ = exported[2]
    (tmp_path / 'photos').mkdir()
    for i in range(2):
        Image.fromarray(smooth_photo(64, 48, i)).save(tmp_path / 'photos' / f'{i}.png')
    rows = {}
    for model in (inference.shipped_model(2), path):
        csv = tmp_path / f'{model.suffix[1:]}.csv'
        with contextlib.redirect_stdout(io.StringIO()):
            eval_py.main([str(model), '--test-folders', str(tmp_path / 'photos'), '--csv', str(csv), '--device', 'cpu',
                          '--workers', '0'])
        rows[model.suffix] = [(row['psnr'], row['ssim']) for row in csv_module.DictReader(csv.open())]
    assert len(rows['.pt']) == len(rows['.onnx']) == 2
    for (psnr, ssim), (onnx_psnr, onnx_ssim) in zip(rows['.pt'], rows['.onnx']):
        assert abs(float(psnr) - float(onnx_psnr)) <= 0.01 and abs(float(ssim) - float(onnx_ssim)) <= 1e-4


def test_the_readmes_plain_onnxruntime_example_runs(exported, tmp_path):
    """The README's five lines, run as a user would (no repo code), give what super_resolve.py gives."""
    readme = (REPO / 'README.md').read_text()
    code = re.search(r'## Deploying.*?```python\n(.*?)```', readme, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith('#')]) <= 6
    _, path, _ = exported[4]
    Image.fromarray(smooth_photo(40, 30)).save(tmp_path / 'photo.png')
    (tmp_path / 'srresnet_x4.onnx').symlink_to(path)
    run_process('-c', code, cwd=tmp_path, timeout=120)  # a new interpreter: nothing of this repo imported
    super_resolve.main([str(tmp_path / 'photo.png'), '-o', str(tmp_path / 'ours.png'), '--device', 'cpu', '--fp32'])
    theirs = np.asarray(Image.open(tmp_path / 'photo_x4.png')).astype(int)
    assert theirs.shape == (120, 160, 3)
    assert np.abs(theirs - np.asarray(Image.open(tmp_path / 'ours.png')).astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# one-line errors

def _exit_line(argv, main=deploy.main):
    """The one line a script's main refuses `argv` with (run_main prints it as `error: ...`)."""
    with pytest.raises(UserError) as raised:
        main(argv)
    message = str(raised.value)
    assert message and not message.startswith('error: ') and '\n' not in message
    return message


def test_export_refuses_what_is_not_a_generator_and_an_unwritable_output(tmp_path, exported):
    Image.fromarray(smooth_photo(8, 8)).save(tmp_path / 'photo.png')
    assert 'a PNG image, not a checkpoint' in _exit_line([str(tmp_path / 'photo.png'), str(tmp_path / 'a.onnx')])
    save_checkpoint({'kind': 'srgan', 'discriminator': {'w': torch.zeros(1)}}, tmp_path / 'd.pt')
    assert 'no generator weights' in _exit_line([str(tmp_path / 'd.pt'), str(tmp_path / 'a.onnx')])
    (tmp_path / 'file').write_text('a file, not a folder')
    message = _exit_line([str(inference.shipped_model(2)), str(tmp_path / 'file' / 'x2.onnx')])  # before any work
    assert message == f'OUTPUT {tmp_path / "file" / "x2.onnx"}: {tmp_path / "file"} is a file, where a folder is needed'
    assert _exit_line([str(inference.shipped_model(2)), str(exported[2][1])]) == (
        f'OUTPUT {exported[2][1]} exists; pass --overwrite to replace it, or choose another name')
    assert 'checkpoints.py export' in _exit_line([str(inference.shipped_model(2)), str(tmp_path / 'x2.pt')])
    assert 'python deploy.py' in _exit_line(['export', str(inference.shipped_model(2)), str(tmp_path / 'x2.onnx')],
                                            checkpoints.main)
    assert not list(tmp_path.glob('*.onnx')) and not list(tmp_path.glob('.*partial*'))


def test_an_output_that_is_the_checkpoint_is_said_as_such(tmp_path):
    """`deploy.py W.pt W.pt --overwrite` used to suggest `checkpoints.py export W.pt W.pt`, which would replace W.pt
    just the same; the output is the input, and that is what is said (and W.pt is untouched)."""
    weights = tmp_path / 'W.pt'
    weights.write_bytes(inference.shipped_model(2).read_bytes())
    for main, argv in ((deploy.main, [str(weights), str(weights), '--overwrite']),
                       (checkpoints.main, ['export', str(weights), str(weights), '--overwrite'])):
        assert _exit_line(argv, main) == f'OUTPUT {weights} is {weights}, which this command reads; write to another ' \
                                         f'file'
    assert weights.read_bytes() == inference.shipped_model(2).read_bytes()


def test_an_onnx_where_a_checkpoint_belongs_is_named_for_what_it_is(exported, tmp_path):
    """It used to be 'a file of an unknown format'; our export (producer 'pytorch') is known by its first bytes, under
    any name."""
    onnx_path = exported[2][1]
    (tmp_path / 'renamed.pt').write_bytes(onnx_path.read_bytes())
    for path in (onnx_path, tmp_path / 'renamed.pt'):
        with pytest.raises(CheckpointError) as error:
            checkpoints.load_checkpoint(path)
        assert str(error.value).startswith(f'{path} is an ONNX model (run it with `python super_resolve.py IMAGE '
                                           f'--model {path}` or `python eval.py {path}`; it cannot be trained from or '
                                           f'exported again), not a checkpoint')
    assert 'is an ONNX model' in _exit_line([str(onnx_path), str(tmp_path / 'again.onnx')])
    assert 'is an ONNX model' in _exit_line(['export', str(onnx_path), str(tmp_path / 'g.pt')], checkpoints.main)
    assert 'is an ONNX model' in _exit_line(['convert', str(onnx_path), str(tmp_path / 'g.pt')], checkpoints.main)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['renamed.pt']


def test_missing_onnx_packages_are_one_line(tmp_path, monkeypatch, exported):
    monkeypatch.setitem(sys.modules, 'onnxscript', None)  # import onnxscript raises ImportError
    assert 'pip install onnxscript' in _exit_line([str(inference.shipped_model(2)), str(tmp_path / 'a.onnx')])
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(CheckpointError, match=r'needs onnxruntime: pip install onnxruntime$'):
        inference.load_upscaler(exported[2][1])


def _foreign_onnx(path, fixed=False):
    """An ONNX upscaler from elsewhere: nearest-neighbour x2 of (N, 3, H, W) in [0, 1], no metadata of ours."""
    from onnx import TensorProto, helper
    side = [1, 3, 8, 8] if fixed else ['n', 3, 'h', 'w']
    out_side = [1, 3, 16, 16] if fixed else ['n', 3, 'h2', 'w2']
    scales = helper.make_tensor('scales', TensorProto.FLOAT, [4], [1, 1, 2, 2])
    graph = helper.make_graph([helper.make_node('Resize', ['x', '', 'scales'], ['y'], mode='nearest')], 'foreign',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, side)],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, out_side)], [scales])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)]), str(path))


def test_an_onnx_from_elsewhere_is_run_with_what_is_assumed_said_or_refused(tmp_path, capsys):
    _foreign_onnx(tmp_path / 'nearest.onnx')
    upscaler = inference.load_upscaler(tmp_path / 'nearest.onnx')
    assert upscaler.scaling_factor == 2
    assert 'no metadata of this repo: assuming RGB in [0, 1] in and out, x2' in capsys.readouterr().err
    lr_img = utils.convert_image(torch.rand(3, 5, 7), '[0, 1]', 'imagenet-norm')
    expected = utils.convert_image(lr_img, 'imagenet-norm', '[-1, 1]').repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.allclose(upscaler.upscale(lr_img), expected, atol=1e-5)

    _foreign_onnx(tmp_path / 'fixed.onnx', fixed=True)
    with pytest.raises(CheckpointError, match=r'fixed.onnx: its input x \[1, 3, 8, 8\] is fixed at 8x8, and images of '
                                              r'any size are run here; export it with dynamic height and width'):
        inference.load_upscaler(tmp_path / 'fixed.onnx')
    (tmp_path / 'text.onnx').write_text('not a model')
    Image.fromarray(smooth_photo(8, 8)).save(tmp_path / 'x.png')
    with pytest.raises(CheckpointError, match=r'text.onnx: onnxruntime cannot load it .*; pass an .onnx written by'):
        inference.load_upscaler(tmp_path / 'text.onnx')
    with pytest.raises(CheckpointError, match='^.*text.onnx: onnxruntime cannot load it'):
        super_resolve.main([str(tmp_path / 'x.png'), '--model', str(tmp_path / 'text.onnx'), '-o', str(tmp_path)])


def test_an_srgan_x8_exports_labelled_and_fp16_halves_the_file(tmp_path):
    """A train_srgan.py checkpoint (its Generator's 'net.' keys) of x8; then the same in fp16: fp16 weights, half the
    file, float32 in and out, ~1e-3 from fp32."""
    torch.manual_seed(0)
    config = {'n_blocks': 2, 'n_channels': 32, 'scaling_factor': 8}
    state_dict = {f'net.{k}': v for k, v in SRResNet(**config).state_dict().items()}
    save_checkpoint({'kind': 'srgan', 'model_config': config, 'generator': state_dict, 'iteration': 7},
                    tmp_path / 'g.pt')
    assert deploy.export_onnx(tmp_path / 'g.pt', tmp_path / 'g.onnx') <= 1e-4
    generator = deploy.OnnxGenerator(tmp_path / 'g.onnx')
    assert generator.scaling_factor == 8 and generator.metadata['kind'] == 'srgan'
    assert generator.metadata['source'] == 'g.pt, weights at iteration 7'
    lr_imgs = torch.rand(2, 3, 3, 5)
    sr_imgs = generator.run(lr_imgs)
    assert sr_imgs.shape == (2, 3, 24, 40)

    difference = deploy.export_onnx(tmp_path / 'g.pt', tmp_path / 'g16.onnx', fp16=True)
    model = onnx.load(str(tmp_path / 'g16.onnx'))
    onnx.checker.check_model(model, full_check=True)
    weights = [t for t in model.graph.initializer if t.name.endswith('weight')]  # kernels, PReLU slopes
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    assert {p.key: p.value for p in model.metadata_props}['weights'] == 'fp16'
    assert 0.4 < (tmp_path / 'g16.onnx').stat().st_size / (tmp_path / 'g.onnx').stat().st_size < 0.6
    error = (deploy.OnnxGenerator(tmp_path / 'g16.onnx').run(lr_imgs) - sr_imgs).abs()
    assert 1e-5 < difference < 1e-2 and 1e-5 < error.max() < 1e-2 and error.mean() < 1e-3  # fp16, not fp32

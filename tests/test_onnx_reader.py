"""deploy.OnnxGenerator, the one reader of .onnx models: what running a model assumes is checked at load and a model
that does not fit is one line (two inputs, a uint8 input, a fixed image size, an output that is not one float image
batch); the scale is measured on a probe, never trusted from the metadata; a batch axis fixed at 1 runs one image at
a time. The hostile models are built with onnx.helper: nearest-neighbour upscalers of (N, 3, H, W) in [0, 1]."""

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import deploy
import inference
import super_resolve
import utils
from checkpoints import CheckpointError
from conftest import make_video, smooth_photo

onnx = pytest.importorskip('onnx', reason='the ONNX tests need onnx and onnxruntime (requirements.txt)')
pytest.importorskip('onnxruntime')
from onnx import TensorProto, helper  # noqa: E402  (after the skip: onnx is optional)


def onnx_model(path, shape=('n', 3, 'h', 'w'), scale=2.0, metadata=None, dtype=TensorProto.FLOAT, nodes=(),
               outputs=(('y', TensorProto.FLOAT),)):
    """Write an .onnx: input 'x' of `shape` and `dtype`, cast to float and upscaled by `scale` (nearest), then
    `nodes` (onnx nodes from 'up' to the outputs; none: 'up' is 'y'). metadata: its metadata_props."""
    graph_nodes = [helper.make_node('Cast', ['x'], ['xf'], to=TensorProto.FLOAT),
                   helper.make_node('Resize', ['xf', '', 'scales'], ['up' if nodes else outputs[0][0]],
                                    mode='nearest'), *nodes]
    scales = helper.make_tensor('scales', TensorProto.FLOAT, [4], [1, 1, scale, scale])
    graph = helper.make_graph(graph_nodes, 'hostile', [helper.make_tensor_value_info('x', dtype, list(shape))],
                              [helper.make_tensor_value_info(name, kind, None) for name, kind in outputs], [scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def nearest(lr_imgs, s=2):
    """What the models above compute: (N, 3, h, w) -> (N, 3, s h, s w), nearest neighbour."""
    return lr_imgs.repeat_interleave(s, 2).repeat_interleave(s, 3)


def load(path):
    """deploy.OnnxGenerator(path) -> (it, what it printed to stderr)."""
    with contextlib.redirect_stderr(io.StringIO()) as err:
        generator = deploy.OnnxGenerator(path)
    return generator, err.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# The scale: measured, not trusted

@pytest.mark.parametrize('recorded', ['4', '0', 'abc', '-2'])
def test_a_metadata_scale_that_is_wrong_zero_or_text_is_measured_and_said(recorded, tmp_path):
    """A wrong scale used to crash later in the tiles; '0' or 'abc' at load (int('abc'))."""
    generator, err = load(onnx_model(tmp_path / 'm.onnx', metadata={'scale': recorded}))
    assert generator.scaling_factor == 2
    assert err == (f"note: {tmp_path / 'm.onnx'}: its metadata says scale {recorded!r}, but it upscales x2 (measured "
                   f"on a 12x16 image); using x2\n")
    upscaler = inference.load_upscaler(tmp_path / 'm.onnx')
    lr_img = utils.convert_image(torch.rand(3, 9, 13), '[0, 1]', 'imagenet-norm')
    expected = nearest(utils.convert_image(lr_img, 'imagenet-norm', '[-1, 1]')[None])[0]
    assert torch.allclose(upscaler.upscale(lr_img), expected, atol=1e-5)


def test_a_metadata_scale_that_agrees_is_silent_and_none_is_a_note_of_what_is_assumed(tmp_path):
    generator, err = load(onnx_model(tmp_path / 'ours.onnx', scale=4.0, metadata={'scale': '4'}))
    assert generator.scaling_factor == 4 and err == ''
    generator, err = load(onnx_model(tmp_path / 'foreign.onnx', scale=4.0))
    assert generator.scaling_factor == 4 and 'no metadata of this repo: assuming RGB in [0, 1] in and out, x4' in err


# ---------------------------------------------------------------------------------------------------------------
# The batch axis

@pytest.mark.parametrize('batch', [1, 3])
def test_a_batch_axis_fixed_at_k_runs_k_images_at_a_time(batch, tmp_path):
    generator, _ = load(onnx_model(tmp_path / 'b.onnx', shape=(batch, 3, 'h', 'w')))
    assert generator.batch == batch and generator.scaling_factor == 2
    calls = []
    run = generator.session.run
    generator.session.run = lambda names, feed: calls.append(feed['x'].shape) or run(names, feed)
    lr_imgs = torch.rand(4, 3, 5, 7)
    torch.testing.assert_close(generator.run(lr_imgs), nearest(lr_imgs))
    assert calls == [(batch, 3, 5, 7)] * (4 // batch + (4 % batch > 0))  # the last batch padded to k


def test_a_batch_axis_declared_dynamic_that_takes_one_image_runs_one_at_a_time(tmp_path):
    """The graph reshapes to (1, 3, H, W) inside, whatever its input declares: the probe of 2 images finds out."""
    shape_nodes = [helper.make_node('Shape', ['up'], ['shape']),
                   helper.make_node('Slice', ['shape', 'two', 'four'], ['hw']),
                   helper.make_node('Concat', ['one_three', 'hw'], ['target'], axis=0),
                   helper.make_node('Reshape', ['up', 'target'], ['y'])]
    path = onnx_model(tmp_path / 'one.onnx', nodes=shape_nodes)
    model = onnx.load(str(path))
    model.graph.initializer.extend([helper.make_tensor('two', TensorProto.INT64, [1], [2]),
                                    helper.make_tensor('four', TensorProto.INT64, [1], [4]),
                                    helper.make_tensor('one_three', TensorProto.INT64, [2], [1, 3])])
    onnx.save(model, str(path))
    generator, _ = load(path)
    assert generator.batch == 1 and generator.scaling_factor == 2
    lr_imgs = torch.rand(3, 3, 4, 6)
    torch.testing.assert_close(generator.run(lr_imgs), nearest(lr_imgs))


def test_a_video_at_the_default_batch_size_runs_through_a_model_of_batch_1(tmp_path):
    """Frames go to the model 4 at a time (--batch-size 4); an export of batch 1 used to crash on them."""
    av = pytest.importorskip('av')
    make_video(tmp_path / 'clip.mp4', n_frames=5)
    model = onnx_model(tmp_path / 'b1.onnx', shape=(1, 3, 'h', 'w'), metadata={'scale': '2'})
    super_resolve.main([str(tmp_path / 'clip.mp4'), '-o', str(tmp_path / 'clip_x2.mp4'), '--model', str(model),
                        '--device', 'cpu'])
    with av.open(str(tmp_path / 'clip_x2.mp4')) as container:
        frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)


# ---------------------------------------------------------------------------------------------------------------
# Refused at load, in one line

def test_a_fixed_image_size_is_refused_in_one_line_before_any_image(tmp_path, capsys):
    """Our own export with its input fixed at 64x64 (as peers export) used to load, then crash on a 40-px image;
    the README promises a one-line refusal."""
    model = onnx_model(tmp_path / 'fixed.onnx', shape=(1, 3, 64, 64), metadata={'scale': '2'})
    message = (f'{model}: its input x [1, 3, 64, 64] is fixed at 64x64, and images of any size are run here; export '
               f'it with dynamic height and width, as `python deploy.py CHECKPOINT OUT.onnx` does')
    with pytest.raises(CheckpointError) as error:
        deploy.OnnxGenerator(model)
    assert str(error.value) == message
    Image.fromarray(smooth_photo(40, 40)).save(tmp_path / 'photo.png')
    with pytest.raises(SystemExit) as stop:
        utils.run_main(lambda: super_resolve.main([str(tmp_path / 'photo.png'), '--model', str(model), '-o',
                                                   str(tmp_path / 'out')]))
    assert stop.value.code == 1 and capsys.readouterr().err == f'error: {message}\n'
    assert not (tmp_path / 'out').exists()


def _identity(path, inputs):
    """An .onnx of `inputs` ({name: shape}, float) whose output 'y' is their sum."""
    names = list(inputs)
    node = helper.make_node('Sum', names, ['y'])
    graph = helper.make_graph([node], 'plain', [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
                                                for name, shape in inputs.items()],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)]), str(path))
    return path


REFUSED = {
    'two inputs': (lambda p: _identity(p, {'a': ('n', 3, 'h', 'w'), 'b': ('n', 3, 'h', 'w')}),
                   'takes 2 inputs (a, b), not one batch of images'),
    'a uint8 input': (lambda p: onnx_model(p, dtype=TensorProto.UINT8),
                      'its input x is tensor(uint8), not float32 or float16 RGB in [0, 1]'),
    'one channel': (lambda p: onnx_model(p, shape=('n', 1, 'h', 'w')),
                    "its input x is ['n', 1, 'h', 'w'], not (N, 3, H, W) RGB images"),
    'a rank-3 input': (lambda p: _identity(p, {'x': (3, 'h', 'w')}),
                       "its input x is [3, 'h', 'w'], not (N, 3, H, W) RGB images"),
    'an int output': (lambda p: onnx_model(p, nodes=[helper.make_node('Cast', ['up'], ['y'], to=TensorProto.INT32)],
                                           outputs=[('y', TensorProto.INT32)]),
                      'gives y tensor(int32), not one float image batch'),
    'two outputs': (lambda p: onnx_model(p, nodes=[helper.make_node('Identity', ['up'], [name]) for name in 'yz'],
                                         outputs=[('y', TensorProto.FLOAT), ('z', TensorProto.FLOAT)]),
                    'gives y tensor(float), z tensor(float), not one float image batch'),
    'a rank-3 output': (lambda p: onnx_model(p, nodes=[helper.make_node('ReduceMean', ['up'], ['y'], axes=[1],
                                                                        keepdims=0)]),
                        'a 2x3x12x16 input gives (2, 24, 32), not (2, 3, 12s, 16s) for a whole scale s'),
    'a scale of 1.5': (lambda p: onnx_model(p, scale=1.5),
                       'a 2x3x12x16 input gives (2, 3, 18, 24), not (2, 3, 12s, 16s) for a whole scale s'),
}


@pytest.mark.parametrize('kind', REFUSED)
def test_a_model_that_does_not_fit_is_refused_at_load_in_one_line(kind, tmp_path):
    make, words = REFUSED[kind]
    path = make(tmp_path / 'm.onnx')
    with pytest.raises(CheckpointError) as error:
        inference.load_upscaler(path)
    assert str(error.value) == f'{path}: {words}; pass an .onnx written by `python deploy.py CHECKPOINT OUT.onnx`'


def test_float16_in_and_out_is_run_in_float32_outside(tmp_path):
    path = onnx_model(tmp_path / 'half.onnx', dtype=TensorProto.FLOAT16, metadata={'scale': '2'},
                      nodes=[helper.make_node('Cast', ['up'], ['y'], to=TensorProto.FLOAT16)],
                      outputs=[('y', TensorProto.FLOAT16)])
    generator, err = load(path)
    lr_imgs = torch.rand(2, 3, 5, 6)
    sr_imgs = generator.run(lr_imgs)
    assert err == '' and sr_imgs.dtype == torch.float32
    torch.testing.assert_close(sr_imgs, nearest(lr_imgs), atol=1e-3, rtol=0)  # through float16


def test_a_size_the_graph_cannot_take_is_one_line_not_a_traceback(tmp_path):
    """A graph that takes even sides only (space-to-depth and back) passes the probe and fails on 13x17."""
    path = onnx_model(tmp_path / 'even.onnx', metadata={'scale': '2'},
                      nodes=[helper.make_node('SpaceToDepth', ['up'], ['packed'], blocksize=4),
                             helper.make_node('DepthToSpace', ['packed'], ['y'], blocksize=4)])
    upscaler = inference.load_upscaler(path)
    with pytest.raises(CheckpointError, match=r'even.onnx: onnxruntime fails on a 1x3x13x17 input \(.*\); pass an'):
        upscaler.upscale(torch.rand(3, 13, 17))
    assert upscaler.upscale(torch.rand(3, 14, 18)).shape == (3, 28, 36)


# ---------------------------------------------------------------------------------------------------------------
# An .onnx where a checkpoint belongs

def test_an_onnx_where_a_checkpoint_belongs_is_said_to_be_one(tmp_path):
    """It used to be 'a file of an unknown format': known by its first bytes under any name, by its name when
    its bytes say nothing."""
    onnx_model(tmp_path / 'model.pt', metadata={'scale': '2'})
    (tmp_path / 'odd.onnx').write_bytes(bytes(range(200, 256)))
    (tmp_path / 'notes.onnx').write_text('not a model')
    for name in ('model.pt', 'odd.onnx'):
        assert checkpoints.what_file_is(tmp_path / name).startswith('an ONNX model (run it with `python '
                                                                   'super_resolve.py IMAGE --model ')
    assert checkpoints.what_file_is(tmp_path / 'notes.onnx') == 'a text file (starting "not a model")'
    with pytest.raises(CheckpointError, match=r'model.pt is an ONNX model .*it cannot be trained from or exported '
                                              r'again\), not a checkpoint'):
        checkpoints.load_checkpoint(tmp_path / 'model.pt')
    assert np.frombuffer((tmp_path / 'model.pt').read_bytes()[:1], np.uint8)[0] == 0x08  # ir_version comes first

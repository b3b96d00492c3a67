"""super_resolve.py: the comparison grid, upscaling files of every kind, tiling, the OOM fallback, video."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import image_formats
import images
import inference
import speedups
import super_resolve
import utils
from datasets import DataListError
from checkpoints import CheckpointError
from inference import Upscaler
from models import SRResNet
from outputs import OutputError
from utils import UserError
from conftest import SmallMemory, cli, make_video, save_srresnet, smooth_photo, write_png_16


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A small random SRResNet (2 residual blocks, x4) in the repo's checkpoint format."""
    return save_srresnet(tmp_path_factory.mktemp('model') / 'srresnet.pt', n_blocks=2, scaling_factor=4)


# ---------------------------------------------------------------------------------------------------------------
# visualize_sr

def test_visualize_sr_grid_with_one_model(checkpoint, tmp_path):
    hr = Image.fromarray(smooth_photo(70, 50))  # trimmed to 68 x 48, a multiple of the scale
    grid = super_resolve.visualize_sr(hr, srresnet_checkpoint=checkpoint, srgan_checkpoint=None,
                                      save_path=tmp_path / 'grid.png', device='cpu')
    width, height = 68, 48
    margin = (grid.width - 2 * width) / 3
    assert grid.mode == 'RGB' and margin == int(margin) and margin >= 12
    margin = int(margin)
    assert grid.size == (2 * width + 3 * margin, 2 * height + 3 * margin)
    assert Image.open(tmp_path / 'grid.png').size == grid.size

    def panel(i):  # 0 Bicubic, 1 SRResNet, 2 SRGAN, 3 Original HR
        left, top = margin + (i % 2) * (width + margin), margin + (i // 2) * (height + margin)
        return np.asarray(grid.crop((left, top, left + width, top + height))).astype(int)

    np.testing.assert_array_equal(panel(3), np.asarray(hr.crop((0, 0, width, height))))
    bicubic = utils.downsample(hr.crop((0, 0, width, height)), 4).resize((width, height), Image.BICUBIC)
    np.testing.assert_array_equal(panel(0), np.asarray(bicubic))
    # the missing SRGAN: a grey panel with its message written on it; the SRResNet panel is an image
    srgan = panel(2)
    assert (srgan == 224).all(axis=2).mean() > 0.8 and (srgan < 160).any()
    assert panel(1).std() > 0 and not (panel(1) == 224).all(axis=2).mean() > 0.5
    # labels are drawn in the margins above the panels
    labels = np.asarray(grid.crop((margin, 0, margin + width, margin))).astype(int)
    assert (labels < 128).any()


def test_visualize_sr_without_the_shipped_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(inference, 'DEFAULT_MODEL', tmp_path / 'weights' / 'srresnet_x4.pt')
    with pytest.raises(CheckpointError, match='--model PATH'):
        super_resolve.visualize_sr(Image.fromarray(smooth_photo(64, 64)),
                                   srresnet_checkpoint=inference.DEFAULT_MODEL, device='cpu')
    with pytest.raises(CheckpointError, match='^no shipped x4 model yet.*--model PATH'):
        super_resolve.main([str(tmp_path / 'any.png')])


# ---------------------------------------------------------------------------------------------------------------
# Files of every kind through the CLI

def _inputs(folder):
    folder.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    Image.fromarray(smooth_photo(30, 20)).save(folder / 'photo.png', icc_profile=icc)
    rgba = np.dstack([smooth_photo(30, 20, 1), np.zeros((20, 30), np.uint8)])
    rgba[:, 15:, 3] = 255  # left half transparent, right half opaque
    Image.fromarray(rgba).save(folder / 'logo.png')
    (folder / 'scans').mkdir()
    Image.fromarray(smooth_photo(30, 20, 2)[..., 0]).save(folder / 'scans' / 'gray.png')
    gray16 = (np.arange(20 * 30).reshape(20, 30) * 97 + 1000).astype(np.uint16)  # values up to ~59000
    Image.fromarray(gray16).save(folder / 'scans' / 'gray16.png')  # Pillow writes 'I;16' as a 16-bit PNG
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(smooth_photo(40, 24, 3)).save(folder / 'rotated.jpg', exif=exif, quality=95)
    (folder / 'broken.png').write_bytes(b'this is not an image')
    (folder / 'empty.jpg').write_bytes(b'')
    good = (folder / 'photo.png').read_bytes()
    (folder / 'truncated.png').write_bytes(good[:len(good) // 2])
    Image.fromarray(smooth_photo(5, 5)).save(folder / 'tiny.png')


def test_cli_keeps_alpha_gray_16_bit_orientation_icc_and_reports_bad_files(checkpoint, tmp_path):
    _inputs(tmp_path / 'in')
    result = cli('super_resolve.py', tmp_path / 'in', '-o', tmp_path / 'out', '--model', checkpoint, cwd=tmp_path,
                 check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    for bad in ['broken.png', 'empty.jpg', 'truncated.png', 'tiny.png']:  # one line each, naming the file; no traceback
        assert sum(bad in line for line in errors) == 1, result.stderr
    assert 'Traceback' not in result.stderr
    assert '5 written, 0 skipped (already there), 4 failed' in result.stderr

    out = tmp_path / 'out'
    photo = Image.open(out / 'photo_x4.png')
    assert photo.mode == 'RGB' and photo.size == (120, 80)
    assert photo.info.get('icc_profile') == Image.open(tmp_path / 'in' / 'photo.png').info['icc_profile']

    logo = Image.open(out / 'logo_x4.png')
    assert logo.mode == 'RGBA' and logo.size == (120, 80)
    alpha = np.asarray(logo.getchannel('A'))
    assert (alpha[:, :56] == 0).all() and (alpha[:, 64:] == 255).all()  # bicubic only blurs the edge at x = 60

    gray = Image.open(out / 'scans' / 'gray_x4.png')  # the folder's layout is kept
    assert gray.mode == 'L' and gray.size == (120, 80)

    gray16 = Image.open(out / 'scans' / 'gray16_x4.png')
    assert gray16.mode in {'I;16', 'I'} and gray16.size == (120, 80)
    values = np.asarray(gray16)
    assert values.max() > 255 and (values % 257 != 0).mean() > 0.9  # real 16-bit values, not 8 bits scaled

    rotated = Image.open(out / 'rotated_x4.jpg')
    assert rotated.size == (24 * 4, 40 * 4)  # EXIF orientation applied: portrait
    assert rotated.mode == 'RGB'


def test_png_outputs_are_lossless_and_written_at_zlib_level_1(checkpoint, tmp_path):
    """PNG outputs use zlib's fastest level (images.PNG_COMPRESS_LEVEL): the zlib header of the image data says so, and
    the pixels are the ones given."""
    pixels = smooth_photo(96, 64)
    images.save_image(Image.fromarray(pixels), tmp_path / 'out.png')
    data = (tmp_path / 'out.png').read_bytes()
    idat = data.index(b'IDAT') + 4
    assert data[idat] == 0x78 and data[idat + 1] >> 6 == 0  # zlib FLEVEL 0: the fastest level (1)
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'out.png')), pixels)
    sr = super_resolve.super_resolve_image(inference.load_upscaler(checkpoint), images.read_image(tmp_path / 'out.png'))
    images.save_image(sr, tmp_path / 'sr.png')
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'sr.png')), np.asarray(sr))


def test_existing_outputs_are_kept_unless_overwrite(checkpoint, tmp_path, capsys):
    Image.fromarray(smooth_photo(16, 16)).save(tmp_path / 'a.png')
    out = tmp_path / 'a_big.png'
    out.write_bytes(b'keep me')
    super_resolve.main([str(tmp_path / 'a.png'), '-o', str(out), '--model', str(checkpoint)])
    assert out.read_bytes() == b'keep me'
    assert 'exists (pass --overwrite' in capsys.readouterr().err
    super_resolve.main([str(tmp_path / 'a.png'), '-o', str(out), '--model', str(checkpoint), '--overwrite'])
    assert Image.open(out).size == (64, 64)


def test_a_data_list_from_create_data_lists_is_its_images(checkpoint, tmp_path, capsys):
    import json
    for name, size in (('a', (16, 12)), ('b', (20, 16))):
        Image.fromarray(smooth_photo(*size)).save(tmp_path / f'{name}.png')
    (tmp_path / 'demo_test_images.json').write_text(json.dumps([str(tmp_path / 'a.png'), str(tmp_path / 'b.png')]))
    super_resolve.main([str(tmp_path / 'demo_test_images.json'), '-o', str(tmp_path / 'out'), '--model',
                        str(checkpoint)])
    assert [Image.open(tmp_path / 'out' / name).size for name in ('a_x4.png', 'b_x4.png')] == [(64, 48), (80, 64)]
    (tmp_path / 'bad.json').write_text('{"a": 1}')
    with pytest.raises(DataListError) as error:  # the one reader of data lists: datasets.read_image_list
        super_resolve.main([str(tmp_path / 'bad.json'), '--model', str(checkpoint)])
    assert str(error.value).startswith(f'{tmp_path}/bad.json is JSON but not a list of image paths')


def test_16_bit_to_jpeg_falls_back_to_8_bit_and_alpha_is_dropped(checkpoint, tmp_path):
    Image.fromarray((np.arange(16 * 16).reshape(16, 16) * 250).astype(np.uint16)).save(tmp_path / 'g16.png')
    rgba = np.dstack([smooth_photo(16, 16), np.full((16, 16), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / 'rgba.png')
    super_resolve.main([str(tmp_path / 'g16.png'), str(tmp_path / 'rgba.png'), '-o', str(tmp_path / 'out'),
                        '--ext', 'jpg', '--suffix', '', '--model', str(checkpoint)])
    assert Image.open(tmp_path / 'out' / 'g16.jpg').mode == 'L'
    assert Image.open(tmp_path / 'out' / 'rgba.jpg').mode == 'RGB'


# ---------------------------------------------------------------------------------------------------------------
# Tiling: no seams, bounded memory, out-of-memory fallback

def test_tiled_output_matches_untiled():
    """The paper's full SRResNet (16 blocks, receptive field ~39 LR pixels), fp32: 2 x 2 overlapping tiles
    blended on the CPU canvas stay within 1/255 (mean absolute difference) of one pass over the whole image."""
    torch.manual_seed(0)
    model = SRResNet().eval()
    lr_img = utils.convert_image(torch.from_numpy(smooth_photo(64, 56)).permute(2, 0, 1) / 255.0, '[0, 1]',
                                 'imagenet-norm')  # (3, 56, 64)
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[-2:]))
    whole = Upscaler(model, 4, tile=None).tiled(lr_img)
    tiled = Upscaler(model, 4, tile=40, tile_overlap=16).tiled(lr_img)
    assert len(calls) == 1 + 4 and all(shape == (36, 40) for shape in calls[1:])  # equal tiles, evenly spread
    assert tiled.shape == (3, 224, 256) and tiled.device.type == 'cpu' and tiled.dtype == torch.float32
    assert tiled.min() >= -1 and tiled.max() <= 1
    mean_abs_difference = (tiled - whole).abs().mean().item() / 2  # [-1, 1] -> [0, 1]
    assert mean_abs_difference < 1 / 255
    assert (tiled - whole).abs().max().item() / 2 < 8 / 255  # not even one visible seam


class _NearestUpsampling(torch.nn.Module):
    """A stand-in 'network' whose output pixel depends on one input pixel: tiling must change nothing."""

    def __init__(self, s):
        super().__init__()
        self.s = s
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the Upscaler reads the device from a parameter

    def forward(self, x):
        return torch.tanh(torch.nn.functional.interpolate(x, scale_factor=self.s, mode='nearest'))


@pytest.mark.parametrize('tile, tile_overlap', [(16, 0), (16, 5), (20, 8), (64, 16)])
def test_tiles_cover_every_pixel_once_blended(tile, tile_overlap):
    torch.manual_seed(0)
    lr_img = torch.randn(3, 37, 101)
    calls = []
    model = _NearestUpsampling(4)
    model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[-2:]))
    expected = model(lr_img[None])[0]
    calls.clear()
    tiled = Upscaler(model, 4, tile, tile_overlap).tiled(lr_img)
    torch.testing.assert_close(tiled, expected, atol=1e-6, rtol=0)
    assert all(max(shape) <= tile for shape in calls) and len(set(calls)) == 1
    # the fewest tiles: n per side with n * tile - (n - 1) * overlap >= size
    overlap = min(tile_overlap, tile // 2)
    n_per_side = [next(n for n in range(1, 100) if n * tile - (n - 1) * overlap >= size) for size in (37, 101)]
    assert len(calls) == n_per_side[0] * n_per_side[1]


@pytest.mark.parametrize('size, n_tiles', [((512, 512), 1), ((512, 300), 1), ((513, 512), 2), ((1000, 1000), 4)])
def test_the_default_tile_takes_a_512_image_whole(size, n_tiles):
    """The default tile: images up to 512x512 in one piece (no overlap work); 1000x1000 in 2 x 2 tiles."""
    calls = []
    model = _NearestUpsampling(4)
    model.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape[-2:])))
    Upscaler(model, 4).tiled(torch.zeros(3, *size))
    assert len(calls) == n_tiles and inference.DEFAULT_TILE == 512
    assert n_tiles > 1 or calls == [size]


def test_blend_weights_of_neighbours_sum_to_one():
    left = inference._blend_ramp(64, 0, 16)
    right = inference._blend_ramp(64, 16, 0)
    torch.testing.assert_close(left[-16:] + right[:16], torch.ones(16))
    assert (left[-4:] == 0).all() and (right[:4] == 0).all()  # tile edges (zero padding) are never used
    assert (left[:48] == 1).all()


def test_out_of_memory_halves_the_tile(checkpoint):
    upscaler = inference.load_upscaler(checkpoint)
    model, s = upscaler.model, upscaler.scaling_factor

    lr_img = torch.randn(3, 48, 64)
    retries = []
    sr = Upscaler(SmallMemory(model, 32 * 32), s, tile=None, tile_overlap=8).upscale(lr_img, on_retry=retries.append)
    assert retries == ['out of memory; trying again with --tile 32']
    torch.testing.assert_close(sr, Upscaler(model, s, tile=32, tile_overlap=8).tiled(lr_img))
    with pytest.raises(RuntimeError, match='something else'):  # other errors are not swallowed
        Upscaler(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), _Raise()), s).upscale(lr_img)


class _Raise(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError('something else')


def test_the_inference_rewrite_is_the_same_function():
    torch.manual_seed(0)
    model = SRResNet(n_blocks=2)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics as after training
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    model.eval()
    lr_imgs = torch.randn(2, 3, 16, 12)
    with torch.inference_mode():
        expected = model(lr_imgs)
        upscaler = Upscaler.for_model(model, amp_dtype=torch.bfloat16)
        prepared = upscaler.model
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())  # 5 folded into convs
        assert prepared.conv_block3[0].weight.shape == (16, 256, 5, 5)  # moved before the shuffle; 12 + 4 zero
        torch.testing.assert_close(prepared(lr_imgs), expected, atol=1e-5, rtol=0)
        sr = upscaler.forward(lr_imgs)
    assert sr.dtype == torch.float32 and (sr - expected).abs().mean() * 127.5 < 1.0  # < 1/255 on average
    for s in (2, 8):  # the rewrite of the tail holds at every scale
        model = SRResNet(n_channels=16, n_blocks=1, scaling_factor=s).eval()
        with torch.inference_mode():
            torch.testing.assert_close(speedups.for_inference(model)(lr_imgs), model(lr_imgs), atol=1e-5, rtol=0)


@pytest.mark.parametrize('native, auto, half', [(torch.bfloat16, torch.bfloat16, torch.bfloat16),
                                                (None, None, torch.bfloat16),  # a CPU without fast bf16
                                                (torch.float16, None, torch.float16)])  # older GPUs, MPS
def test_precision_flags(native, auto, half, monkeypatch):
    """--fp32, --half and the default ('auto') on a device whose fast autocast dtype is `native`."""
    monkeypatch.setattr(inference, 'autocast_dtype', lambda device: native)
    assert inference.pick_amp_dtype('cpu', 'fp32') is None
    assert inference.pick_amp_dtype('cpu', 'half') == half
    assert inference.pick_amp_dtype('cpu', 'auto') == auto


# ---------------------------------------------------------------------------------------------------------------
# Video

@pytest.mark.parametrize('codec', ['libx264', 'mpeg4'])
def test_video_round_trip(checkpoint, tmp_path, monkeypatch, codec):
    av = pytest.importorskip('av')
    make_video(tmp_path / 'clip.mp4')
    if codec == 'mpeg4':  # the fallback for an FFmpeg built without x264
        monkeypatch.setattr(av, 'codecs_available', av.codecs_available - {'libx264'})
    super_resolve.main([str(tmp_path / 'clip.mp4'), '-o', str(tmp_path / 'clip_x4.mp4'), '--model', str(checkpoint),
                        '--batch-size', '3'])  # 8 frames: batches of 3, 3 and 2
    with av.open(str(tmp_path / 'clip_x4.mp4')) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (128, 96)
        assert video.codec_context.name == {'libx264': 'h264', 'mpeg4': 'mpeg4'}[codec]
        assert video.average_rate == 12
        assert [stream.type for stream in container.streams] == ['video', 'audio']
        assert container.streams.audio[0].codec_context.name == 'aac'
        n_audio_packets = sum(1 for packet in container.demux(audio=0) if packet.size)
        container.seek(0)
        frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (96, 128, 3)
    with av.open(str(tmp_path / 'clip.mp4')) as container:  # audio copied packet for packet
        assert n_audio_packets == sum(1 for packet in container.demux(audio=0) if packet.size)


def test_video_frames_are_the_input_frames_upscaled_in_order(checkpoint, tmp_path, monkeypatch):
    """With an ideal network (each pixel repeated s x s times), every output frame is its own input frame upscaled,
    to within the encoder's loss: ranges, colours and order kept through the batches of video.FrameEncoder."""
    av = pytest.importorskip('av')
    make_video(tmp_path / 'clip.mp4')

    def nearest(upscaler, lr_imgs):  # (N, 3, h, w) ImageNet-normalised -> (N, 3, 4h, 4w) in [-1, 1]
        return utils.convert_image(lr_imgs, 'imagenet-norm', '[-1, 1]').repeat_interleave(4, 2).repeat_interleave(4, 3)

    monkeypatch.setattr(Upscaler, 'forward', nearest)
    super_resolve.main([str(tmp_path / 'clip.mp4'), '-o', str(tmp_path / 'x4.mp4'), '--model', str(checkpoint),
                        '--batch-size', '3'])
    frames = {}
    for name in ['clip.mp4', 'x4.mp4']:
        with av.open(str(tmp_path / name)) as container:
            frames[name] = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)]).astype(float)
    expected = frames['clip.mp4'].repeat(4, 1).repeat(4, 2)  # (8, 96, 128, 3)
    errors = np.abs(frames['x4.mp4'][:, None] - expected[None]).mean(axis=(2, 3, 4))  # (output, input) frame pairs
    assert errors.diagonal().max() < 3  # the encoder's loss (about 2 levels); a colour off by 10 levels gives 11
    assert list(errors.argmin(axis=1)) == list(range(8))  # each output frame nearest its own input frame


def test_not_a_video_is_one_line_error(checkpoint, tmp_path, capsys):
    (tmp_path / 'fake.mp4').write_bytes(b'\x00' * 100)
    with pytest.raises(UserError, match='^0 written, 0 skipped \\(already there\\), 1 failed$'):
        super_resolve.main([str(tmp_path / 'fake.mp4'), '-o', str(tmp_path / 'out'), '--model', str(checkpoint)])
    assert 'fake.mp4' in capsys.readouterr().err
    assert not (tmp_path / 'out' / 'fake_x4.mp4').exists()


def test_16_bit_colour_png_gives_16_bit_output(checkpoint, tmp_path, monkeypatch):
    # a smooth gradient: neighbouring pixels differ in the low byte only, which an 8-bit path would lose
    y, x = np.mgrid[0:16, 0:24]
    rgb = np.stack([1000 + 37 * x + 5 * y, 30000 + 11 * y, 60000 - 13 * x], axis=2).astype(np.uint16)
    rgba = np.dstack([rgb, (65535 - 101 * x).astype(np.uint16)])
    write_png_16(tmp_path / 'rgb48.png', rgb)
    write_png_16(tmp_path / 'rgba64.png', rgba)

    def nearest(upscaler, lr_img, *args, **kwargs):  # an ideal network: no change but the size, in float32
        s = upscaler.scaling_factor
        return utils.convert_image(lr_img, 'imagenet-norm', '[-1, 1]').repeat_interleave(s, 1).repeat_interleave(s, 2)

    monkeypatch.setattr(Upscaler, 'upscale', nearest)
    super_resolve.main([str(tmp_path / 'rgb48.png'), str(tmp_path / 'rgba64.png'), '-o', str(tmp_path / 'out'),
                        '--model', str(checkpoint)])
    super_resolve.main([str(tmp_path / 'rgb48.png'), '-o', str(tmp_path / 'out' / 'rgb48.tif'),
                        '--model', str(checkpoint)])

    header = (tmp_path / 'out' / 'rgb48_x4.png').read_bytes()[:26]
    assert header[24] == 16 and header[25] == 2  # PNG bit depth 16, colour type RGB
    for name in ['rgb48_x4.png', 'rgb48.tif']:
        out = images.read_image(tmp_path / 'out' / name)
        assert out.bits == 16 and out.rgb.shape == (64, 96, 3) and out.alpha is None
        assert np.abs(out.rgb[::4, ::4].astype(int) - rgb).max() <= 1, name  # not 8 bits scaled (error up to 128)
    out = images.read_image(tmp_path / 'out' / 'rgba64_x4.png')
    assert out.bits == 16 and out.alpha is not None
    assert np.abs(out.rgb[::4, ::4].astype(int) - rgb).max() <= 1
    assert np.abs(out.alpha[::4, ::4].astype(int) - rgba[..., 3]).max() <= 200  # bicubic, on a 101-step ramp
    assert (out.alpha % 257 != 0).mean() > 0.9  # 16-bit alpha, not 8 bits scaled


def test_16_bit_colour_outputs_keep_their_pixels_and_a_png_its_icc_profile(checkpoint, tmp_path):
    """image_formats.save_16_bit_colour writes the pixels as given; a PNG gets the profile in an iCCP chunk that
    Pillow reads back (checking its CRC), a TIFF none (FFmpeg's TIFF encoder writes none, as before)."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    y, x = np.mgrid[0:12, 0:20]
    rgba = np.stack([1000 + 37 * x, 30000 + 11 * y, 60000 - 13 * x, 65535 - 97 * y], axis=2).astype(np.uint16)
    for name, pixels in [('rgb48.png', rgba[..., :3]), ('rgba64.png', rgba), ('rgb48.tif', rgba[..., :3])]:
        image_formats.save_16_bit_colour(pixels, tmp_path / name, icc)
        loaded = images.read_image(tmp_path / name)
        assert np.array_equal(np.dstack([loaded.rgb, loaded.alpha]) if pixels.shape[2] == 4 else loaded.rgb, pixels)
        with Image.open(tmp_path / name) as img:
            img.load()
            assert img.info.get('icc_profile') == (icc if name.endswith('.png') else None), name
        assert loaded.icc_profile == img.info.get('icc_profile')
    # through the command line: a 16-bit colour PNG in, its profile and depth out
    super_resolve.main([str(tmp_path / 'rgb48.png'), '-o', str(tmp_path / 'out.png'), '--model', str(checkpoint)])
    out = images.read_image(tmp_path / 'out.png')
    assert out.bits == 16 and out.rgb.shape == (48, 80, 3) and out.icc_profile == icc


def test_webm_is_vp9_and_without_vp9_one_line_error(checkpoint, tmp_path, monkeypatch, capsys):
    av = pytest.importorskip('av')
    if 'libvpx-vp9' not in av.codecs_available:
        pytest.skip("this PyAV's FFmpeg has no libvpx-vp9")
    with av.open(str(tmp_path / 'clip.webm'), 'w') as container:  # a webm input too
        video = container.add_stream('libvpx-vp9', rate=12)
        video.width, video.height, video.pix_fmt = 32, 24, 'yuv420p'
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(smooth_photo(32, 24, seed=i), format='rgb24')
            frame.pts, frame.time_base = i, Fraction(1, 12)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    make_video(tmp_path / 'clip.mp4')  # h264/mpeg4 + AAC: the AAC cannot go into webm
    super_resolve.main([str(tmp_path / 'clip.webm'), str(tmp_path / 'clip.mp4'), '-o', str(tmp_path / 'out'),
                        '--ext', '.png', '--model', str(checkpoint)])
    super_resolve.main([str(tmp_path / 'clip.mp4'), '-o', str(tmp_path / 'out' / 'from_mp4.webm'),
                        '--model', str(checkpoint)])
    assert 'audio dropped' in capsys.readouterr().err
    for name, n_frames in [('clip_x4.webm', 4), ('from_mp4.webm', 8)]:
        with av.open(str(tmp_path / 'out' / name)) as container:
            video = container.streams.video[0]
            assert video.codec_context.name == 'vp9' and (video.width, video.height) == (128, 96)
            assert len(list(container.decode(video=0))) == n_frames

    # without VP9: one error line for the webm, the other input still written, non-zero exit
    monkeypatch.setattr(av, 'codecs_available', av.codecs_available - {'libvpx-vp9'})
    with pytest.raises(UserError) as error:
        super_resolve.main([str(tmp_path / 'clip.webm'), str(tmp_path / 'clip.mp4'), '-o', str(tmp_path / 'novp9'),
                            '--model', str(checkpoint)])
    assert str(error.value) == '1 written, 0 skipped (already there), 1 failed'
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert errors[0].startswith(f'error: {tmp_path}/novp9/clip_x4.webm: this FFmpeg has no VP9 encoder')
    assert (tmp_path / 'novp9' / 'clip_x4.mp4').is_file() and not (tmp_path / 'novp9' / 'clip_x4.webm').exists()


def test_grid_with_checkpoints_of_different_scales_is_one_line_error(checkpoint, tiny_model, tmp_path):
    x2 = tiny_model
    Image.fromarray(smooth_photo(64, 64)).save(tmp_path / 'a.png')
    with pytest.raises(CheckpointError) as error:  # before any file is tried, not an error in the loop
        super_resolve.main([str(tmp_path / 'a.png'), '--grid', '--model', str(checkpoint), '--srgan', str(x2),
                            '-o', str(tmp_path / 'out')])
    message = str(error.value)
    assert message.startswith(f'--srgan {x2} upscales x2 but --model {checkpoint} upscales x4')
    assert '\n' not in message and not (tmp_path / 'out').exists()


def test_one_large_image_shows_a_bar_of_tiles(checkpoint, tmp_path, capsys):
    Image.fromarray(smooth_photo(80, 48)).save(tmp_path / 'big.png')
    Image.fromarray(smooth_photo(80, 48, seed=1)).save(tmp_path / 'other.png')
    # --tile 32, overlap 16: ceil((80 - 16) / 16) = 4 columns x ceil((48 - 16) / 16) = 2 rows
    super_resolve.main([str(tmp_path / 'big.png'), '-o', str(tmp_path / 'big_x4.png'), '--model', str(checkpoint),
                        '--tile', '32', '--tile-overlap', '16'])
    err = capsys.readouterr().err
    assert 'big.png:   0%|          | 0/8 ' in err and 'tile/s' in err
    super_resolve.main([str(tmp_path / 'big.png'), str(tmp_path / 'other.png'), '-o', str(tmp_path / 'out'),
                        '--model', str(checkpoint), '--tile', '32', '--tile-overlap', '16'])
    err = capsys.readouterr().err
    assert 'tile' not in err.replace('--tile', '') and '2/2' in err  # several files: the file bar alone


@pytest.mark.parametrize('size, tile, tile_overlap', [((48, 40), 16, 4), ((100, 37), 24, 8), ((20, 20), 16, 16),
                                                       ((17, 64), 16, 0)])
def test_on_tile_reports_every_tile_the_upscaler_runs(size, tile, tile_overlap):
    calls, reports = [], []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Upsample(scale_factor=2))
    model.register_forward_hook(lambda *_: calls.append(len(reports)))  # how many reports before each forward
    Upscaler(model, 2, tile, tile_overlap).tiled(torch.randn(3, *size),
                                                 on_tile=lambda done, total: reports.append((done, total)))
    n = len(calls)
    assert n > 1 and reports == [(i, n) for i in range(n + 1)]
    assert calls == list(range(1, n + 1))  # (0, n) comes before the first tile, (i, n) right after tile i


def test_a_model_of_another_scale_than_asked_is_one_line(checkpoint, tmp_path, monkeypatch):
    Image.fromarray(smooth_photo(32, 32)).save(tmp_path / 'a.png')
    with pytest.raises(CheckpointError) as error:
        super_resolve.main([str(tmp_path / 'a.png'), '--model', str(checkpoint), '--scale', '2', '-o',
                            str(tmp_path / 'out')])
    assert str(error.value) == (f'--model {checkpoint} upscales x4, not --scale 2: pass --scale 4, or a model of x2 '
                                f'(or no --model: the shipped one)')
    super_resolve.main([str(tmp_path / 'a.png'), '--model', str(checkpoint), '--scale', '4', '-o',
                        str(tmp_path / 'out')])  # its own scale: fine
    assert Image.open(tmp_path / 'out' / 'a_x4.png').size == (128, 128)
    with pytest.raises(CheckpointError, match=r'^srresnet_checkpoint=.*srresnet.pt upscales x4, not scale=8: pass '
                                              r'scale=4, or a model of x8$'):
        super_resolve.visualize_sr(Image.fromarray(smooth_photo(64, 64)), srresnet_checkpoint=checkpoint, scale=8,
                                   device='cpu')
    monkeypatch.setattr(inference, 'DEFAULT_MODEL', tmp_path / 'weights' / 'srresnet_x4.pt')
    with pytest.raises(CheckpointError, match=r'^no shipped x8 model yet \(.*srresnet_x8\.pt is missing\)'):
        super_resolve.main([str(tmp_path / 'a.png'), '--scale', '8', '-o', str(tmp_path / 'out8')])
    with pytest.raises(SystemExit) as stop:  # a scale that no SRResNet has is a usage error
        super_resolve.parse_args([str(tmp_path / 'a.png'), '--scale', '3'])
    assert stop.value.code == 2


# ---------------------------------------------------------------------------------------------------------------
# Where outputs may go: every output planned (outputs.OutputPlan) before any work, refused in one line

def _no_work(monkeypatch):
    """Make any upscaling fail the test: a refusal must come before the work."""
    def refuse(*args, **kwargs):
        raise AssertionError('upscaled although the output was to be refused')
    monkeypatch.setattr(Upscaler, 'upscale', refuse)


def test_an_output_folder_inside_an_input_folder_is_refused_not_read_back(checkpoint, tmp_path, monkeypatch):
    """It used to be written, its files left out of this run's inputs but read back as inputs by the next run's
    folder search; now it is one line, before any work, and nothing is written."""
    (tmp_path / 'in').mkdir()
    Image.fromarray(smooth_photo(16, 16)).save(tmp_path / 'in' / 'a.png')
    _no_work(monkeypatch)
    for output in ('in/results', 'in', 'in/sub/deeper'):
        with pytest.raises(OutputError) as error:
            super_resolve.main([str(tmp_path / 'in'), '-o', str(tmp_path / output), '--model', str(checkpoint)])
        message = str(error.value)
        assert message.startswith(f'-o {tmp_path / output} is inside {tmp_path / "in"}, which this command reads as '
                                  f'input') and 'outside' in message and '\n' not in message
    assert sorted(p.name for p in tmp_path.rglob('*')) == ['a.png', 'in']


def test_an_output_on_an_input_or_two_on_one_file_is_refused_even_with_overwrite(checkpoint, tmp_path, monkeypatch):
    for name in ('a.png', 'b.png', 'b.jpg'):
        Image.fromarray(smooth_photo(16, 16)).save(tmp_path / name)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    _no_work(monkeypatch)
    a, b_png, b_jpg = (str(tmp_path / name) for name in ('a.png', 'b.png', 'b.jpg'))
    with pytest.raises(OutputError, match=f'^-o {a} is {a}, which this command reads; write to another file$'):
        super_resolve.main([a, '-o', a, '--model', str(checkpoint), '--overwrite'])
    with pytest.raises(OutputError, match=f'^{a} -> {a} is {a}, which this command reads'):
        super_resolve.main([a, '-o', str(tmp_path), '--suffix', '', '--model', str(checkpoint), '--overwrite'])
    out = tmp_path / 'out' / 'b_x4.png'
    with pytest.raises(OutputError, match=f'^{b_png} -> {out} and {b_jpg} -> {out} are one file'):
        super_resolve.main([b_png, b_jpg, '--ext', '.png', '-o', str(tmp_path / 'out'), '--model', str(checkpoint),
                            '--overwrite'])
    with pytest.raises(OutputError, match=f'^-o {tmp_path / "out.png"} names one file but 2 inputs'):
        super_resolve.main([a, b_png, '-o', str(tmp_path / 'out.png'), '--model', str(checkpoint)])
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_unknown_output_format_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch):
    Image.fromarray(smooth_photo(16, 16)).save(tmp_path / 'a.png')
    make_video(tmp_path / 'clip.mp4', n_frames=2)
    (tmp_path / 'notes').write_text('mine')
    _no_work(monkeypatch)
    for in_name, out_name, written in [('a.png', 'a.xyz', '*.png'), ('a.png', 'a.mp4', '*.png'),
                                       ('clip.mp4', 'clip.png', '*.mp4'), ('a.png', 'notes', '*.png')]:
        out = tmp_path / out_name
        with pytest.raises(OutputError) as error:
            super_resolve.main([str(tmp_path / in_name), '-o', str(out), '--model', str(checkpoint)])
        assert str(error.value).startswith(f'-o {out}: cannot write ') and written in str(error.value)
    assert (tmp_path / 'notes').read_text() == 'mine' and not (tmp_path / 'a.xyz').exists()
    with pytest.raises(SystemExit) as stop:  # --ext is a usage error
        super_resolve.parse_args([str(tmp_path / 'a.png'), '--ext', 'gif'])
    assert stop.value.code == 2


def test_a_legal_long_name_is_written_and_a_name_over_255_bytes_is_refused(checkpoint, tmp_path, monkeypatch):
    """The atomic write's temporary name fits NAME_MAX (it used to add ~16 characters and fail past 239)."""
    Image.fromarray(smooth_photo(16, 12)).save(tmp_path / 'a.png')
    longest = tmp_path / ('n' * 246 + '.png')  # 250 characters
    super_resolve.main([str(tmp_path / 'a.png'), '-o', str(longest), '--model', str(checkpoint)])
    assert Image.open(longest).size == (64, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['a.png', longest.name])  # no temporary file left
    too_long = tmp_path / ('n' * 252 + '.png')  # 256 bytes
    _no_work(monkeypatch)
    with pytest.raises(OutputError) as error:
        super_resolve.main([str(tmp_path / 'a.png'), '-o', str(too_long), '--model', str(checkpoint)])
    assert str(error.value).startswith(f'-o {too_long}: the name ') and 'is 256 bytes, longer than the 255' in str(
        error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['a.png', longest.name])


def test_ctrl_c_says_what_was_done_and_stops_as_an_interrupt(checkpoint, tmp_path, monkeypatch, capsys):
    """The summary line, then KeyboardInterrupt again: run_main says 'stopped (Ctrl-C)' and exits 130."""
    inputs = []
    for name in 'abc':
        Image.fromarray(smooth_photo(16, 16)).save(tmp_path / f'{name}.png')
        inputs.append(str(tmp_path / f'{name}.png'))
    original = super_resolve.super_resolve_file

    def interrupted_on_the_second(upscaler, in_path, *args, **kwargs):
        if in_path.name == 'b.png':
            raise KeyboardInterrupt
        return original(upscaler, in_path, *args, **kwargs)
    monkeypatch.setattr(super_resolve, 'super_resolve_file', interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        super_resolve.main([*inputs, '-o', str(tmp_path / 'out'), '--model', str(checkpoint)])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        '1 written, 0 skipped, 0 failed, 2 not done; the same command goes on from there (it skips what exists)')
    with pytest.raises(SystemExit) as stop:
        utils.run_main(lambda: super_resolve.main([*inputs, '-o', str(tmp_path / 'out'), '--model', str(checkpoint)]))
    assert stop.value.code == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert err[-2:] == ['0 written, 1 skipped, 0 failed, 2 not done; the same command goes on from there (it skips '
                        'what exists)', 'stopped (Ctrl-C)']


def test_the_srgan_scale_refusal_speaks_of_the_srgan(checkpoint, tiny_model, tmp_path):
    """It used to advise '(or no --model: the shipped one)', which --srgan has no use for."""
    x2 = tiny_model
    Image.fromarray(smooth_photo(32, 32)).save(tmp_path / 'a.png')
    with pytest.raises(CheckpointError) as error:
        super_resolve.main([str(tmp_path / 'a.png'), '--grid', '--model', str(x2), '--srgan', str(checkpoint),
                            '--scale', '2', '-o', str(tmp_path / 'out')])
    assert str(error.value) == f'--srgan {checkpoint} upscales x4, not --scale 2: pass --scale 4, or a model of x2'


@pytest.mark.parametrize('scale', [3, '2', 2.0, True, 16])
def test_visualize_sr_takes_a_scale_of_its_shipped_models_only(scale, checkpoint, tmp_path, monkeypatch):
    """scale=3 used to report a missing srresnet_x3.pt; scale='2' said "not --scale 2: pass --scale 2"."""
    monkeypatch.setattr(inference, 'DEFAULT_MODEL', tmp_path / 'weights' / 'srresnet_x4.pt')  # none shipped
    for srresnet in (inference.DEFAULT_MODEL, checkpoint):
        with pytest.raises(super_resolve.InputError) as error:
            super_resolve.visualize_sr(Image.fromarray(smooth_photo(64, 64)), srresnet_checkpoint=srresnet, scale=scale,
                                       device='cpu')
        assert str(error.value) == (f"scale={scale!r}: pass one of 2, 4, 8 (an int), or None for the checkpoints' own "
                                    f"scale")
        assert isinstance(error.value, ValueError) and isinstance(error.value, UserError)


def test_real_picks_the_shipped_real_input_model_and_says_when_it_is_missing(checkpoint, tiny_model, tmp_path,
                                                                             monkeypatch):
    """--real (and visualize_sr(real=True), hubconf real=True) is weights/srresnet_x4_real.pt, not the default x4; a
    missing file is one line, and --real beside --model or another --scale is a usage error."""
    import hubconf
    weights = tmp_path / 'weights'
    weights.mkdir()
    monkeypatch.setattr(inference, 'DEFAULT_MODEL', weights / 'srresnet_x4.pt')
    Image.fromarray(smooth_photo(32, 32)).save(tmp_path / 'a.png')
    with pytest.raises(CheckpointError, match=r'^no shipped real-input x4 model yet \(.*srresnet_x4_real\.pt is '
                                              r'missing\); pass --model PATH'):
        super_resolve.main([str(tmp_path / 'a.png'), '--real', '-o', str(tmp_path / 'none')])
    other = save_srresnet(tmp_path / 'other.pt', n_blocks=2, scaling_factor=4, seed=1)
    (weights / 'srresnet_x4.pt').write_bytes(other.read_bytes())
    (weights / 'srresnet_x4_real.pt').write_bytes(checkpoint.read_bytes())
    for flags, out in (([], 'default.png'), (['--real'], 'real.png'), (['--real', '--scale', '4'], 'real4.png'),
                       (['--model', str(checkpoint)], 'model.png')):
        super_resolve.main([str(tmp_path / 'a.png'), *flags, '-o', str(tmp_path / out)])
    read = {name: np.asarray(Image.open(tmp_path / name)) for name in ('default.png', 'real.png', 'real4.png',
                                                                      'model.png')}
    assert (read['real.png'] == read['model.png']).all() and (read['real4.png'] == read['model.png']).all()
    assert not (read['default.png'] == read['model.png']).all()
    for flags in (['--model', str(checkpoint)], ['--scale', '2'], ['--scale', '8'], ['--model', str(tiny_model),
                                                                                      '--scale', '2']):
        with pytest.raises(SystemExit) as stop:
            super_resolve.parse_args([str(tmp_path / 'a.png'), '--real', *flags])
        assert stop.value.code == 2
    hr = Image.fromarray(smooth_photo(64, 64))
    grid = super_resolve.visualize_sr(hr, device='cpu', real=True)
    assert grid == super_resolve.visualize_sr(hr, srresnet_checkpoint=checkpoint, device='cpu', real=True)
    assert grid != super_resolve.visualize_sr(hr, device='cpu')
    with pytest.raises(super_resolve.InputError, match=r'^real=True with scale=2: the real-input model upscales x4'):
        super_resolve.visualize_sr(hr, device='cpu', real=True, scale=2)
    model = hubconf.srresnet(real=True)
    assert all((v == w).all() for v, w in zip(model.state_dict().values(),
                                              inference.load_generator(checkpoint).state_dict().values()))
    with pytest.raises(UserError, match=r'^scale=2: the shipped real-input SRResNets upscale by 4 \(an int\)$'):
        hubconf.upscaler(2, real=True)

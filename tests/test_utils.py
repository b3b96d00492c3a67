import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import utils
from checkpoints import CheckpointError, convert_tutorial_checkpoint, load_checkpoint, save_checkpoint
from conftest import cli, smooth_photo, write_png_16
from inference import load_generator
from models import SRResNet
from images import load_image, read_image
from utils import ImageLoadError, ImageTransforms, convert_image, downsample


# ---------------------------------------------------------------------------------------------------------------
# convert_image

def test_y_channel_of_pure_colours():
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    imgs = colours.view(5, 3, 1, 1).expand(5, 3, 4, 4)  # (5, 3, 4, 4) in [0, 1]
    y = convert_image(imgs, '[0, 1]', 'y-channel')
    assert y.shape == (5, 4, 4)
    expected = torch.tensor([235.0, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    torch.testing.assert_close(y[:, 0, 0], expected, atol=1e-4, rtol=0)
    # a single image gives (H, W)
    assert convert_image(imgs[0] * 2 - 1, '[-1, 1]', 'y-channel').shape == (4, 4)


def test_conversion_round_trips():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 6)  # [0, 1]
    for via in ['[0, 255]', '[-1, 1]', 'imagenet-norm']:
        back = convert_image(convert_image(x, '[0, 1]', via), via, '[0, 1]')
        torch.testing.assert_close(back, x, atol=1e-6, rtol=0)
    # imagenet-norm: (x - mean) / std, channel-wise
    normed = convert_image(x, '[0, 1]', 'imagenet-norm')
    torch.testing.assert_close(normed[:, 0], (x[:, 0] - 0.485) / 0.229)
    torch.testing.assert_close(normed[:, 2], (x[:, 2] - 0.406) / 0.225)
    # single images and batches agree
    torch.testing.assert_close(convert_image(x[1], '[0, 1]', 'imagenet-norm'), normed[1])
    torch.testing.assert_close(convert_image(x, '[0, 1]', '[-1, 1]'), x * 2 - 1)


def test_pil_round_trip_is_exact():
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    img = Image.fromarray(array)
    t = convert_image(img, 'pil', '[-1, 1]')
    assert t.shape == (3, 7, 5) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(convert_image(t, '[-1, 1]', 'pil')), array)
    assert np.array_equal(np.asarray(convert_image(convert_image(img, 'pil', 'imagenet-norm'), 'imagenet-norm', 'pil')),
                          array)


def test_conversion_keeps_dtype_and_device_and_rejects_bad_names():
    x = torch.rand(3, 4, 4, dtype=torch.float64)
    assert convert_image(x, '[0, 1]', 'imagenet-norm').dtype == torch.float64
    with pytest.raises(ValueError, match='source'):
        convert_image(x, '[0, 2]', '[0, 1]')
    with pytest.raises(ValueError, match='target'):
        convert_image(x, '[0, 1]', 'ycbcr')


# ---------------------------------------------------------------------------------------------------------------
# The image loader: every mode to correct RGB

def save(img, path, **kwargs):
    img.save(path, **kwargs)
    return str(path)


def test_loader_modes(tmp_path):
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    rgb = np.asarray(load_image(save(gray, tmp_path / 'gray.png')))
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 0], np.asarray(gray))
    assert np.array_equal(rgb[..., 2], rgb[..., 0])
    assert read_image(tmp_path / 'gray.png').gray

    palette = Image.new('P', (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert np.asarray(load_image(save(palette, tmp_path / 'p.png'))).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    assert np.asarray(load_image(save(palette, tmp_path / 'p.gif'))).tolist() == [[[255, 0, 0], [0, 0, 255]]]

    one_bit = Image.new('1', (2, 1))
    one_bit.putpixel((1, 0), 1)
    assert np.asarray(load_image(save(one_bit, tmp_path / 'b.png'))).tolist() == [[[0, 0, 0], [255, 255, 255]]]

    cmyk = Image.new('CMYK', (2, 1), (0, 255, 255, 0))  # red
    cmyk.putpixel((1, 0), (0, 0, 0, 0))  # white
    assert np.asarray(load_image(save(cmyk, tmp_path / 'cmyk.tif'))).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    assert np.asarray(load_image(save(cmyk, tmp_path / 'cmyk.jpg', quality=100))).reshape(-1, 3)[1].min() > 245


def test_loader_keeps_an_rgb_icc_profile_but_drops_a_cmyk_or_lab_one(tmp_path):
    from PIL import ImageCms
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    rgb = Image.new('RGB', (4, 4), (200, 100, 50))
    assert read_image(save(rgb, tmp_path / 'rgb.png', icc_profile=profile)).icc_profile == profile
    for img, name in [(Image.new('CMYK', (4, 4), (10, 20, 30, 40)), 'cmyk.jpg'),
                      (Image.new('CMYK', (4, 4), (10, 20, 30, 40)), 'cmyk.tif'),
                      (Image.new('LAB', (4, 4), (50, 120, 130)), 'lab.tif')]:
        path = save(img, tmp_path / name, icc_profile=profile)
        assert Image.open(path).info.get('icc_profile') == profile  # the file has one ...
        loaded = read_image(path)
        assert loaded.icc_profile is None and loaded.rgb.shape == (4, 4, 3)  # ... that does not fit RGB values


def test_loader_composites_transparency_over_white(tmp_path):
    rgba = Image.new('RGBA', (3, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 128)])  # opaque red, transparent, half-black
    loaded = read_image(save(rgba, tmp_path / 'rgba.png'))
    assert loaded.alpha.tolist() == [[255, 0, 128]]
    assert np.asarray(load_image(tmp_path / 'rgba.png')).tolist() == [[[255, 0, 0], [255, 255, 255], [127, 127, 127]]]

    la = Image.new('LA', (2, 1))
    la.putdata([(0, 255), (0, 0)])
    assert np.asarray(load_image(save(la, tmp_path / 'la.png'))).tolist() == [[[0, 0, 0], [255, 255, 255]]]

    palette = Image.new('P', (2, 1))
    palette.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info['transparency'] = 1
    transparent = load_image(save(palette, tmp_path / 'pt.png', transparency=1))
    assert np.asarray(transparent).tolist() == [[[0, 255, 0], [255, 255, 255]]]
    assert read_image(tmp_path / 'pt.png').alpha.tolist() == [[255, 0]]

    opaque = Image.new('RGBA', (2, 2), (1, 2, 3, 255))
    assert read_image(save(opaque, tmp_path / 'opaque.png')).alpha is None  # nothing to carry


def test_loader_scales_16_bit_instead_of_clipping(tmp_path):
    values = np.array([[0, 1000, 32896, 40000, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / 'deep.png')
    loaded = read_image(path)
    assert loaded.bits == 16 and loaded.rgb.dtype == np.uint16 and loaded.gray
    assert loaded.rgb[..., 0].tolist() == values.tolist()
    rgb8 = np.asarray(load_image(path))
    assert rgb8[..., 1].tolist() == [[0, 4, 128, 156, 255]]  # x / 257, rounded; a clip would give 255 for 1000+


def test_loader_applies_exif_orientation(tmp_path):
    array = np.zeros((16, 32, 3), np.uint8)  # 32 wide, 16 high; the top-left 8x8 block is red
    array[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # 'rotate 90 CW to display'
    for name in ['rotated.jpg', 'rotated.png']:
        path = save(Image.fromarray(array), tmp_path / name, exif=exif, quality=100)
        loaded = np.asarray(load_image(path)).astype(int)
        assert loaded.shape == (32, 16, 3)  # displayed portrait
        corner = loaded[1:7, 9:15].mean(axis=(0, 1))  # red moved to the top-right corner
        assert corner[0] > 200 and corner[1] < 50, (name, corner)


def test_loader_refuses_bad_files_with_one_line_naming_them(tmp_path, monkeypatch):
    good = save(Image.new('RGB', (64, 64), (10, 20, 30)), tmp_path / 'good.png')
    data = open(good, 'rb').read()
    (tmp_path / 'truncated.png').write_bytes(data[:len(data) // 2])
    (tmp_path / 'empty.jpg').write_bytes(b'')
    (tmp_path / 'text.png').write_text('hello')
    for name in ['truncated.png', 'empty.jpg', 'text.png', 'missing.png']:
        with pytest.raises(ImageLoadError) as e:
            load_image(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and '\n' not in str(e.value)

    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 64x64 = 4096 > 2 x 1000: Pillow's error
    with pytest.raises(ImageLoadError, match='decompression bomb'):
        load_image(good)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 3000)  # between 1x and 2x: only a warning in Pillow
    with pytest.raises(ImageLoadError, match='decompression bomb'):
        load_image(good)


# ---------------------------------------------------------------------------------------------------------------
# The training loader gives the same pixels for every mode (checked against what the loader did before the rare
# formats moved out of utils.py, and against the reasoning each expectation states)

def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _with_exif(path, orientation):
    """The PNG at `path` given an eXIf chunk right after IHDR (for a 16-bit colour PNG, which Pillow cannot write)."""
    from PIL import PngImagePlugin
    data, body = path.read_bytes(), _exif(orientation).tobytes()
    with open(path, 'wb') as f:
        f.write(data[:33])  # the signature and IHDR
        PngImagePlugin.putchunk(f, b'eXIf', body.removeprefix(b'Exif\x00\x00'))
        f.write(data[33:])
    return path


def _write_tiff_16(path, pixels):
    """(H, W, 3) uint16 -> a 48-bit TIFF, through PyAV directly (Pillow cannot write one)."""
    import av
    with av.open(str(path), 'w', format='image2', options={'update': '1'}) as target:
        stream = target.add_stream('tiff', rate=1)
        stream.width, stream.height, stream.pix_fmt = pixels.shape[1], pixels.shape[0], 'rgb48le'
        target.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format='rgb48le')))
        target.mux(stream.encode(None))
    return path


# EXIF orientation k -> what displays the stored (H, W, C) array upright, as the EXIF standard defines it
EXIF_UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
                7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}  # 5, 7: the two diagonals
RGB8 = np.array([[[0, 1, 2], [127, 128, 129], [250, 251, 255]],
                 [[10, 200, 30], [255, 0, 255], [64, 32, 16]]], np.uint8)  # (2, 3, 3): every orientation differs
RGB16 = np.array([[[0, 128, 129], [385, 386, 32767], [32768, 65406, 65535]],
                  [[1000, 30000, 60000], [257, 514, 771], [12345, 54321, 40000]]], np.uint16)  # ties of x/257: none
ALPHA8 = np.array([[0, 1, 127], [128, 254, 255]], np.uint8)
ALPHA16 = np.array([[0, 1, 32767], [32768, 65534, 65535]], np.uint16)


def _to_8_bits(values):
    """16-bit values -> 8 bits, x / 257 rounded (never x / 257 = n + 1/2 for an integer x: no ties)."""
    return ((values.astype(np.int64) * 2 + 257) // 514).astype(np.uint8)


def _over_white(rgb, alpha, top):
    """Colour over white by alpha, both on a 0..top scale, to 8 bits rounded: 255 (c a + top (top - a)) / top^2."""
    rgb, alpha = rgb.astype(object), alpha.astype(object)[..., None]
    exact = (rgb * alpha + top * (top - alpha)) * 255
    return np.vectorize(lambda v: int(round(Fraction(v, top * top))))(exact).astype(np.uint8)


def _every_mode(folder):
    """{file name: (written file, the RGB 8-bit pixels load_image must give)}."""
    gray8, gray16 = RGB8[..., 1], RGB16[..., 1]
    palette = Image.fromarray(gray8, 'P')  # index i: the grey level i
    palette.putpalette([i for i in range(256) for _ in range(3)])
    cases = {
        'rgb.png': (Image.fromarray(RGB8), RGB8),
        'rgb.tif': (Image.fromarray(RGB8), RGB8),
        'l.png': (Image.fromarray(gray8), np.dstack([gray8] * 3)),
        'p.png': (palette, np.dstack([gray8] * 3)),
        '1.png': (Image.fromarray(gray8 > 100), np.dstack([(gray8 > 100) * np.uint8(255)] * 3)),
        'rgba.png': (Image.fromarray(np.dstack([RGB8, ALPHA8])), _over_white(RGB8, ALPHA8, 255)),
        'la.png': (Image.fromarray(np.dstack([gray8, ALPHA8]), 'LA'), _over_white(np.dstack([gray8] * 3), ALPHA8, 255)),
        'i16.png': (Image.fromarray(gray16), np.dstack([_to_8_bits(gray16)] * 3)),
        'i16.tif': (Image.fromarray(gray16), np.dstack([_to_8_bits(gray16)] * 3)),
        # 32-bit integers beyond 16 bits are scaled so that the largest is 65535, rounded, then to 8 bits
        'i32.tif': (Image.fromarray(gray16.astype(np.int32) * 4, 'I'),
                    np.dstack([_to_8_bits(np.round(gray16 / gray16.max() * 65535))] * 3)),
        # floats in [0, 1] are scaled to 16 bits, rounded, then to 8 bits
        'f.tif': (Image.fromarray(gray16.astype(np.float32) / 65535, 'F'), np.dstack([_to_8_bits(gray16)] * 3)),
    }
    expected = {}
    for name, (img, pixels) in cases.items():
        img.save(folder / name)
        expected[name] = (folder / name, pixels)
    cmyk = Image.fromarray(RGB8).convert('CMYK')
    cmyk.save(folder / 'cmyk.tif')
    expected['cmyk.tif'] = (folder / 'cmyk.tif', np.asarray(Image.open(folder / 'cmyk.tif').convert('RGB')))  # Pillow's
    palette.save(folder / 'pt.png', transparency=int(gray8[0, 0]))  # one grey is transparent: white
    expected['pt.png'] = (folder / 'pt.png', np.dstack([np.where(gray8 == gray8[0, 0], 255, gray8)] * 3))
    write_png_16(folder / 'rgb48.png', RGB16)
    expected['rgb48.png'] = (folder / 'rgb48.png', _to_8_bits(RGB16))
    write_png_16(folder / 'rgba64.png', np.dstack([RGB16, ALPHA16]))
    expected['rgba64.png'] = (folder / 'rgba64.png', _over_white(RGB16, ALPHA16, 65535))
    expected['rgb48.tif'] = (_write_tiff_16(folder / 'rgb48.tif', RGB16), _to_8_bits(RGB16))
    for k in range(2, 9):  # EXIF orientation: the stored pixels turned upright
        Image.fromarray(RGB8).save(folder / f'rotated{k}.png', exif=_exif(k))
        expected[f'rotated{k}.png'] = (folder / f'rotated{k}.png', EXIF_UPRIGHT[k](RGB8))
        write_png_16(folder / f'rotated{k}_48.png', RGB16)
        expected[f'rotated{k}_48.png'] = (_with_exif(folder / f'rotated{k}_48.png', k),
                                          EXIF_UPRIGHT[k](_to_8_bits(RGB16)))
    return expected


def test_the_training_loader_gives_the_same_pixels_for_every_mode(tmp_path):
    for name, (path, pixels) in _every_mode(tmp_path).items():
        img = load_image(path)
        assert img.mode == 'RGB' and np.array_equal(np.asarray(img), pixels), name
    photo = smooth_photo(40, 24, 3)  # a JPEG turned upright: Pillow's decoded pixels, rotated
    Image.fromarray(photo).save(tmp_path / 'rotated.jpg', exif=_exif(6), quality=95)
    with Image.open(tmp_path / 'rotated.jpg') as stored:
        upright = np.rot90(np.asarray(stored.convert('RGB')), -1)
    assert np.array_equal(np.asarray(load_image(tmp_path / 'rotated.jpg')), upright)


def test_16_bit_colour_is_read_at_full_depth_and_turned_upright(tmp_path):
    for name, k in [('rgb48.png', 1), ('rotated6_48.png', 6), ('rotated7_48.png', 7)]:
        write_png_16(tmp_path / name, RGB16)
        loaded = read_image(_with_exif(tmp_path / name, k) if k > 1 else tmp_path / name)
        assert loaded.bits == 16 and not loaded.gray and loaded.alpha is None
        assert np.array_equal(loaded.rgb, EXIF_UPRIGHT[k](RGB16)), name
    loaded = read_image(_write_tiff_16(tmp_path / 'rgb48.tif', RGB16))
    assert np.array_equal(loaded.rgb, RGB16) and loaded.bits == 16
    write_png_16(tmp_path / 'rgba64.png', np.dstack([RGB16, ALPHA16]))
    loaded = read_image(tmp_path / 'rgba64.png')
    assert np.array_equal(loaded.rgb, RGB16) and np.array_equal(loaded.alpha, ALPHA16)


# ---------------------------------------------------------------------------------------------------------------
# Transforms

def coordinate_image(width, height):
    """R = x, G = y: a crop's top-left pixel tells where it was taken."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], axis=2).astype(np.uint8))


def test_train_crops_are_uniform_over_every_position_edges_included():
    img = coordinate_image(101, 98)
    transform = ImageTransforms('train', 96, 4, '[0, 255]', '[0, 255]')
    seen = set()
    for _ in range(400):
        lr, hr = transform(img)
        assert hr.shape == (3, 96, 96) and lr.shape == (3, 24, 24)
        left, top = int(hr[0, 0, 0]), int(hr[1, 0, 0])
        assert hr[0, 0, 95] == left + 95 and hr[1, 95, 0] == top + 95
        seen.add((left, top))
    assert seen == {(x, y) for x in range(6) for y in range(3)}  # all 18 positions, including right/bottom edges


def test_augment_gives_each_of_the_8_flips_and_rotations_and_lr_follows():
    img = coordinate_image(96, 96)  # the crop is the whole image: what changes is its orientation alone
    hr_array = np.asarray(img)
    dihedral = [np.rot90(a, k) for a in (hr_array, hr_array[:, ::-1]) for k in range(4)]  # the 8 symmetries
    transform = ImageTransforms('train', 96, 4, '[0, 255]', '[0, 255]', augment=True)
    counts = [0] * 8
    for _ in range(400):
        lr, hr = transform(img)
        hr_seen = hr.permute(1, 2, 0).numpy().astype(np.uint8)
        matches = [i for i, d in enumerate(dihedral) if np.array_equal(hr_seen, d)]
        assert len(matches) == 1
        counts[matches[0]] += 1
        expected_lr = np.asarray(Image.fromarray(hr_seen).resize((24, 24), Image.BICUBIC))
        assert np.array_equal(lr.permute(1, 2, 0).numpy().astype(np.uint8), expected_lr)
    assert min(counts) > 25  # each about 50 times in 400
    lr, hr = ImageTransforms('train', 96, 4, '[0, 255]', '[0, 255]')(img)  # off by default
    assert np.array_equal(hr.permute(1, 2, 0).numpy().astype(np.uint8), hr_array)


def test_lr_is_the_bicubic_downsample_of_its_hr():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (120, 130, 3), dtype=np.uint8))
    lr, hr = ImageTransforms('train', 96, 4, '[0, 1]', '[-1, 1]')(img)
    assert hr.min() >= -1 and hr.max() <= 1 and lr.min() >= 0 and lr.max() <= 1
    hr_pil = convert_image(hr, '[-1, 1]', 'pil')
    expected = hr_pil.resize((24, 24), Image.BICUBIC)
    assert np.array_equal(np.asarray(convert_image(lr, '[0, 1]', 'pil')), np.asarray(expected))
    # Pillow's bicubic antialiases: a 4x4 checkerboard block averages out instead of aliasing
    checker = Image.fromarray(((np.indices((96, 96)).sum(0) % 2) * 255).astype(np.uint8)).convert('RGB')
    assert np.abs(np.asarray(downsample(checker, 4), dtype=float) - 127.5).max() < 8


def test_test_split_keeps_the_largest_crop_divisible_by_the_scale():
    img = coordinate_image(103, 98)
    lr, hr = ImageTransforms('test', None, 4, 'imagenet-norm', '[0, 255]')(img)
    assert hr.shape == (3, 96, 100) and lr.shape == (3, 24, 25)
    assert hr[0, 0, 0] == 0 and hr[1, 0, 0] == 0  # top-left, as MATLAB's modcrop


def test_image_smaller_than_the_crop_is_a_clear_error():
    with pytest.raises(ValueError, match=r'tiny\.png.*smaller than the 96x96'):
        ImageTransforms('train', 96, 4, '[0, 1]', '[0, 1]')(Image.new('RGB', (95, 200)), name='tiny.png')
    with pytest.raises(ValueError, match='split'):
        ImageTransforms('val', 96, 4, '[0, 1]', '[0, 1]')


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints

def test_checkpoint_round_trip_and_generator_from_config(tmp_path):
    model = SRResNet(n_blocks=2, scaling_factor=2)
    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'kind': 'srresnet', 'model': model.state_dict(), 'iteration': 5,
                     'model_config': {'n_blocks': 2, 'scaling_factor': 2}}, path)
    assert load_checkpoint(path)['iteration'] == 5
    loaded = load_generator(path)
    assert not loaded.training and len(loaded.residual_blocks) == 2
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    # SRGAN checkpoints: the generator's keys carry 'net.'; the config can be recovered from the weights
    save_checkpoint({'kind': 'srgan', 'generator': {f'net.{k}': v for k, v in model.state_dict().items()}}, path)
    assert load_generator(path)(x).shape == (1, 3, 16, 16)


def test_pickled_checkpoints_are_refused_unless_allowed(tmp_path):
    path = tmp_path / 'checkpoint_srresnet.pth.tar'
    model = SRResNet(n_blocks=1)
    torch.save({'epoch': 3, 'model': model, 'optimizer': torch.optim.Adam(model.parameters())}, path)
    with pytest.raises(CheckpointError, match='--unsafe-pickle'):
        load_checkpoint(path)
    converted = load_checkpoint(path, allow_unsafe_pickle=True)
    assert converted['model_config']['n_blocks'] == 1 and converted['config']['epoch'] == 3
    assert torch.equal(converted['model']['conv_block3.conv_block.0.weight'], model.conv_block3.conv_block[0].weight)
    for bad in [tmp_path / 'none.pt', tmp_path / 'junk.pt']:
        if bad.name == 'junk.pt':
            bad.write_bytes(b'junk')
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)


def test_pickle_advice_names_only_flags_the_caller_has(tmp_path):
    path = tmp_path / 'checkpoint_srresnet.pth.tar'
    torch.save({'epoch': 3, 'model': SRResNet(n_blocks=1)}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, unsafe_flag=None)  # e.g. `checkpoints.py export`, which has no --unsafe-pickle
    assert '--unsafe-pickle' not in str(error.value) and f'python checkpoints.py convert {path}' in str(error.value)


def test_convert_refuses_what_is_not_a_tutorial_checkpoint_in_one_line(tmp_path):
    repo_format = tmp_path / 'last.pt'
    save_checkpoint({'kind': 'srresnet', 'model': SRResNet(n_blocks=1).state_dict()}, repo_format)
    pickled_module = tmp_path / 'linear.pt'
    torch.save(torch.nn.Linear(2, 2), pickled_module)  # pickled objects, but no tutorial checkpoint dict
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'junk')
    for path, words in [(tmp_path / 'missing.pt', 'no such checkpoint file'), (repo_format, 'already a weights-only'),
                        (pickled_module, 'not an original-tutorial checkpoint'), (junk, 'not a PyTorch checkpoint')]:
        with pytest.raises(CheckpointError, match=words) as error:
            convert_tutorial_checkpoint(path)
        assert '\n' not in str(error.value)
    # and from the command line: one `error:` line, no traceback
    result = cli('checkpoints.py', 'convert', repo_format, tmp_path / 'out.pt', check=False)
    assert result.returncode == 1 and result.stderr.startswith('error: ') and len(result.stderr.splitlines()) == 1
    assert 'nothing to convert' in result.stderr and not (tmp_path / 'out.pt').exists()
    result = cli('checkpoints.py', 'convert', tmp_path / 'missing.pt', 'out.pt', check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f'error: {tmp_path / "missing.pt"}: no such checkpoint file'


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_checkpoint({'iteration': 1}, path)

    def crash(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoints.torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'iteration': 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)['iteration'] == 1
    assert os.listdir(tmp_path) == ['last.pt']  # no temporary file left behind


# ----------------------------------------------------------------------------------------------------------------
# Hardware

def test_pick_device_names_the_choices_in_one_line(monkeypatch):
    assert utils.pick_device('cpu') == torch.device('cpu')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: False)
    assert utils.pick_device('auto') == torch.device('cpu')
    for name, words in [('foo', 'choose auto, cpu, cuda, cuda:N or mps'), ('cuda', 'no CUDA GPU'),
                        ('cuda:1', 'no CUDA GPU'), ('mps', 'MPS is not available'), ('xla', 'choose auto, cpu')]:
        with pytest.raises(utils.UserError) as error:
            utils.pick_device(name)
        message = str(error.value)
        assert words in message and '\n' not in message, message
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert utils.pick_device('cuda:1') == torch.device('cuda', 1)
    with pytest.raises(utils.UserError, match='2 CUDA GPU'):
        utils.pick_device('cuda:2')


def test_run_main_says_a_user_error_in_one_line_and_lets_a_bug_show_its_traceback(capsys):
    def mistake():
        raise utils.ImageLoadError('photo.png: not an image\nPillow says more')

    with pytest.raises(SystemExit) as stop:
        utils.run_main(mistake)
    assert stop.value.code == 1 and capsys.readouterr().err == 'error: photo.png: not an image Pillow says more\n'

    def stopped():
        raise utils.UserError('', exit_code=143)  # a stopped run: said already, ends with 128 + SIGTERM

    with pytest.raises(SystemExit) as stop:
        utils.run_main(stopped)
    assert stop.value.code == 143 and capsys.readouterr().err == ''

    def bug():
        raise KeyError('a bug')

    with pytest.raises(KeyError):  # not caught: its traceback is what the bug report needs
        utils.run_main(bug)

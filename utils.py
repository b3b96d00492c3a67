"""
Everything the scripts share: the one image loader, conversions between value ranges, the train/test
transforms, the evaluation metrics, the checkpoint format and the tiled inference routine.

Value ranges used throughout (the habit of this repo: every tensor's range is written next to it):
    'pil'           a PIL RGB image, 8 bits per channel
    '[0, 255]'      float tensor, (3, H, W) or (N, 3, H, W)
    '[0, 1]'        float tensor, the same shapes
    '[-1, 1]'       float tensor, the same shapes; what SRResNet/Generator output (tanh)
    'imagenet-norm' float tensor, ([0, 1] - mean) / std with ImageNet's mean and std; what the models take in
    'y-channel'     float tensor, (H, W) or (N, H, W), BT.601 luma in [16, 235] on the 0-255 scale
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import pickle
import random
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from models import SRResNet

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')

# ImageNet statistics (of RGB in [0, 1]); the tensors are made on the input's device when needed, so importing
# this module never touches CUDA.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma for RGB in [0, 1]: Y = 16 + (65.481 R + 128.553 G + 24.966 B), on the 0-255 scale
RGB_WEIGHTS_Y = (65.481, 128.553, 24.966)


# ----------------------------------------------------------------------------------------------------------------
# The one image loader

class ImageLoadError(ValueError):
    """A file that cannot be used as an image; the message names the file and says why."""


@dataclasses.dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3), uint8 or uint16 (for 16-bit files), EXIF orientation applied
    alpha: np.ndarray | None  # (H, W), same dtype as rgb, or None when the file has no transparency
    gray: bool  # the file was single-channel (L, 1, I;16, LA)
    icc_profile: bytes | None  # carried over to outputs by super_resolve.py

    @property
    def bits(self):
        return 16 if self.rgb.dtype == np.uint16 else 8


def read_image(path):
    """Decode any image file into RGB (+ alpha) at its own bit depth. Raises ImageLoadError, never a deep traceback.

    Grayscale and palette images become RGB; CMYK/YCbCr/LAB are converted; 16-bit images stay 16-bit (uint16);
    EXIF orientation is applied; truncated files and decompression bombs are refused."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: a truncated file fails here, not later in a DataLoader worker
                icc_profile = img.info.get('icc_profile')
                img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(f'{path}: more than {Image.MAX_IMAGE_PIXELS} pixels, refused as a possible '
                             f'decompression bomb (raise PIL.Image.MAX_IMAGE_PIXELS if you trust it)') from None
    except UnidentifiedImageError:
        raise ImageLoadError(f'{path}: not an image Pillow can read (empty, corrupt or another format)') from None
    except FileNotFoundError:
        raise ImageLoadError(f'{path}: no such file') from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, bad headers
        raise ImageLoadError(f'{path}: unreadable image ({e})') from None
    if img.width == 0 or img.height == 0:
        raise ImageLoadError(f'{path}: image has no pixels')

    mode = img.mode
    gray = mode in {'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'}
    if mode in {'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'}:
        # 16-bit (or 32-bit / float) single channel: scale to 16 bits, never clip into 8
        values = np.asarray(img, dtype=np.float64)
        if mode == 'F' and values.max(initial=0) <= 1.0:
            values = values * 65535
        elif mode in {'I', 'F'} and values.max(initial=0) > 65535:
            values = values / values.max() * 65535
        channel = np.clip(np.round(values), 0, 65535).astype(np.uint16)
        return LoadedImage(np.repeat(channel[..., None], 3, axis=2), None, True, icc_profile)

    if mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    elif mode in {'PA', 'RGBa', 'La'}:
        img = img.convert('RGBA' if mode != 'La' else 'LA')
    elif mode == '1':
        img = img.convert('L')
    if img.mode in {'RGBA', 'LA'}:
        alpha = np.asarray(img.getchannel('A'))
        color = img.convert('RGB') if img.mode == 'RGBA' else img.getchannel('L').convert('RGB')
        if alpha.min() == 255:
            alpha = None  # fully opaque: no alpha to carry
        return LoadedImage(np.asarray(color), alpha, gray, icc_profile)
    if img.mode in {'CMYK', 'LAB'}:
        icc_profile = None  # it describes CMYK/Lab values: attached to the RGB we return, it would be wrong
    return LoadedImage(np.asarray(img.convert('RGB')), None, gray, icc_profile)


def load_image(path, background=(255, 255, 255)):
    """The loader every script uses for training and evaluation: any file -> PIL RGB image, 8 bits per channel.
    Transparent pixels are composited over `background`; 16-bit values are scaled (x / 257), not clipped."""
    loaded = read_image(path)
    rgb = loaded.rgb.astype(np.float32) / (65535.0 if loaded.bits == 16 else 255.0)  # (H, W, 3) in [0, 1]
    if loaded.alpha is None and loaded.bits == 8:
        return Image.fromarray(loaded.rgb)
    if loaded.alpha is not None:
        alpha = loaded.alpha.astype(np.float32)[..., None] / (65535.0 if loaded.bits == 16 else 255.0)
        rgb = rgb * alpha + np.asarray(background, np.float32) / 255.0 * (1.0 - alpha)
    return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# Conversions between value ranges

def _stats(img, values):
    shape = (3, 1, 1) if img.dim() == 3 else (1, 3, 1, 1)
    return torch.tensor(values, dtype=img.dtype, device=img.device).view(shape)


def convert_image(img, source, target):
    """Convert an image between the ranges named in this module's docstring.

    img: a PIL image (source 'pil'), or a float tensor (3, H, W) or batch (N, 3, H, W) in `source`.
    source: 'pil', '[0, 255]', '[0, 1]', '[-1, 1]' or 'imagenet-norm'.
    target: 'pil', '[0, 255]', '[0, 1]', '[-1, 1]', 'imagenet-norm' or 'y-channel'.
    'pil' as a target takes a single image; values outside the range are clamped there (as when saving).
    """
    sources = {'pil', '[0, 255]', '[0, 1]', '[-1, 1]', 'imagenet-norm'}
    targets = sources | {'y-channel'}
    if source not in sources:
        raise ValueError(f'source must be one of {sorted(sources)}, not {source!r}')
    if target not in targets:
        raise ValueError(f'target must be one of {sorted(targets)}, not {target!r}')

    # to [0, 1]
    if source == 'pil':
        img = torch.from_numpy(np.asarray(img.convert('RGB'), dtype=np.float32)).permute(2, 0, 1) / 255.0
    elif source == '[0, 255]':
        img = img / 255.0
    elif source == '[-1, 1]':
        img = (img + 1.0) / 2.0
    elif source == 'imagenet-norm':
        img = img * _stats(img, IMAGENET_STD) + _stats(img, IMAGENET_MEAN)

    # from [0, 1]
    if target == 'pil':
        if img.dim() != 3:
            raise ValueError('target pil takes one image (3, H, W), not a batch')
        array = (img.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array)
    if target == '[0, 255]':
        return img * 255.0
    if target == '[0, 1]':
        return img
    if target == '[-1, 1]':
        return img * 2.0 - 1.0
    if target == 'imagenet-norm':
        return (img - _stats(img, IMAGENET_MEAN)) / _stats(img, IMAGENET_STD)
    # 'y-channel': (N, 3, H, W) -> (N, H, W) or (3, H, W) -> (H, W), in [16, 235]
    weights = torch.tensor(RGB_WEIGHTS_Y, dtype=img.dtype, device=img.device)
    return torch.tensordot(weights, img, dims=([0], [img.dim() - 3])) + 16.0


# ----------------------------------------------------------------------------------------------------------------
# Transforms: an HR image -> (LR, HR) pair

class ImageTransforms:
    """Make an (LR, HR) pair from an HR image.

    split 'train': a uniformly random crop_size x crop_size crop (every position, edges included);
    split 'test':  the largest top-left crop whose sides are divisible by the scale (MATLAB's modcrop);
    LR = HR downsampled by `scaling_factor` with Pillow's antialiased bicubic, after an optional Gaussian blur.
    augment (train only): the crop is then flipped / rotated by a multiple of 90 degrees, one of the 8 with equal
    chance (not in the paper; common for small training sets).
    """

    def __init__(self, split, crop_size, scaling_factor, lr_img_type, hr_img_type, blur_sigma=0.0, augment=False):
        split = split.lower()
        if split not in {'train', 'test'}:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        if split == 'train' and crop_size % scaling_factor != 0:
            raise ValueError(f'crop_size {crop_size} must be divisible by the scaling factor {scaling_factor}')
        self.split = split
        self.crop_size = crop_size
        self.scaling_factor = int(scaling_factor)
        self.lr_img_type = lr_img_type
        self.hr_img_type = hr_img_type
        self.blur_sigma = blur_sigma
        self.augment = augment

    def __call__(self, img, name='image'):
        """img: PIL RGB image -> (lr_img, hr_img) tensors (3, h, w), (3, h * s, w * s) in their chosen ranges."""
        s = self.scaling_factor
        if self.split == 'train':
            if img.width < self.crop_size or img.height < self.crop_size:
                raise ValueError(f'{name}: {img.width}x{img.height} is smaller than the {self.crop_size}x'
                                 f'{self.crop_size} training crop; rebuild the data lists with a larger --min-size')
            left = random.randint(0, img.width - self.crop_size)  # inclusive: the right/bottom edges can be hit
            top = random.randint(0, img.height - self.crop_size)
            hr_img = img.crop((left, top, left + self.crop_size, top + self.crop_size))
            if self.augment:
                k = random.randrange(8)  # 0: as it is; else a flip, a rotation by 90/180/270, or a transposition
                hr_img = hr_img.transpose(Image.Transpose(k - 1)) if k else hr_img
        else:
            width, height = img.width - img.width % s, img.height - img.height % s
            if width == 0 or height == 0:
                raise ValueError(f'{name}: {img.width}x{img.height} is smaller than the scaling factor {s}')
            hr_img = img.crop((0, 0, width, height))

        lr_img = downsample(hr_img, s, self.blur_sigma)
        assert hr_img.width == lr_img.width * s and hr_img.height == lr_img.height * s
        return convert_image(lr_img, 'pil', self.lr_img_type), convert_image(hr_img, 'pil', self.hr_img_type)


def downsample(hr_img, scaling_factor, blur_sigma=0.0):
    """PIL HR image (sides divisible by the scale) -> PIL LR image, Pillow bicubic (antialiased when shrinking)."""
    if blur_sigma > 0:
        from PIL import ImageFilter
        hr_img = hr_img.filter(ImageFilter.GaussianBlur(blur_sigma))
    return hr_img.resize((hr_img.width // scaling_factor, hr_img.height // scaling_factor), Image.BICUBIC)


# ----------------------------------------------------------------------------------------------------------------
# Metrics, as MATLAB computes them (Y channel on the 0-255 scale; the caller removes the border)

def calculate_psnr(img1, img2, data_range=255.0):
    """PSNR in dB of (H, W) or (N, H, W) tensors on the same scale; a batch gives one value per image."""
    mse = ((img1.double() - img2.double()) ** 2).flatten(-2).mean(-1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size=11, sigma=1.5, dtype=torch.float64, device=None):
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size), sums to 1


def calculate_ssim(img1, img2, data_range=255.0, window_size=11, sigma=1.5):
    """SSIM of Wang et al. 2004 as their MATLAB ssim_index computes it: an 11x11 Gaussian window (sigma 1.5),
    K1 0.01, K2 0.03, statistics over 'valid' windows only. (H, W) or (N, H, W) tensors on the same scale."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x, y = img1.double(), img2.double()  # (..., H, W)
    g = _gaussian_window(window_size, sigma).sum(0).tolist()  # the window is outer(g, g): filter rows, then columns

    def window_mean(z):  # (..., H, W) -> (..., H - 10, W - 10): Gaussian-weighted means over 'valid' windows
        # (sums of shifted copies: several times faster on the CPU than a float64 conv2d with the 11x11 window)
        width, height = z.shape[-1] - window_size + 1, z.shape[-2] - window_size + 1
        rows = sum(g[k] * z[..., k:k + width] for k in range(window_size))
        return sum(g[k] * rows[..., k:k + height, :] for k in range(window_size))

    mu_x, mu_y, mean_xx, mean_yy, mean_xy = window_mean(torch.stack([x, y, x * x, y * y, x * y]))
    sigma_xx = mean_xx - mu_x ** 2
    sigma_yy = mean_yy - mu_y ** 2
    sigma_xy = mean_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sigma_xx + sigma_yy + c2))
    return ssim_map.flatten(-2).mean(-1)  # the batch shape


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: one format, state_dicts only, written atomically, read with weights_only=True

class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what to do."""


class PickledCheckpointError(CheckpointError):
    """An original-tutorial checkpoint (pickled model objects), refused because allow_unsafe_pickle is not set."""


def save_checkpoint(state, path):
    """Write `state` (a dict of tensors, numbers, strings, lists and dicts) to `path` atomically: a crash while
    writing leaves the previous file at `path` intact."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def load_checkpoint(path, allow_unsafe_pickle=False, map_location='cpu', unsafe_flag='--unsafe-pickle'):
    """Read a checkpoint with torch.load(weights_only=True), which cannot run code from the file.

    The original tutorial saved whole pickled model objects; unpickling those can execute arbitrary code, so they
    are refused unless `allow_unsafe_pickle` is set (only for files you trust), and converted to this repo's format
    on the fly (see convert_tutorial_checkpoint). unsafe_flag: the caller's flag that sets allow_unsafe_pickle, named
    in the refusal (None where there is none: the message then names `python utils.py convert` alone)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such checkpoint file')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not allow_unsafe_pickle:
            how = f'pass {unsafe_flag} once to convert it, or ' if unsafe_flag else ''
            raise PickledCheckpointError(
                f'{path} holds pickled Python objects (as the original tutorial saved them), and loading it could '
                f'run code from the file. If you trust it, {how}convert it once with '
                f'`python utils.py convert {path} converted.pt`.') from None
        checkpoint = convert_tutorial_checkpoint(path, map_location)
    except Exception as e:
        raise CheckpointError(f'{path}: not a PyTorch checkpoint or damaged ({str(e).splitlines()[0]})') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path}: expected a checkpoint dict, found {type(checkpoint).__name__}')
    return checkpoint


def convert_tutorial_checkpoint(path, map_location='cpu'):
    """Unpickle an original-tutorial checkpoint ({'epoch', 'model': SRResNet or Generator object, ...}; SRGAN ones
    also 'generator'/'discriminator') and return it in this repo's format. UNSAFE: only for files you trust."""
    import models, sys  # the pickles refer to 'models.SRResNet' etc.; make sure the name resolves to ours
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such checkpoint file')
    try:
        torch.load(path, map_location=map_location, weights_only=True)
        weights_only = True
    except Exception:  # pickled objects (what we expect), or not a checkpoint at all: the next load tells
        weights_only = False
    if weights_only:
        raise CheckpointError(f'{path}: already a weights-only checkpoint (this repo\'s format), not the original '
                              f'tutorial\'s pickled models: nothing to convert, use it as it is')
    sys.modules.setdefault('models', models)
    try:
        old = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f'{path}: not a PyTorch checkpoint or damaged ({str(e).splitlines()[0]})') from None
    entry = 'generator' if isinstance(old, dict) and 'generator' in old else 'model'
    net = old.get(entry) if isinstance(old, dict) else None
    if not isinstance(net, torch.nn.Module):
        raise CheckpointError(f'{path}: not an original-tutorial checkpoint (expected a dict with a pickled "model" '
                              f'or "generator" model object)')
    if entry == 'generator':  # SRGAN checkpoint: the Generator wraps an SRResNet as .net
        state_dict = {k.removeprefix('net.'): v for k, v in net.state_dict().items()}
    else:
        state_dict = net.state_dict()
    return {'kind': 'srgan' if entry == 'generator' else 'srresnet', 'model': state_dict,
            'model_config': _model_config_from_state_dict(state_dict),
            'iteration': None, 'config': {'converted_from': os.path.basename(path), 'epoch': old.get('epoch')}}


def _model_config_from_state_dict(state_dict):
    """Recover SRResNet's constructor arguments from its weights."""
    n_blocks = len({k.split('.')[1] for k in state_dict if k.startswith('residual_blocks.')})
    n_subpixel = len({k.split('.')[1] for k in state_dict if k.startswith('subpixel_convolutional_blocks.')})
    first, small = state_dict['conv_block1.conv_block.0.weight'], state_dict['conv_block2.conv_block.0.weight']
    return {'large_kernel_size': first.shape[-1], 'small_kernel_size': small.shape[-1],
            'n_channels': first.shape[0], 'n_blocks': n_blocks, 'scaling_factor': 2 ** n_subpixel}


def generator_state_dict(checkpoint, average=True):
    """The SRResNet-layout state_dict (no 'net.' prefix) of the generator in any of this repo's checkpoints:
    train_srresnet.py's ({'model': ...}) or train_srgan.py's ({'generator': ...}). average: when the run kept a
    moving average ({'ema': ...}, --ema-decay), that, which is what its validation measured; False: the trained
    weights themselves (to resume training)."""
    for key in ('ema', 'model', 'generator')[0 if average else 1:]:
        if key in checkpoint:
            return {k.removeprefix('net.'): v for k, v in checkpoint[key].items()}
    raise CheckpointError('checkpoint holds no generator weights (no "model" or "generator" entry); '
                          'pass a checkpoint written by train_srresnet.py or train_srgan.py')


def load_generator(path, device='cpu', allow_unsafe_pickle=False):
    """Any SRResNet/SRGAN checkpoint -> an SRResNet (the Generator's network) in eval mode on `device`.
    The architecture and scale are read from the checkpoint."""
    checkpoint = load_checkpoint(path, allow_unsafe_pickle)
    state_dict = generator_state_dict(checkpoint)
    config = checkpoint.get('model_config') or _model_config_from_state_dict(state_dict)
    model = SRResNet(**config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f'{path}: weights do not fit SRResNet({config}): {str(e).splitlines()[0]}') from None
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# Tiled inference: any image size in bounded memory, no seams (used by eval.py and super_resolve.py alike)

def _blend_ramp(length, overlap_left, overlap_right, device):
    """1-D weights of one tile: 1 in the middle; over each overlap, 0 for its outer quarter (next to the tile's
    edge, where zero padding spoils the output: SRResNet sees ~39 LR pixels each way), rising linearly over its
    middle half, 1 for its inner quarter. Two neighbours' ramps over the same overlap sum to 1. Against a ramp
    over the whole overlap this cuts the tiled-vs-untiled error about 8x (overlap 16, trained-ish SRResNet)."""
    def ramp(n):  # (n,) rising from 0 to 1 over the middle half of n pixels
        return ((torch.arange(n, device=device) + 0.5 - n / 4) / (n / 2)).clamp(0, 1)

    w = torch.ones(length, device=device)
    if overlap_left > 0:
        w[:overlap_left] = ramp(overlap_left)
    if overlap_right > 0:
        w[length - overlap_right:] = torch.minimum(w[length - overlap_right:], ramp(overlap_right).flip(0))
    return w


@torch.inference_mode()
def super_resolve_tiled(model, lr_img, scaling_factor, tile=None, tile_overlap=16, amp_dtype=None, on_tile=None):
    """Super-resolve one image tile by tile and blend the tiles, so memory is bounded by the tile size.

    model: SRResNet-like, takes ImageNet-normalised LR, returns [-1, 1]; lr_img: (3, h, w) ImageNet-normalised,
    on the CPU or the model's device. tile: LR tile side (None: the whole image at once); tile_overlap: LR pixels
    shared by neighbouring tiles, where the outputs are cross-faded (see _blend_ramp). on_tile(done, total): called
    with the tiles done and the tiles in all, before the first tile and after each one (for a progress bar).
    Returns the SR image (3, h * s, w * s) in [-1, 1], float32, on the CPU: the full-size canvas never lives on
    the accelerator."""
    device = next(model.parameters()).device
    s = scaling_factor
    _, h, w = lr_img.shape

    def forward(x):  # (3, th, tw) -> (3, th * s, tw * s) float32 on the CPU
        x = x.to(device, non_blocking=True)[None]
        if device.type != 'mps':
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(x)[0].float().cpu()

    def report(done, total):
        if on_tile is not None:
            on_tile(done, total)

    if tile is None or (h <= tile and w <= tile):
        report(0, 1)
        sr = forward(lr_img)
        report(1, 1)
        return sr

    tile_overlap = min(tile_overlap, tile // 2)

    def spread(size):
        """The fewest tiles of side <= `tile` that cover [0, size) with neighbours sharing >= tile_overlap pixels,
        made equal and evenly spaced (a last tile pushed flush with the edge would redo up to a whole tile)."""
        if size <= tile:
            return [0], size
        n = math.ceil((size - tile_overlap) / (tile - tile_overlap))
        side = math.ceil((size + (n - 1) * tile_overlap) / n)  # <= tile
        return [i * (size - side) // (n - 1) for i in range(n)], side

    (tops, th), (lefts, tw) = spread(h), spread(w)
    sr = torch.zeros(3, h * s, w * s)  # the canvas (CPU)
    weight = torch.zeros(1, h * s, w * s)
    tiles = [(top, left) for top in tops for left in lefts]
    report(0, len(tiles))
    for done, (top, left) in enumerate(tiles, 1):
        out = forward(lr_img[:, top:top + th, left:left + tw])  # (3, th * s, tw * s)
        # cross-fade only where a neighbour overlaps; image borders keep full weight
        wy = _blend_ramp(th * s, (tile_overlap * s if top > 0 else 0), (tile_overlap * s if top + th < h else 0), 'cpu')
        wx = _blend_ramp(tw * s, (tile_overlap * s if left > 0 else 0), (tile_overlap * s if left + tw < w else 0), 'cpu')
        mask = wy[:, None] * wx[None, :]  # (th * s, tw * s)
        sr[:, top * s:(top + th) * s, left * s:(left + tw) * s] += out * mask
        weight[:, top * s:(top + th) * s, left * s:(left + tw) * s] += mask
        report(done, len(tiles))
    return sr.div_(weight)  # in place: no second full-size canvas


# ----------------------------------------------------------------------------------------------------------------
# Hardware

def pick_device(name='auto'):
    """'auto' -> CUDA if available, else Apple MPS, else CPU; or 'cpu', 'cuda', 'cuda:N', 'mps'. A name that is not
    one of those, or a device this machine lacks, ends the program with one `error:` line."""
    mps_available = getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        return torch.device('mps' if mps_available else 'cpu')
    choices = 'auto, cpu, cuda, cuda:N or mps'
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SystemExit(f'error: unknown device {name!r}; choose {choices}') from None
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SystemExit(f'error: --device {name}: no CUDA GPU is available here (PyTorch '
                             f'{torch.__version__}); use cpu or auto')
        if device.index is not None and device.index >= count:
            raise SystemExit(f'error: --device {name}: this machine has {count} CUDA GPU(s), cuda:0 to '
                             f'cuda:{count - 1}')
    elif device.type == 'mps':
        if not mps_available:
            raise SystemExit(f'error: --device {name}: Apple MPS is not available here; use cpu or auto')
    elif device.type != 'cpu':
        raise SystemExit(f'error: unsupported device {name!r}; choose {choices}')
    return device


def autocast_dtype(device):
    """The mixed-precision dtype worth using on `device`: bf16 where the hardware supports it (CUDA Ampere+,
    CPUs with AVX-512 BF16/AMX), fp16 on older CUDA GPUs and MPS (needs a GradScaler for training), else None."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == 'mps':
        return torch.float16
    if device.type == 'cpu' and torch.backends.mkldnn.is_available() and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_has_native_bf16():
    """True on x86 CPUs with AVX512-BF16 or AMX (bf16 is then fast); slower than fp32 elsewhere."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
        return ' avx512_bf16' in flags or ' amx_bf16' in flags
    except OSError:
        return False


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Training helpers (train_srresnet.py, train_srgan.py)
#
# What both training scripts share, once: the flags they have in common, DDP and device set-up, the data stream,
# the checkpointed state (models, optimizers, RNGs, data position), the loop that logs, validates, checkpoints and
# stops cleanly on SIGINT/SIGTERM. Each script keeps what makes it itself: its models and its train_step().

CHECKPOINT_FILE, BEST_CHECKPOINT_FILE, LOG_FILE = 'last.pt', 'best.pt', 'log.jsonl'


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help as the reference card: the description (a module docstring) as written, and '(default: ...)' after
    every flag that takes a value; not after on/off switches or None defaults, whose help says what they mean."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def training_argument_parser(description, output_dir, iterations, val_every):
    """The flags both training scripts share, with the paper's defaults; each script adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument('--data-folder', default='./data', help='where train_images.json and the test lists are')
    parser.add_argument('--output-dir', default=output_dir, help='checkpoints, log, samples and plots go here')
    parser.add_argument('--iterations', type=int, default=iterations, help='training iterations (optimizer steps)')
    parser.add_argument('--batch-size', type=int, default=16, help='HR crops per step, per process (DDP: x N)')
    parser.add_argument('--lr', type=float, default=1e-4, help='Adam learning rate')
    parser.add_argument('--beta1', type=float, default=0.9, help="Adam's beta1")
    parser.add_argument('--crop-size', type=int, default=96, help='side of the HR training crops')
    parser.add_argument('--scaling-factor', type=int, default=4, choices=[2, 4, 8], help='upscaling factor')
    parser.add_argument('--blur-sigma', type=float, default=0.0,
                        help='Gaussian blur (sigma in HR pixels) before bicubic downsampling; 0: none, as the paper')
    parser.add_argument('--augment', action='store_true',
                        help='flip and rotate the training crops by multiples of 90 degrees (not in the paper)')
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='DataLoader worker processes (0: load in the training process)')
    parser.add_argument('--cache-images', action='store_true',
                        help='decode every training image once into RAM (uint8): for small sets such as 291')
    parser.add_argument('--ema-decay', type=float, default=0.0,
                        help='also keep an exponential moving average of the (generator) weights and BatchNorm '
                             'statistics with this decay per iteration (e.g. 0.999); validation, best.pt, eval.py, '
                             'super_resolve.py and train_srgan.py then use the average; 0: none, as the paper')
    parser.add_argument('--checkpoint-every', type=int, default=1000, help=f'write {CHECKPOINT_FILE} this often')
    parser.add_argument('--val-every', type=int, default=val_every,
                        help=f'validate (PSNR/SSIM, sample sheet, {BEST_CHECKPOINT_FILE}) this often')
    parser.add_argument('--val-set', default='auto',
                        help="test list for validation: a name (Set5 -> Set5_test_images.json), 'none', or 'auto': "
                             "Set5 if listed, else demo, else the first list found")
    parser.add_argument('--log-every', type=int, default=10, help='log averaged values this often')
    parser.add_argument('--resume', default=None, metavar='PATH|auto',
                        help=f'continue a run from a checkpoint; auto: {CHECKPOINT_FILE} in --output-dir if present')
    parser.add_argument('--seed', type=int, default=0, help='seeds weights, data order and crops')
    parser.add_argument('--device', default='auto', help='auto (CUDA, else MPS, else CPU), or e.g. cuda:1, cpu')
    parser.add_argument('--no-amp', action='store_true',
                        help='train in fp32 (default: bf16 autocast where supported, else fp16 + GradScaler on GPUs)')
    parser.add_argument('--compile', action='store_true', help='torch.compile the models (minutes to start; pays off on GPUs, not measurably on CPUs)')
    parser.add_argument('--sync-bn', action='store_true', help='DDP: BatchNorm statistics over all GPUs')
    return parser


def setup_run(args, kind):
    """Start DDP when run under torchrun, pick the device and mixed precision, seed, and find the checkpoint to
    resume from. Returns a namespace: rank, world_size, is_main, device, amp_dtype, memory_format, checkpoint
    (dict or None) and start_iteration."""
    import types
    for name in ('iterations', 'batch_size', 'checkpoint_every', 'val_every', 'log_every'):
        if getattr(args, name) < 1:
            raise SystemExit(f'error: --{name.replace("_", "-")} must be at least 1')
    if not 0 <= args.ema_decay < 1:
        raise SystemExit(f'error: --ema-decay must be at least 0 and below 1 (e.g. 0.999), got {args.ema_decay}')
    if args.crop_size % args.scaling_factor:
        raise SystemExit(f'error: --crop-size {args.crop_size} must be divisible by --scaling-factor '
                         f'{args.scaling_factor}')

    device = pick_device(args.device)
    rank, world_size = 0, 1
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:  # launched by torchrun
        rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        if device.type == 'cuda':
            device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if args.sync_bn and world_size > 1 and device.type != 'cuda':
        raise SystemExit('error: --sync-bn needs CUDA GPUs (PyTorch has no SyncBatchNorm on the CPU)')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest convolutions
    seed_everything(args.seed + rank)

    checkpoint, path = None, args.resume
    last_path = os.path.join(args.output_dir, CHECKPOINT_FILE)
    if args.resume == 'auto':
        path = last_path if os.path.isfile(last_path) else None
        if path is None and rank == 0:
            print(f'--resume auto: no {last_path} yet, starting a new run')
    elif args.resume is None and os.path.isfile(last_path):
        raise SystemExit(f'error: {args.output_dir} already holds a run ({last_path}); continue it with --resume '
                         f'auto, or choose another --output-dir')
    if path is not None:
        try:
            checkpoint = load_checkpoint(path)
        except PickledCheckpointError:
            raise SystemExit(f"error: {path} is an original-tutorial checkpoint (pickled model objects), which cannot "
                             f"be resumed: start a new run, or start train_srgan.py from it after `python utils.py "
                             f"convert {path} converted.pt` (--srresnet-checkpoint converted.pt)") from None
        except CheckpointError as e:
            raise SystemExit(f'error: {e}') from None
        if checkpoint.get('kind') != kind or 'iteration' not in checkpoint or 'rng' not in checkpoint:
            raise SystemExit(f'error: {path} is not a {kind} training checkpoint written by train_{kind}.py, so it '
                             f'cannot be resumed (found kind {checkpoint.get("kind")!r})')
        if rank == 0:
            print(f'resuming from {path} at iteration {checkpoint["iteration"]}')
            changed = [f'--{k.replace("_", "-")} {v} (was {checkpoint["config"][k]})' for k, v in vars(args).items()
                       if k in {'batch_size', 'crop_size', 'seed', 'lr', 'beta1', 'blur_sigma', 'augment',
                                          'no_amp'}
                       and checkpoint['config'].get(k, v) != v]
            if changed:
                print(f'note: {", ".join(changed)}: the run will not continue as it would have')

    amp_dtype = None if args.no_amp else autocast_dtype(device)
    return types.SimpleNamespace(
        rank=rank, world_size=world_size, is_main=rank == 0, device=device, amp_dtype=amp_dtype,
        memory_format=torch.preserve_format if device.type == 'mps' else torch.channels_last,
        checkpoint=checkpoint, start_iteration=checkpoint['iteration'] if checkpoint else 0)


def prepare_model(model, run, args):
    """Move a model to the device in channels_last, then SyncBatchNorm / torch.compile / DDP as asked.
    Returns (model, wrapped): save and validate `model`, train through `wrapped`."""
    if args.sync_bn and run.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(run.device, memory_format=run.memory_format)
    wrapped = torch.compile(model) if args.compile else model
    if run.world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    return model, wrapped


def freeze_batchnorm(model):
    """Put every BatchNorm layer of a training model in eval mode: it normalises with its running statistics and
    no longer updates them (its weight and bias still train)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def make_ema(model, args, run):
    """The moving average of `model` that --ema-decay asks for (None without it): the resumed checkpoint's 'ema',
    else a copy of the model's current weights (a new run, or one resumed without an average).

    Why an average of the weights: at a constant lr each step moves the weights by a noisy gradient, and the model's
    quality from one checkpoint to the next jitters with it; the average over the last ~1/(1 - decay) iterations
    keeps what the steps share. Its BatchNorm statistics are averaged alike, over as many batches (BatchNorm's own
    momentum of 0.1 averages the last ~10). Not in the paper: off by default."""
    if not args.ema_decay:
        return None
    ema = copy.deepcopy(model).requires_grad_(False)
    if run.checkpoint is not None and 'ema' in run.checkpoint:
        ema.load_state_dict(run.checkpoint['ema'])
    return ema


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """One step of an exponential moving average: ema <- decay * ema + (1 - decay) * model, for the weights and
    the floating-point buffers (BatchNorm's running statistics); integer buffers (BatchNorm's batch count) are
    copied."""
    for averaged, current in zip(ema_model.state_dict().values(), model.state_dict().values()):
        if averaged.is_floating_point():
            averaged.lerp_(current, 1 - decay)
        else:
            averaged.copy_(current)


def make_optimizer(model, args, run):
    """Adam with the run's lr and beta1 (fused kernels where PyTorch has them)."""
    return torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.beta1, 0.999),
                            fused=run.device.type in {'cuda', 'cpu'})


def make_grad_scaler(run):
    """A GradScaler that is active only for fp16 autocast (bf16 and fp32 need none); resumed if resuming."""
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
    if run.checkpoint is not None and run.checkpoint['scaler'] and scaler.is_enabled():
        scaler.load_state_dict(run.checkpoint['scaler'])
    return scaler


def describe_run(run, args):
    precision = str(run.amp_dtype).removeprefix('torch.') + ' autocast' if run.amp_dtype else 'fp32'
    return (f'{run.device}, {precision}, {run.world_size} process(es), effective batch '
            f'{args.batch_size * run.world_size}')


def _ignore_stop_signals(worker_id):
    import signal
    # Ctrl-C reaches the whole process group, and schedulers (SLURM, docker stop) send SIGTERM to every process:
    # stopping is the training process's to handle (it finishes the step, saves, then shuts the workers down)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_train_loader(args, run):
    """An endless DataLoader of (lr_imgs, hr_imgs) batches: (N, 3, crop/s, crop/s) ImageNet-normalised and
    (N, 3, crop, crop) in [-1, 1], starting where the resumed run stopped (see datasets.InfiniteSampler)."""
    from torch.utils.data import DataLoader
    from datasets import SRDataset, InfiniteSampler
    try:
        dataset = SRDataset(args.data_folder, 'train', args.crop_size, args.scaling_factor, 'imagenet-norm',
                            '[-1, 1]', blur_sigma=args.blur_sigma, augment=args.augment,
                            cache_images=args.cache_images)
    except (FileNotFoundError, ValueError, ImageLoadError) as e:
        raise SystemExit(f'error: {e}') from None
    sampler = InfiniteSampler(len(dataset), seed=args.seed, start=run.start_iteration * args.batch_size,
                              rank=run.rank, world_size=run.world_size)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                      pin_memory=run.device.type == 'cuda', drop_last=True, persistent_workers=args.workers > 0,
                      worker_init_fn=_ignore_stop_signals)


def rng_state():
    """The RNG states of python, numpy and torch (CPU and CUDA), in types torch.load(weights_only=True) accepts."""
    numpy_state = np.random.get_state(legacy=False)
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': {'bit_generator': numpy_state['bit_generator'],
                       'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                       'pos': numpy_state['state']['pos'], 'has_gauss': numpy_state['has_gauss'],
                       'gauss': numpy_state['gauss']}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    python_state = state['python']
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state({'bit_generator': n['bit_generator'], 'has_gauss': n['has_gauss'], 'gauss': n['gauss'],
                         'state': {'key': n['key'].numpy().astype(np.uint32), 'pos': n['pos']}})
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM ask the loop to finish its step, save and exit; a second Ctrl-C stops at once."""

    def __init__(self):
        import signal
        self.signal_name = None
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        import signal
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f'\n{self.signal_name}: finishing this step, then saving {CHECKPOINT_FILE} '
              f'(Ctrl-C again to stop without saving)', file=sys.stderr, flush=True)

    def requested(self, run):
        """True on every process once any process got a signal (so DDP ranks stop at the same iteration)."""
        if run.world_size == 1:
            return self.signal_name is not None
        flag = torch.tensor([float(self.signal_name is not None)], device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self):
        import signal
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class TrainingLog:
    """Every logged value as one JSON line per row in <output_dir>/log.jsonl, and in TensorBoard when the
    tensorboard package is installed. On resume, rows after the checkpoint's iteration (from the interrupted run)
    are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, output_dir, start_iteration):
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, LOG_FILE)
        rows = []
        if start_iteration > 0 and os.path.isfile(self.path):
            with open(self.path) as f:
                rows = [line for line in f if line.strip() and json.loads(line)['iteration'] <= start_iteration]
        with open(self.path, 'w') as f:
            f.writelines(rows)
        self.file = open(self.path, 'a')
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(os.path.join(output_dir, 'tensorboard'), purge_step=start_iteration + 1)
        except ImportError:  # tensorboard is optional
            self.tensorboard = None

    def write(self, row):
        self.file.write(json.dumps(row) + '\n')
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in row.items():
                if name != 'iteration':
                    self.tensorboard.add_scalar(name, value, row['iteration'])

    def close(self):
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def choose_val_set(data_folder, val_set):
    """--val-set -> the name of a test list in data_folder, or None (no validation)."""
    if val_set == 'none':
        return None
    names = sorted(name.removesuffix('_test_images.json') for name in
                   (os.listdir(data_folder) if os.path.isdir(data_folder) else [])
                   if name.endswith('_test_images.json'))
    if val_set == 'auto':
        return next((name for name in ('Set5', 'demo') if name in names), names[0] if names else None)
    if val_set not in names:
        raise SystemExit(f'error: no {val_set}_test_images.json in {data_folder} (lists there: '
                         f'{", ".join(names) or "none"}); write it with create_data_lists.py --test-folders, or pass '
                         f'--val-set none')
    return val_set


@torch.no_grad()
def validate(model, dataset, scaling_factor, amp_dtype=None, sheet_path=None, sheet_rows=3, sheet_crop=128):
    """Mean PSNR and SSIM of `model` (SRResNet-like, eval mode inside) over a test SRDataset ('imagenet-norm' LR,
    '[-1, 1]' HR), as eval.py measures them (evaluate_image, protocol 'paper': Y channel, `scaling_factor` border
    pixels removed, SR rounded to 8 bits). With `sheet_path`, also writes a PNG of LR-bicubic / SR / HR centre
    crops of the first images."""
    was_training = model.training
    model.eval()
    s = scaling_factor
    psnrs, ssims, rows = [], [], []
    for i in range(len(dataset)):
        lr_img, hr_img = dataset[i]  # (3, h, w) ImageNet-normalised, (3, h * s, w * s) in [-1, 1]
        sr_img = super_resolve_tiled(model, lr_img, s, tile=256, tile_overlap=16, amp_dtype=amp_dtype)  # [-1, 1]
        psnr, ssim = evaluate_image(sr_img, hr_img, s, protocol='paper')
        psnrs.append(psnr.item())
        ssims.append(ssim.item())
        if sheet_path is not None and i < sheet_rows:
            rows.append(_sheet_row(lr_img, sr_img, hr_img, s, sheet_crop))
    model.train(was_training)
    if rows:
        _save_sheet(rows, sheet_path)
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


def _sheet_row(lr_img, sr_img, hr_img, s, crop):
    """Centre crops (PIL) of the bicubic upscaling of the LR image, the SR image and the HR image."""
    height, width = hr_img.shape[-2:]
    size = min(crop, height, width) // s * s
    top, left = (height - size) // 2 // s * s, (width - size) // 2 // s * s
    lr = convert_image(lr_img[:, top // s:(top + size) // s, left // s:(left + size) // s], 'imagenet-norm', 'pil')
    bicubic = lr.resize((size, size), Image.BICUBIC)
    sr = convert_image(sr_img[:, top:top + size, left:left + size], '[-1, 1]', 'pil')
    hr = convert_image(hr_img[:, top:top + size, left:left + size], '[-1, 1]', 'pil')
    return bicubic, sr, hr


def _save_sheet(rows, path, gap=4, header=16):
    from PIL import ImageDraw
    size = max(img.width for row in rows for img in row)
    sheet = Image.new('RGB', (3 * size + 2 * gap, header + len(rows) * (size + gap) - gap), 'white')
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(('LR, bicubic', 'SR', 'HR')):
        draw.text((column * (size + gap) + 2, 2), title, fill='black')
    for r, row in enumerate(rows):
        for column, img in enumerate(row):
            sheet.paste(img, (column * (size + gap), header + r * (size + gap)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)


def plot_loss_curves(log_path, png_path):
    """One panel per logged value (losses, D outputs, validation PSNR) against the iteration. Needs matplotlib;
    returns False without it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = read_log(log_path)
    names = [name for name in dict.fromkeys(k for row in rows for k in row)
             if name not in {'iteration', 'lr', 'data_ms', 'step_ms'}]
    if not names:
        return False
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.2 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        points = [(row['iteration'], row[name]) for row in rows if name in row]
        ax.plot(*zip(*points), marker='.' if len(points) < 50 else None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel('iteration')
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True


def _worker_error_message(error):
    """The one-line message of an exception raised in the dataset: a DataLoader worker's error comes back as
    'Caught ValueError in DataLoader worker process 0.\\nOriginal Traceback ...\\nValueError: <message>'."""
    text = str(error).strip()
    if 'Original Traceback' in text:
        return text.splitlines()[-1].split(': ', 1)[-1]  # '<exception type>: <message>' -> '<message>'
    return text


def train_loop(args, run, loader, train_step, checkpoint_state, sr_model, optimizer, best_psnr=float('-inf')):
    """Run train_step(lr_imgs, hr_imgs) -> {name: 0-dim tensor} from run.start_iteration to args.iterations.

    Logs the values averaged over --log-every iterations (with the lr, and data vs step time per iteration),
    validates `sr_model` every --val-every iterations (best.pt by PSNR), writes last.pt every --checkpoint-every
    iterations, at the end and on SIGINT/SIGTERM, and stops with an error on a non-finite value before anything is
    saved. checkpoint_state() returns the script's state (models, optimizers, ...); the loop adds iteration, RNG
    states, best PSNR and the run's config. With --ema-decay it also keeps the moving average of `sr_model`
    (make_ema), validates that instead and saves it as 'ema'. Under DDP only rank 0 logs, validates and saves."""
    from tqdm import tqdm
    from datasets import SRDataset

    val_set = choose_val_set(args.data_folder, args.val_set)
    val_dataset = None
    if val_set is not None and run.is_main:
        val_dataset = SRDataset(args.data_folder, 'test', args.crop_size, args.scaling_factor, 'imagenet-norm',
                                '[-1, 1]', test_data_name=val_set, blur_sigma=args.blur_sigma)
    log = TrainingLog(args.output_dir, run.start_iteration) if run.is_main else None
    ema = make_ema(sr_model, args, run) if run.is_main else None  # None without --ema-decay; only rank 0 uses it

    def save(path, iteration):
        state = checkpoint_state()
        if ema is not None:
            state['ema'] = ema.state_dict()  # SRResNet layout, as sr_model
        state.update(iteration=iteration, rng=rng_state(), best_psnr=best_psnr, config=vars(args),
                     samples_seen=iteration * args.batch_size * run.world_size)
        save_checkpoint(state, path)

    stop = StopSignals()
    batches = iter(loader)  # starts the workers (their crops depend on the sampler's seeds, not on this RNG)
    if run.checkpoint is not None:
        set_rng_state(run.checkpoint['rng'])  # as it was when the checkpoint was written
    bar = tqdm(total=args.iterations, initial=run.start_iteration, disable=not run.is_main, dynamic_ncols=True,
               desc=os.path.basename(os.path.normpath(args.output_dir)))
    sums, count, data_time, interval_start = {}, 0, 0.0, time.perf_counter()
    iteration = run.start_iteration
    try:
        while iteration < args.iterations:
            start = time.perf_counter()
            try:
                lr_imgs, hr_imgs = next(batches)
            except ValueError as e:  # ImageLoadError too: a training image that cannot be used, named in the message
                raise SystemExit(f'error: {_worker_error_message(e)}') from None
            lr_imgs = lr_imgs.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
            hr_imgs = hr_imgs.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
            data_time += time.perf_counter() - start
            lr = optimizer.param_groups[0]['lr']  # the lr of this step (schedulers step inside train_step)

            values = train_step(lr_imgs, hr_imgs)
            if ema is not None:
                update_ema(ema, sr_model, args.ema_decay)
            iteration += 1
            count += 1
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            bar.update(1)

            stopping = stop.requested(run)
            finished = iteration == args.iterations
            validating = val_set is not None and (iteration % args.val_every == 0 or finished)  # same on all ranks
            saving = iteration % args.checkpoint_every == 0 or finished or stopping
            if iteration % args.log_every == 0 or validating or saving:
                means = torch.stack(list(sums.values())) / count
                if run.world_size > 1:
                    torch.distributed.all_reduce(means)
                    means /= run.world_size
                means = dict(zip(sums, means.tolist()))
                bad = [name for name, value in means.items() if not math.isfinite(value)]
                if bad:
                    raise SystemExit(f'error: non-finite {", ".join(bad)} at iteration {iteration}; stopped without '
                                     f'saving, {args.output_dir}/{CHECKPOINT_FILE} is the last good state. Try a lower '
                                     f'--lr, or --no-amp')
                elapsed = time.perf_counter() - interval_start
                row = {'iteration': iteration, 'lr': lr, **means,
                       'data_ms': 1000 * data_time / count, 'step_ms': 1000 * (elapsed - data_time) / count}
                if log is not None:
                    log.write(row)
                bar.set_postfix({k: f'{v:.4g}' for k, v in row.items() if k not in {'iteration', 'lr'}},
                                refresh=False)
                sums, count, data_time = {}, 0, 0.0

            if validating and run.is_main:
                sheet = os.path.join(args.output_dir, 'samples', f'iter_{iteration:07d}.png')
                psnr, ssim = validate(sr_model if ema is None else ema, val_dataset, args.scaling_factor,
                                      run.amp_dtype, sheet)
                log.write({'iteration': iteration, f'val_psnr_{val_set}': psnr, f'val_ssim_{val_set}': ssim})
                bar.write(f'iteration {iteration}: {val_set} PSNR {psnr:.2f} dB, SSIM {ssim:.4f}')
                if psnr > best_psnr:
                    best_psnr = psnr
                    save(os.path.join(args.output_dir, BEST_CHECKPOINT_FILE), iteration)
            if saving and run.is_main:
                save(os.path.join(args.output_dir, CHECKPOINT_FILE), iteration)
            if count == 0:  # just logged: time the next interval from here, validation and saving excluded
                interval_start = time.perf_counter()
            if stopping:
                bar.write(f'stopped by {stop.signal_name or "a signal to another process"} at iteration '
                          f'{iteration}; continue with --resume auto')
                break
    finally:
        # the workers ignore SIGTERM (see _ignore_stop_signals), so one left running when an error ends the program
        # would hang it at exit, where multiprocessing terminates and joins them: shut them down here
        shutdown_workers = getattr(batches, '_shutdown_workers', None)  # DataLoader's own (its __del__ calls it)
        if shutdown_workers is not None:
            shutdown_workers()
        stop.restore()
        bar.close()
        if log is not None:
            log.close()
    if run.is_main and iteration == args.iterations:
        if plot_loss_curves(os.path.join(args.output_dir, LOG_FILE), os.path.join(args.output_dir, 'loss_curves.png')):
            print(f'loss curves: {args.output_dir}/loss_curves.png')
        print(f'done: {iteration} iterations, {args.output_dir}/{CHECKPOINT_FILE}')
    if run.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return best_psnr


# ----------------------------------------------------------------------------------------------------------------
# Evaluation helpers (eval.py; training validation and super_resolve.py may use them too)
#
# MATLAB's bicubic imresize, in torch so it runs batched on any device, and PSNR/SSIM of an SR image under a named
# protocol. Why protocols matter: the same SR image scores 0.1-0.3 dB apart depending on how the LR was made
# (Pillow vs MATLAB bicubic), which channel is measured (RGB vs Y), the border, 8-bit rounding of SR, and the SSIM
# window (7x7 uniform vs 11x11 Gaussian).

EVAL_PROTOCOLS = {
    'paper': 'Y (BT.601, 16-235, rounded to 8 bits as MATLAB rgb2ycbcr; single-channel files measured on their '
             'gray values), a border of `scale` px removed, SR clamped and rounded to 8 bits, SSIM 11x11 Gaussian '
             'sigma 1.5 (MATLAB ssim_index)',
    'tutorial': "sgrvinod's eval.py: Y (BT.601, 16-235, float), a 4-px border removed whatever the scale, float SR "
                '(not clamped or rounded), scikit-image PSNR and SSIM defaults (7x7 uniform window)',
}


def _cubic(x):
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'): nonzero on (-2, 2), K(0) = 1."""
    absx = x.abs()
    absx2, absx3 = absx ** 2, absx ** 3
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2)))


def imresize_matrix(in_length, out_length, scale, antialias=True):
    """The (out_length, in_length) float64 matrix that resizes one axis as MATLAB's imresize(..., 'bicubic') does:
    output pixel i (1-based) samples the input at u = i / scale + (1 - 1 / scale) / 2; when shrinking (scale < 1)
    the kernel is stretched by 1 / scale (antialiasing); weights are normalised to sum to 1; pixels beyond the
    edges are mirrored ('symmetric': ... 2 1 | 1 2 3 ...)."""
    kernel_scale = scale if (scale < 1 and antialias) else 1.0
    kernel_width = 4.0 / kernel_scale
    u = torch.arange(1, out_length + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)  # (out,)
    left = torch.floor(u - kernel_width / 2)
    indices = left[:, None] + torch.arange(math.ceil(kernel_width) + 2, dtype=torch.float64)  # (out, taps), 1-based
    weights = kernel_scale * _cubic((u[:, None] - indices) * kernel_scale)
    weights = weights / weights.sum(1, keepdim=True)
    mirror = torch.cat([torch.arange(in_length), torch.arange(in_length - 1, -1, -1)])  # 0-based, period 2 * in
    indices = mirror[(indices.long() - 1) % (2 * in_length)]
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    return matrix.scatter_add_(1, indices, weights)  # taps mirrored onto the same pixel add up


def imresize(img, scale, antialias=True):
    """MATLAB's imresize(img, scale, 'bicubic') of a tensor (..., H, W) on any device, batched:
    -> (..., ceil(H * scale), ceil(W * scale)), float (the input's float dtype, else float32), on the same scale
    of values, neither clamped nor rounded (round to 8 bits yourself, as MATLAB does for uint8 images).
    Two matrix products (one per axis; they commute), in float64 (float32 on MPS): for test-set sizes much faster
    than gathering the taps."""
    dtype = torch.float32 if img.device.type == 'mps' else torch.float64

    def matrix(length):  # (length * scale, length)
        return imresize_matrix(length, math.ceil(length * scale), scale, antialias).to(img.device, dtype)

    out = matrix(img.shape[-2]) @ img.to(dtype) @ matrix(img.shape[-1]).T  # (..., H', W')
    return out.to(img.dtype if img.dtype.is_floating_point else torch.float32)


def y_channel_8bit(imgs, gray=False):
    """What MATLAB's rgb2ycbcr gives for a uint8 image: (3, H, W) or (N, 3, H, W) in [-1, 1] -> clamped and rounded
    to 8 bits (as when saved) -> BT.601 Y in [16, 235], rounded -> float64 (H, W) or (N, H, W).
    gray: the image came from a single-channel file: its gray values themselves, 0-255 (luma on the full range)."""
    imgs = convert_image(imgs.double(), '[-1, 1]', '[0, 255]').clamp(0, 255).round()  # an 8-bit image
    y = convert_image(imgs, '[0, 255]', 'y-channel')  # in [16, 235]
    if gray:
        y = (y - 16) * (255 / 219)  # the weights sum to 219: R = G = B = v gives v
    return y.round()


def evaluate_image(sr_imgs, hr_imgs, scaling_factor, protocol='paper', gray=False):
    """PSNR (dB) and SSIM of SR images against their HR images under an evaluation protocol (EVAL_PROTOCOLS).

    sr_imgs, hr_imgs: (3, H, W) or (N, 3, H, W) in [-1, 1] (SR straight from the model; values outside the range
    are clamped by 'paper', kept by 'tutorial'). gray: the HR file was single-channel ('paper' then measures the
    gray values themselves, 0-255, as MATLAB scripts do when they skip rgb2ycbcr).
    Returns (psnr, ssim): float64 tensors of the batch shape (0-dim for one image)."""
    if protocol == 'paper':
        s = scaling_factor
        sr_y = y_channel_8bit(sr_imgs, gray)[..., s:-s, s:-s]  # (..., H - 2s, W - 2s)
        hr_y = y_channel_8bit(hr_imgs, gray)[..., s:-s, s:-s]
        return calculate_psnr(sr_y, hr_y), calculate_ssim(sr_y, hr_y)
    if protocol == 'tutorial':
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
        sr_y = convert_image(sr_imgs.float(), '[-1, 1]', 'y-channel')[..., 4:-4, 4:-4].cpu().numpy()
        hr_y = convert_image(hr_imgs.float(), '[-1, 1]', 'y-channel')[..., 4:-4, 4:-4].cpu().numpy()
        batch_shape = sr_y.shape[:-2]
        sr_y, hr_y = sr_y.reshape(-1, *sr_y.shape[-2:]), hr_y.reshape(-1, *hr_y.shape[-2:])
        psnr = [peak_signal_noise_ratio(hr, sr, data_range=255.) for hr, sr in zip(hr_y, sr_y)]
        ssim = [structural_similarity(hr, sr, data_range=255.) for hr, sr in zip(hr_y, sr_y)]
        return (torch.tensor(psnr, dtype=torch.float64).reshape(batch_shape),
                torch.tensor(ssim, dtype=torch.float64).reshape(batch_shape))
    raise ValueError(f'protocol must be one of {sorted(EVAL_PROTOCOLS)}, not {protocol!r}')


def export_generator(path, output_path):
    """Write the generator of a training checkpoint as a small inference checkpoint: fp32 weights, the
    architecture, and where they came from (iteration, the run's flags); no optimizer or RNG state."""
    checkpoint = load_checkpoint(path, unsafe_flag=None)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in generator_state_dict(checkpoint).items()}
    save_checkpoint({'kind': checkpoint.get('kind', 'srresnet'),
                     'model_config': checkpoint.get('model_config') or _model_config_from_state_dict(state_dict),
                     'model': state_dict, 'iteration': checkpoint.get('iteration'),
                     'best_psnr': checkpoint.get('best_psnr'), 'config': checkpoint.get('config', {})}, output_path)


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description="Checkpoint tools. convert: an original-tutorial checkpoint "
                                                 "(pickled model objects; unpickling runs code from the file, so only "
                                                 "convert checkpoints you trust) into this repo's weights-only format. "
                                                 "export: the generator of a training checkpoint alone (fp32, for "
                                                 "inference and sharing: ~6 MB instead of ~19 MB).")
    parser.add_argument('command', choices=['convert', 'export'])
    parser.add_argument('input', help="convert: the tutorial's checkpoint_srresnet.pth.tar or checkpoint_srgan.pth.tar;"
                                      " export: a last.pt or best.pt of train_srresnet.py or train_srgan.py")
    parser.add_argument('output', help='where to write the new checkpoint (.pt)')
    args = parser.parse_args()
    try:
        if args.command == 'convert':
            save_checkpoint(convert_tutorial_checkpoint(args.input), args.output)
        else:
            export_generator(args.input, args.output)
    except CheckpointError as e:
        raise SystemExit(f'error: {e}') from None
    print(f'wrote {args.output}')

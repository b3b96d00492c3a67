"""
What every script shares about images: conversions between value ranges, the train/test transforms (an HR image ->
an (LR, HR) pair), device and precision choice, errors a user can fix, and flags. The image loader is images.py.
This module imports nothing of the project.

Value ranges used throughout (the habit of this repo: every tensor's range is written next to it):
    'pil'           a PIL RGB image, 8 bits per channel
    '[0, 255]'      float tensor, (3, H, W) or (N, 3, H, W)
    '[0, 1]'        float tensor, the same shapes
    '[-1, 1]'       float tensor, the same shapes; what SRResNet/Generator output (tanh)
    'imagenet-norm' float tensor, ([0, 1] - mean) / std with ImageNet's mean and std; what the models take in
    'y-channel'     float tensor, (H, W) or (N, H, W), BT.601 luma in [16, 235] on the 0-255 scale
"""

import argparse
import math
import random
import sys

import numpy as np
import torch
from PIL import Image, ImageFilter

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')

# ImageNet statistics (of RGB in [0, 1]); the tensors are made on the input's device when needed, so importing
# this module never touches CUDA.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma for RGB in [0, 1]: Y = 16 + (65.481 R + 128.553 G + 24.966 B), on the 0-255 scale
RGB_WEIGHTS_Y = (65.481, 128.553, 24.966)


# ----------------------------------------------------------------------------------------------------------------
# Errors a user can fix (the image loader is images.py)

class UserError(Exception):
    """A mistake a user can fix: a bad file, a flag that does not fit, a missing model. The message is one line that
    names what is wrong and says what to do; run_main prints it as `error: ...`. Library code raises these (or their
    subclasses) and never ends the program itself. exit_code: the status run_main exits with."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


class ImageLoadError(UserError, ValueError):
    """A file that cannot be used as an image; the message names the file and says why."""


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

    # to [0, 1] (each conversion makes one new tensor: at 4000x4000 a float copy is 192 MB)
    if source == 'pil':
        img = torch.from_numpy(np.asarray(img.convert('RGB'), dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    elif source == '[0, 255]':
        img = img / 255.0
    elif source == '[-1, 1]':
        img = img.add(1.0).div_(2.0)
    elif source == 'imagenet-norm':
        img = img.mul(_stats(img, IMAGENET_STD)).add_(_stats(img, IMAGENET_MEAN))

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
# Transforms: an HR image -> an (LR, HR) pair

def crop_to_multiple(img, scaling_factor, centered=False):
    """PIL image -> the largest crop whose sides are multiples of the scale: top-left (MATLAB's modcrop, the
    literature's test images) or centred (the original tutorial's test crop)."""
    width, height = img.width - img.width % scaling_factor, img.height - img.height % scaling_factor
    left, top = ((img.width - width) // 2, (img.height - height) // 2) if centered else (0, 0)
    return img.crop((left, top, left + width, top + height))


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

    def __call__(self, img, name='image', rng=random):
        """img: PIL RGB image -> (lr_img, hr_img) tensors (3, h, w), (3, h * s, w * s) in their chosen ranges.
        rng: where the training crop is drawn from (the global `random`, as in the tutorial, or a random.Random)."""
        s = self.scaling_factor
        if self.split == 'train':
            if img.width < self.crop_size or img.height < self.crop_size:
                raise ValueError(f'{name}: {img.width}x{img.height} is smaller than the {self.crop_size}x'
                                 f'{self.crop_size} training crop; rebuild the data lists with a larger --min-size')
            left, top, code = random_crop(img.width, img.height, self.crop_size, rng, self.augment)
            hr_img = img.crop((left, top, left + self.crop_size, top + self.crop_size))
            hr_img = hr_img.transpose(Image.Transpose(code - 1)) if code else hr_img
        else:
            if img.width < s or img.height < s:
                raise ValueError(f'{name}: {img.width}x{img.height} is smaller than the scaling factor {s}')
            hr_img = crop_to_multiple(img, s)

        lr_img = downsample(hr_img, s, self.blur_sigma)
        assert hr_img.width == lr_img.width * s and hr_img.height == lr_img.height * s
        return convert_image(lr_img, 'pil', self.lr_img_type), convert_image(hr_img, 'pil', self.hr_img_type)


def downsample(hr_img, scaling_factor, blur_sigma=0.0):
    """PIL HR image (sides divisible by the scale) -> PIL LR image, Pillow bicubic (antialiased when shrinking)."""
    if blur_sigma > 0:
        hr_img = hr_img.filter(ImageFilter.GaussianBlur(blur_sigma))
    return hr_img.resize((hr_img.width // scaling_factor, hr_img.height // scaling_factor), Image.BICUBIC)


def random_crop(width, height, crop_size, rng=random, augment=False):
    """The training crop, drawn from rng in this order: a uniformly random crop_size x crop_size square of a width x
    height image (every position, edges included), and with augment one of its 8 flips / rotations by multiples of 90
    degrees with equal chance (code 0: as it is; k: PIL's Image.Transpose(k - 1)). -> (left, top, code)."""
    left = rng.randint(0, width - crop_size)  # inclusive: the right/bottom edges can be hit
    top = rng.randint(0, height - crop_size)
    return left, top, rng.randrange(8) if augment else 0


# ----------------------------------------------------------------------------------------------------------------
# Hardware

def pick_device(name='auto'):
    """'auto' -> CUDA if available, else Apple MPS, else CPU; or 'cpu', 'cuda', 'cuda:N', 'mps'. A name that is not
    one of those, or a device this machine lacks, is a UserError."""
    mps_available = getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        return torch.device('mps' if mps_available else 'cpu')
    choices = 'auto, cpu, cuda, cuda:N or mps'
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f'unknown device {name!r}; choose {choices}') from None
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f'--device {name}: no CUDA GPU is available here (PyTorch '
                             f'{torch.__version__}); use cpu or auto')
        if device.index is not None and device.index >= count:
            raise UserError(f'--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to '
                             f'cuda:{count - 1}')
    elif device.type == 'mps':
        if not mps_available:
            raise UserError(f'--device {name}: Apple MPS is not available here; use cpu or auto')
    elif device.type != 'cpu':
        raise UserError(f'unsupported device {name!r}; choose {choices}')
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
# Flags

def first_line(error):
    """The exception's type and the first line of its message (a text file's bare "KeyError: 101" says more than
    "101"), or its type alone when it has none (an empty file's EOFError): for one-line errors."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0]}' if lines else type(error).__name__


def run_main(main):
    """Run a script's main(), the one place a program ends with an error: a UserError is one `error: ...` line on
    stderr and its exit status (1 unless it says otherwise); Ctrl-C is one line and status 130 (128 + SIGINT). Any
    other exception is a bug and keeps its traceback. What was written is whole: every file is written atomically."""
    try:
        main()
    except UserError as e:
        message = ' '.join(str(e).split('\n'))
        if message:
            print(f'error: {message}', file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print('\nstopped (Ctrl-C)', file=sys.stderr)
        sys.exit(130)


def number(kind, minimum=None, above=None, below=None):
    """An argparse type: a finite int or float (`kind`) >= minimum, > above and < below (None: no bound), so a bad
    flag value is one usage line at parse time rather than a traceback from a library later."""
    bounds = [f'>= {minimum}' if minimum is not None else '', f'> {above}' if above is not None else '',
              f'< {below}' if below is not None else '']
    expected = ('an integer' if kind is int else 'a number') + ' ' + ' and '.join(b for b in bounds if b)

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            try:  # an integer written as 1e6 (the paper's iteration counts)
                value = int(float(text)) if kind is int and float(text).is_integer() else None
            except (ValueError, OverflowError):
                value = None
            if value is None:
                raise argparse.ArgumentTypeError(f'{text!r} is not {expected.strip()}') from None
        if not (math.isfinite(value) and (minimum is None or value >= minimum) and (above is None or value > above)
                and (below is None or value < below)):
            raise argparse.ArgumentTypeError(f'{text} is not {expected.strip()}')
        return value
    return parse

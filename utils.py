"""
What every script shares about images: the one image loader, conversions between value ranges, the train/test
transforms (an HR image -> an (LR, HR) pair), device and precision choice, and writing files atomically.
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
import dataclasses
import math
import os
import random
import sys
import warnings

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')

# ImageNet statistics (of RGB in [0, 1]); the tensors are made on the input's device when needed, so importing
# this module never touches CUDA.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma for RGB in [0, 1]: Y = 16 + (65.481 R + 128.553 G + 24.966 B), on the 0-255 scale
RGB_WEIGHTS_Y = (65.481, 128.553, 24.966)


# ----------------------------------------------------------------------------------------------------------------
# The one image loader

class UserError(Exception):
    """A mistake a user can fix: a bad file, a flag that does not fit, a missing model. The message is one line that
    names what is wrong and says what to do; run_main prints it as `error: ...`. Library code raises these (or their
    subclasses) and never ends the program itself. exit_code: the status run_main exits with."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


class ImageLoadError(UserError, ValueError):
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
    """Decode any image file into RGB (+ alpha) at its own bit depth: the one image loader. Raises ImageLoadError,
    never a deep traceback.

    Grayscale and palette images become RGB; CMYK/YCbCr/LAB are converted; 16-bit images stay 16-bit (uint16),
    colour ones too (Pillow decodes 48/64-bit PNG and TIFF to 8 bits, so those are read with PyAV); EXIF
    orientation is applied; truncated files and decompression bombs are refused."""
    if _is_16_bit_colour(path):
        return _read_16_bit_colour(path)
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


def _is_16_bit_colour(path):
    """True for a PNG or TIFF with 16 bits per colour channel, which Pillow would decode to 8 bits."""
    try:
        with open(path, 'rb') as f:
            header = f.read(26)
        if header[:8] == b'\x89PNG\r\n\x1a\n' and header[12:16] == b'IHDR':
            return header[24] == 16 and header[25] in (2, 6)  # bit depth 16, colour type RGB or RGBA
        if header[:4] in (b'II*\x00', b'MM\x00*'):
            with Image.open(path) as img:  # reads the header only
                bits, samples = img.tag_v2.get(258, ()), img.tag_v2.get(277, 1)  # BitsPerSample, SamplesPerPixel
            return samples in (3, 4) and all(b == 16 for b in bits)
    except (OSError, SyntaxError, ValueError):
        pass  # unreadable: read_image says why
    return False


# EXIF orientation -> the numpy operation on (H, W, C) that Pillow's ImageOps.exif_transpose would do
_ORIENTATIONS = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
                 7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}


def _read_16_bit_colour(path):
    """A 16-bit colour PNG or TIFF at full precision, decoded with PyAV (FFmpeg): rgb and alpha uint16."""
    import av  # only 16-bit colour images and videos need it

    try:
        with Image.open(path) as img:  # metadata only; Pillow would lose the low bytes of the pixels
            icc_profile = img.info.get('icc_profile')
            orientation = img.getexif().get(0x0112, 1)
        with av.open(os.fspath(path), format='image2', options={'pattern_type': 'none'}) as source:
            frame = next(source.decode(video=0))
            has_alpha = len(frame.format.components) == 4  # rgba64be, gbrap16le, ...
            pixels = frame.to_ndarray(format='rgba64le' if has_alpha else 'rgb48le')  # (H, W, 4 or 3) uint16
    except (av.FFmpegError, OSError, StopIteration) as e:
        raise ImageLoadError(f'{path}: unreadable 16-bit image ({e or "no frame"})') from None
    pixels = np.ascontiguousarray(_ORIENTATIONS.get(orientation, lambda a: a)(pixels))
    alpha = pixels[..., 3] if has_alpha and pixels[..., 3].min() < 65535 else None  # fully opaque: no alpha
    return LoadedImage(np.ascontiguousarray(pixels[..., :3]), alpha, False, icc_profile)


def load_image(path, background=(255, 255, 255)):
    """The loader for training and evaluation: any file -> PIL RGB image, 8 bits per channel (see to_rgb8)."""
    return to_rgb8(read_image(path), background)


def to_rgb8(loaded, background=(255, 255, 255)):
    """A LoadedImage -> PIL RGB image, 8 bits per channel. Transparent pixels are composited over `background`;
    16-bit values are scaled (x / 257), not clipped."""
    if loaded.alpha is None and loaded.bits == 8:
        return Image.fromarray(loaded.rgb)
    scale = 65535.0 if loaded.bits == 16 else 255.0
    rgb = loaded.rgb.astype(np.float32) / scale  # (H, W, 3) in [0, 1]
    if loaded.alpha is not None:
        alpha = loaded.alpha.astype(np.float32)[..., None] / scale
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


def transpose_batch(imgs, codes):
    """The flips / 90-degree rotations of ImageTransforms' augment, on a batch on any device: imgs (N, C, H, W),
    codes (N,) in 0-7 (0: as it is; k: PIL's Image.Transpose(k - 1)) -> (N, C, H, W), or (N, C, W, H) transposed
    (H = W for training crops)."""
    ops = (lambda x: x, lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.rot90(1, (-2, -1)),
           lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(3, (-2, -1)), lambda x: x.transpose(-2, -1),
           lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1))
    out = torch.empty_like(imgs)
    for code in codes.unique().tolist():
        chosen = (codes == code).nonzero()[:, 0].to(imgs.device)
        out[chosen] = ops[code](imgs[chosen])
    return out


def downsample_batch(hr_imgs, scaling_factor):
    """downsample for a batch on any device, in one call: (N, 3, H, W) in [0, 1] -> (N, 3, H / s, W / s) in [0, 1],
    rounded to 8 bits as Pillow's LR image is. torch's antialiased bicubic follows Pillow's filter (a = -0.5,
    widened by the scale); Pillow also rounds between its horizontal and vertical passes, so the two differ a little:
    on 1200 random 96x96 crops of T91 and BSD200, PSNR 57.7 dB at x4 (56.3 at x2, 59.0 at x8), 89% of the values
    identical."""
    height, width = hr_imgs.shape[-2:]
    lr_imgs = torch.nn.functional.interpolate(hr_imgs, size=(height // scaling_factor, width // scaling_factor),
                                              mode='bicubic', antialias=True, align_corners=False)
    return lr_imgs.mul_(255.0).round_().clamp_(0, 255).div_(255.0)


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

"""
Image files in and out: the one loader, used by every script, and the writer of super_resolve.py's outputs.

    img = load_image('photo.jpg')     # PIL RGB, 8 bits per channel: what training and evaluation take
    loaded = read_image('scan.tif')   # LoadedImage: RGB at the file's own bit depth, alpha, grayscale, ICC profile
    save_image(sr, 'scan_x4.tif', loaded.icc_profile)   # format from the extension, written atomically

Every mode Pillow reads becomes RGB (grayscale, palette, CMYK, Lab, ...); 16-bit grayscale stays 16-bit; transparency
is kept apart (load_image composites it over white); EXIF orientation is applied; a file that cannot be used is one
ImageLoadError line. Colour files with 16 bits per channel, which Pillow decodes to 8 and cannot write, are read and
written by image_formats.py.
"""

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

import image_formats
from outputs import WriteError, atomic_path
from utils import ImageLoadError, UserError

GRAY_MODES = {'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'}  # Pillow's single-channel modes
DEEP_GRAY_MODES = {'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'}  # of them, 16-bit, 32-bit and float
FORMATS_16_BIT = ('.png', '.tif', '.tiff')  # 16-bit outputs: grayscale through Pillow, colour through PyAV
FORMATS_WITHOUT_ALPHA = ('.jpg', '.jpeg')
PNG_COMPRESS_LEVEL = 1  # zlib's fastest level (OpenCV's default): large outputs encode much faster, a little larger


class InputError(UserError, ValueError):
    """An input that cannot be super-resolved, an output that cannot be written (the message names the file), or an
    argument of super_resolve.visualize_sr that does not fit."""


@dataclasses.dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3), uint8 or uint16 (for 16-bit files), EXIF orientation applied
    alpha: np.ndarray | None  # (H, W), same dtype as rgb, or None when the file has no transparency
    gray: bool  # the file was single-channel (L, 1, I;16, LA)
    icc_profile: bytes | None  # carried over to outputs by super_resolve.py

    @property
    def bits(self):
        return 16 if self.rgb.dtype == np.uint16 else 8


def load_image(path, background=(255, 255, 255)):
    """The loader for training and evaluation: any file -> PIL RGB image, 8 bits per channel (see to_rgb8)."""
    return to_rgb8(read_image(path), background)


def read_image(path):
    """Decode any image file into RGB (+ alpha) at its own bit depth. Raises ImageLoadError, never a deep traceback.

    Grayscale and palette images become RGB; CMYK/YCbCr/LAB are converted; 16-bit images stay 16-bit (uint16);
    EXIF orientation is applied; truncated files and decompression bombs are refused."""
    if image_formats.is_16_bit_colour(path):  # Pillow would decode it to 8 bits
        rgb, alpha, icc_profile = image_formats.read_16_bit_colour(path)
        return LoadedImage(rgb, alpha, False, icc_profile)
    img, icc_profile = _open(path)
    mode = img.mode
    gray = mode in GRAY_MODES
    if mode in DEEP_GRAY_MODES:
        return LoadedImage(np.repeat(_to_16_bits(img)[..., None], 3, axis=2), None, True, icc_profile)

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


def _open(path):
    """Decode a file with Pillow -> (PIL image turned upright by its EXIF orientation, ICC profile or None); every
    way it can fail is an ImageLoadError naming the file."""
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
    return img, icc_profile


def _to_16_bits(img):
    """A 16-bit, 32-bit or float single-channel PIL image -> (H, W) uint16, scaled into 16 bits, never clipped."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == 'F' and values.max(initial=0) <= 1.0:
        values = values * 65535
    elif img.mode in {'I', 'F'} and values.max(initial=0) > 65535:
        values = values / values.max() * 65535
    return np.clip(np.round(values), 0, 65535).astype(np.uint16)


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


def output_format(path):
    """The Pillow format name for a file name's extension; InputError when Pillow cannot write it."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f'{path}: Pillow cannot write {Path(path).suffix or "files without an extension"}; '
                         f'use .png, .jpg, .tif or .webp')
    return fmt


def save_image(img, path, icc_profile=None):
    """Write atomically (a stopped run leaves no half-written output), format from the extension.
    img: a PIL image, or a (H, W, 3 or 4) uint16 array for a 16-bit colour .png / .tif."""
    path = Path(path)
    fmt = output_format(path)
    options = {'icc_profile': icc_profile} if icc_profile else {}
    if fmt == 'JPEG':
        options['quality'] = 95
    elif fmt == 'PNG':
        options['compress_level'] = PNG_COMPRESS_LEVEL
    try:
        with atomic_path(path) as tmp_path:
            if isinstance(img, np.ndarray):
                image_formats.save_16_bit_colour(img, tmp_path, icc_profile)
            else:
                img.save(tmp_path, format=fmt, **options)
    except WriteError as e:  # a full disk, no permission, Pillow's 'cannot write mode P as JPEG'
        raise InputError(str(e)) from None
    except (ValueError, KeyError) as e:  # e.g. a mode the format cannot hold
        raise InputError(f'{path}: could not write ({e})') from None

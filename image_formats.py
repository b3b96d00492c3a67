"""
Rare image formats, off the path of training and evaluation: colour PNG and TIFF with 16 bits per channel (48 and
64 bits per pixel), which Pillow decodes to 8 bits and cannot write. They are read and written here with PyAV
(FFmpeg), their EXIF orientation applied on reading and their ICC profile kept in a PNG on writing.

    images.read_image   reads such a file with read_16_bit_colour (is_16_bit_colour says which files)
    images.save_image   writes a 16-bit colour output with save_16_bit_colour
"""

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from utils import ImageLoadError

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# EXIF orientation -> the numpy operation on (H, W, C) that Pillow's ImageOps.exif_transpose would do
_ORIENTATIONS = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
                 7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}


def is_16_bit_colour(path):
    """True for a PNG or TIFF with 16 bits per colour channel, which Pillow would decode to 8 bits."""
    try:
        with open(path, 'rb') as f:
            header = f.read(26)
        if header[:8] == PNG_SIGNATURE and header[12:16] == b'IHDR':
            return header[24] == 16 and header[25] in (2, 6)  # bit depth 16, colour type RGB or RGBA
        if header[:4] in (b'II*\x00', b'MM\x00*'):
            with Image.open(path) as img:  # reads the header only
                bits, samples = img.tag_v2.get(258, ()), img.tag_v2.get(277, 1)  # BitsPerSample, SamplesPerPixel
            return samples in (3, 4) and all(b == 16 for b in bits)
    except (OSError, SyntaxError, ValueError):
        pass  # unreadable: images.read_image says why
    return False


def read_16_bit_colour(path):
    """A 16-bit colour PNG or TIFF at full precision, decoded by FFmpeg, turned upright by its EXIF orientation ->
    (rgb (H, W, 3) uint16, alpha (H, W) uint16 or None when fully opaque, ICC profile bytes or None)."""
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
    alpha = pixels[..., 3] if has_alpha and pixels[..., 3].min() < 65535 else None
    return np.ascontiguousarray(pixels[..., :3]), alpha, icc_profile


def save_16_bit_colour(pixels, path, icc_profile=None):
    """(H, W, 3 or 4) uint16 -> a 48/64-bit PNG or TIFF (by the extension), encoded by FFmpeg; the ICC profile is
    kept in a PNG. An OSError in one line when FFmpeg cannot write it."""
    import av

    path = Path(path)
    alpha = pixels.shape[2] == 4
    codec = 'png' if path.suffix.lower() == '.png' else 'tiff'
    pix_fmt = ('rgba64' if alpha else 'rgb48') + ('be' if codec == 'png' else 'le')  # what each encoder takes
    try:
        with av.open(os.fspath(path), 'w', format='image2', options={'update': '1'}) as target:  # name as given
            stream = target.add_stream(codec, rate=1)
            stream.width, stream.height, stream.pix_fmt = pixels.shape[1], pixels.shape[0], pix_fmt
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels),
                                               format='rgba64le' if alpha else 'rgb48le')
            target.mux(stream.encode(frame))
            target.mux(stream.encode(None))
    except av.FFmpegError as e:
        raise OSError(str(e)) from None
    if icc_profile and codec == 'png':
        _add_icc_profile(path, icc_profile)


def _add_icc_profile(path, icc_profile):
    """Put the profile in a PNG that FFmpeg wrote (it writes none): an iCCP chunk right after IHDR, written by
    Pillow's chunk writer with the body Pillow's PNG encoder gives it (a name, compression 0: zlib)."""
    data = path.read_bytes()
    with open(path, 'wb') as f:
        f.write(data[:33])  # the signature (8 bytes) and IHDR (25)
        PngImagePlugin.putchunk(f, b'iCCP', b'ICC profile\x00\x00', zlib.compress(icc_profile))
        f.write(data[33:])

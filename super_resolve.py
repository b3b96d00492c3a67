"""
Super-resolve your own images and videos with a trained SRResNet or SRGAN generator, and draw the tutorial's
Bicubic / SRResNet / SRGAN / Original HR comparison grid.

    python super_resolve.py photo.jpg                            # -> results/photo_x4.jpg
    python super_resolve.py photos/ scans/*.tif -o upscaled/     # files, folders (recursive) and globs
    python super_resolve.py photo.png -o big.png --model checkpoints/srgan/checkpoint.pt
    python super_resolve.py clip.mp4 -o clip_x4.mp4              # video: same frame rate, audio copied
    python super_resolve.py photo.png --grid --srgan checkpoints/srgan/checkpoint.pt   # visualize_sr's grid
    python super_resolve.py data/Set5_test_images.json --grid --srgan ...    # a list from create_data_lists.py

From Python:

    from super_resolve import visualize_sr
    grid = visualize_sr('photo.png', srgan_checkpoint='checkpoints/srgan/checkpoint.pt', save_path='grid.png')

Images of any size: the LR image goes through the network in overlapping tiles (--tile, --tile-overlap) that are
cross-faded on a CPU canvas (utils.super_resolve_tiled, the routine eval.py uses too), so memory is bounded by
the tile, not the image; on out-of-memory the tile is halved and the image tried again.
What you give is kept: transparency (upscaled with bicubic and re-attached), grayscale, 16-bit depth (PNG and
TIFF outputs), the ICC colour profile; EXIF orientation is applied. The output format follows the extension.
Speed: the model is prepared once (prepare_for_inference: BatchNorm folded, the last convolution moved before the
last pixel shuffle, channels_last) and run under inference_mode with bf16 autocast where the hardware runs bf16
natively (CPUs with AVX-512 BF16 or AMX, Ampere and newer GPUs), else fp32; --fp32 and --half override that.
On a 2-core AVX-512 BF16 CPU that is 3.7x the tutorial's plain fp32 forward, outputs 0.1/255 from it on average
(benchmarks/inference.py).
"""

import argparse
import glob
import json
import os
import struct
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

import utils
from models import ConvolutionalBlock, conv_before_pixel_shuffle
from utils import CheckpointError, ImageLoadError

REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = REPO / 'weights' / 'srresnet_x4.pt'  # the SRResNet shipped with the repo
DEFAULT_OUTPUT_DIR = 'results'
# LR tile side: 1000x1000 -> 4000x4000 stays under 2 GB peak RSS on a CPU (measured: see README), and images up
# to 256x256 go through in one piece.
DEFAULT_TILE = 256
# LR pixels shared by neighbouring tiles; the seam error falls fast with it (tile 64 on a fitted SRResNet: mean
# abs difference from the untiled output 0.03/255 at overlap 16, 0.005/255 at 24) while the cost grows slowly.
DEFAULT_TILE_OVERLAP = 24
MIN_TILE = 16  # halving the tile after out-of-memory stops here
MIN_INPUT_SIZE = 8  # smaller inputs are mostly padding for the 9x9 kernels: a thumbnail given by mistake
VIDEO_EXTENSIONS = ('.mp4', '.mkv', '.mov', '.avi', '.webm', '.m4v')
FORMATS_16_BIT = ('.png', '.tif', '.tiff')  # 16-bit outputs: grayscale through Pillow, colour through PyAV
FORMATS_WITHOUT_ALPHA = ('.jpg', '.jpeg')


class InputError(ValueError):
    """An input that cannot be super-resolved or an output that cannot be written; the message names the file."""


# ----------------------------------------------------------------------------------------------------------------
# Models and precision

def load_model(path=None, device='cpu', allow_unsafe_pickle=False):
    """A checkpoint from train_srresnet.py or train_srgan.py -> (SRResNet ready for inference, see
    prepare_for_inference, scaling factor). path None: the shipped model."""
    if path is None:
        path = DEFAULT_MODEL
        if not path.is_file():
            raise CheckpointError(f'no shipped model yet ({path} is missing); pass --model PATH, '
                                  f'a checkpoint written by train_srresnet.py or train_srgan.py')
    model = utils.load_generator(path, device, allow_unsafe_pickle)
    scaling_factor = 2 ** len(model.subpixel_convolutional_blocks)  # one x2 sub-pixel block per doubling
    return prepare_for_inference(model), scaling_factor


def prepare_for_inference(model):
    """SRResNet -> the same function, faster (in place; only for inference):
    - every BatchNorm folded into the convolution before it: in eval mode BN is a fixed per-channel affine map,
      so conv + BN is one conv (33 fewer passes over the feature maps);
    - the last 9x9 convolution moved before the last pixel shuffle (see _conv_before_pixel_shuffle): ~3x faster
      for that layer, which took a third of the time;
    - NHWC memory layout (channels_last), what oneDNN and cuDNN convolutions prefer.
    Weights stay fp32: autocast casts them per tile, which costs nothing measurable."""
    model.eval()
    for block in model.modules():
        layers = block.conv_block if isinstance(block, ConvolutionalBlock) else []  # conv [, BN] [, activation]
        if len(layers) > 1 and isinstance(layers[1], nn.BatchNorm2d):
            layers[0] = fuse_conv_bn_eval(layers[0], layers[1])
            layers[1] = nn.Identity()
    _conv_before_pixel_shuffle(model)
    if next(model.parameters()).device.type != 'mps':
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def _conv_before_pixel_shuffle(model):
    """Rewrite SRResNet's tail  conv(PReLU(PixelShuffle_r(y)))  as  PixelShuffle_r(conv'(PReLU(y))) once, with
    models.conv_before_pixel_shuffle (SRResNet.forward derives conv' on every call, so that it trains the
    stored 9x9 weight; here it is computed once for inference). The PReLU has one slope for all channels, so it
    acts the same before or after the shuffle."""
    last = model.subpixel_convolutional_blocks[-1]
    conv = model.conv_block3.conv_block[0]  # (3, C, k, k), 'same' padding
    if last.prelu.num_parameters != 1 or not isinstance(last.pixel_shuffle, nn.PixelShuffle):
        return  # a per-channel PReLU does not commute with the shuffle (or this was done already)
    r = last.pixel_shuffle.upscale_factor
    weight, bias = conv_before_pixel_shuffle(conv.weight, conv.bias, r)
    folded = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], padding=weight.shape[-1] // 2)
    folded = folded.to(weight.device)
    folded.weight.copy_(weight)
    folded.bias.copy_(bias)
    last.pixel_shuffle = nn.Identity()  # the last sub-pixel block now ends at PReLU(conv(x)), r^2 C channels
    model.conv_block3.conv_block = nn.Sequential(folded, nn.PixelShuffle(r), *model.conv_block3.conv_block[1:])


def pick_amp_dtype(device, precision='auto'):
    """precision 'auto': bf16 where the hardware runs it natively, else fp32 (None); 'fp32': None;
    'half': bf16 or fp16 even where it is not the default (fp16 on older GPUs and MPS; bf16 on any CPU)."""
    native = utils.autocast_dtype(device)
    if precision == 'fp32':
        return None
    if precision == 'half':
        return native or torch.bfloat16
    return native if native == torch.bfloat16 else None


def _is_out_of_memory(error):
    # CUDA raises torch.OutOfMemoryError; the CPU allocator and MPS raise a RuntimeError saying so
    return isinstance(error, torch.OutOfMemoryError) or any(
        text in str(error) for text in ("can't allocate memory", 'out of memory'))


def upscale(model, lr_img, scaling_factor, tile=DEFAULT_TILE, tile_overlap=DEFAULT_TILE_OVERLAP, amp_dtype=None,
            on_retry=None, progress=None):
    """utils.super_resolve_tiled, halving the tile after an out-of-memory error until MIN_TILE.
    lr_img: (3, h, w) ImageNet-normalised -> (3, h * s, w * s) in [-1, 1], float32, on the CPU.
    progress: a name to show a bar of tiles under (for one large image), or None."""
    while True:
        bar = None

        def on_tile(done, total):  # a bar from the first report on, and only for an image cut into tiles
            nonlocal bar
            if bar is None and progress is not None and total > 1:
                bar = tqdm(total=total, unit='tile', desc=progress, leave=False)
            if bar is not None:
                bar.update(done - bar.n)

        try:
            return utils.super_resolve_tiled(model, lr_img, scaling_factor, tile, tile_overlap, amp_dtype,
                                             on_tile)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            current = tile or max(lr_img.shape[1:])  # None: the whole image was one tile
            if not _is_out_of_memory(e) or current // 2 < MIN_TILE:
                raise
            tile = current // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if on_retry is not None:
                on_retry(f'out of memory; trying again with --tile {tile}')
        finally:
            if bar is not None:
                bar.close()


@torch.inference_mode()
def super_resolve_batch(model, lr_imgs, amp_dtype=None):
    """(N, 3, h, w) ImageNet-normalised, on the CPU -> (N, 3, h * s, w * s) in [-1, 1], float32, on the CPU.
    For batches of small images (video frames); one large image goes through upscale() instead."""
    device = next(model.parameters()).device
    lr_imgs = lr_imgs.to(device)
    if device.type != 'mps':
        lr_imgs = lr_imgs.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(lr_imgs).float().cpu()


# ----------------------------------------------------------------------------------------------------------------
# Images: keep what the user gave (alpha, grayscale, 16 bits, ICC profile)

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
        pass  # unreadable: utils.read_image says why
    return False


# EXIF orientation -> the numpy operation on (H, W, C) that Pillow's ImageOps.exif_transpose would do
_ORIENTATIONS = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
                 7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}


def read_image(path):
    """utils.read_image, except that 16-bit colour PNG and TIFF files, which Pillow 13 decodes to 8 bits, are
    decoded at full precision with PyAV (FFmpeg): rgb and alpha uint16."""
    if not _is_16_bit_colour(path):
        return utils.read_image(path)
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
    return utils.LoadedImage(np.ascontiguousarray(pixels[..., :3]), alpha, False, icc_profile)


@torch.inference_mode()
def super_resolve_image(model, loaded, scaling_factor, tile=DEFAULT_TILE, tile_overlap=DEFAULT_TILE_OVERLAP,
                        amp_dtype=None, bits=None, keep_alpha=True, on_retry=None, progress=None):
    """utils.LoadedImage -> PIL image s times larger, of the input's kind: 'RGB' / 'RGBA', 'L' / 'LA' for
    grayscale, 'I;16' for 16-bit grayscale; for 16-bit colour, which Pillow cannot hold, a (H, W, 3 or 4) uint16
    array (save_image writes it with PyAV). bits: 8 or 16 (None: the input's). progress: see upscale."""
    height, width = loaded.rgb.shape[:2]
    if min(height, width) < MIN_INPUT_SIZE:
        raise InputError(f'{width}x{height} is too small to super-resolve (at least {MIN_INPUT_SIZE} pixels a side)')
    in_max = 65535.0 if loaded.bits == 16 else 255.0
    bits = bits or loaded.bits
    if loaded.alpha is not None and keep_alpha and loaded.gray:
        bits = 8  # Pillow has no 16-bit LA mode
    out_max = 65535.0 if bits == 16 else 255.0

    lr_img = torch.from_numpy(loaded.rgb.astype(np.float32)).permute(2, 0, 1).div_(in_max)  # (3, h, w), [0, 1]
    lr_img = utils.convert_image(lr_img, '[0, 1]', 'imagenet-norm')  # (3, h, w)
    sr_img = upscale(model, lr_img, scaling_factor, tile, tile_overlap, amp_dtype, on_retry, progress)  # (3, H, W)
    del lr_img
    # to [0, out_max] in place: at 4000x4000 each full-size float copy is 192 MB
    sr_img = sr_img.add_(1.0).mul_(out_max / 2.0).clamp_(0.0, out_max)
    if loaded.gray:
        # the network's three channels of a gray input are nearly equal; their mean is the gray value
        channels = sr_img.mean(0).round_().numpy()  # (H, W)
    else:
        channels = sr_img.round_().permute(1, 2, 0).numpy()  # (H, W, 3)
    del sr_img
    dtype = np.uint16 if bits == 16 else np.uint8
    channels = channels.astype(dtype)
    alpha = None
    if loaded.alpha is not None and keep_alpha:
        alpha = Image.fromarray(loaded.alpha.astype(np.float32) * (out_max / in_max))  # mode 'F'
        alpha = np.asarray(alpha.resize(channels.shape[1::-1], Image.BICUBIC))  # no network for transparency
        alpha = np.clip(np.round(alpha), 0, out_max).astype(dtype)  # (H, W)
    if bits == 16 and not loaded.gray:
        return channels if alpha is None else np.dstack([channels, alpha])  # (H, W, 3 or 4) uint16
    sr = Image.fromarray(channels)  # 'I;16', 'L' or 'RGB'
    del channels
    if alpha is not None:
        sr = Image.merge('LA' if sr.mode == 'L' else 'RGBA', (*sr.split(), Image.fromarray(alpha)))
    return sr


def output_format(path):
    """The Pillow format name for a file name's extension; InputError when Pillow cannot write it."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f'{path}: Pillow cannot write {Path(path).suffix or "files without an extension"}; '
                         f'use .png, .jpg, .tif or .webp')
    return fmt


def _save_16_bit_colour(pixels, path, icc_profile=None):
    """(H, W, 3 or 4) uint16 -> a 48/64-bit PNG or TIFF, written by PyAV's FFmpeg (Pillow 13 cannot)."""
    import av

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
        raise OSError(str(e)) from None  # save_image turns it into the one-line InputError
    if icc_profile and codec == 'png':  # FFmpeg writes no profile: add an iCCP chunk right after IHDR
        data = path.read_bytes()
        body = b'iCCP' + b'ICC profile\x00\x00' + zlib.compress(icc_profile)  # name, compression 0 (zlib)
        chunk = struct.pack('>I', len(body) - 4) + body + struct.pack('>I', zlib.crc32(body))
        path.write_bytes(data[:33] + chunk + data[33:])  # 8 signature + 25 IHDR


def save_image(img, path, icc_profile=None):
    """Write atomically (a stopped run leaves no half-written output), format from the extension.
    img: a PIL image, or a (H, W, 3 or 4) uint16 array for a 16-bit colour .png / .tif."""
    path = Path(path)
    fmt = output_format(path)
    options = {'icc_profile': icc_profile} if icc_profile else {}
    if fmt == 'JPEG':
        options['quality'] = 95
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f'.{path.stem}.partial{path.suffix}')
    try:
        if isinstance(img, np.ndarray):
            _save_16_bit_colour(img, tmp_path, icc_profile)
        else:
            img.save(tmp_path, format=fmt, **options)
        os.replace(tmp_path, path)
    except (OSError, ValueError, KeyError) as e:  # e.g. a mode the format cannot hold, a full disk
        raise InputError(f'{path}: could not write ({e})') from None
    finally:
        tmp_path.unlink(missing_ok=True)


def super_resolve_file(model, in_path, out_path, scaling_factor, tile, tile_overlap, amp_dtype, note=print,
                       progress=False):
    """Read, super-resolve and write one image file, keeping its alpha, grayscale, bit depth and ICC profile.
    progress: show a bar of tiles (when there are several)."""
    output_format(out_path)  # fail before the work, not after
    loaded = read_image(in_path)
    ext = Path(out_path).suffix.lower()
    bits = loaded.bits if ext in FORMATS_16_BIT else 8
    if loaded.bits == 16 and bits == 8:
        note(f'note: {out_path}: {ext} holds 8 bits per channel; writing 8-bit (use .png or .tif for 16)')
    keep_alpha = ext not in FORMATS_WITHOUT_ALPHA
    if loaded.alpha is not None and not keep_alpha:
        note(f'note: {out_path}: {ext} has no transparency; alpha dropped (use .png to keep it)')
    try:
        sr = super_resolve_image(model, loaded, scaling_factor, tile, tile_overlap, amp_dtype, bits, keep_alpha,
                                 on_retry=lambda message: note(f'note: {in_path}: {message}'),
                                 progress=Path(in_path).name if progress else None)
    except InputError as e:
        raise InputError(f'{in_path}: {e}') from None
    save_image(sr, out_path, loaded.icc_profile)


# ----------------------------------------------------------------------------------------------------------------
# Video: decode with PyAV, super-resolve frames in batches, encode at the same frame rate, copy the audio

@torch.inference_mode()
def super_resolve_video(model, in_path, out_path, scaling_factor, tile=DEFAULT_TILE,
                        tile_overlap=DEFAULT_TILE_OVERLAP, amp_dtype=None, batch_size=4, note=print, progress=True):
    """Frame by frame: h264 (libx264) when PyAV's FFmpeg has it, else MPEG-4 Part 2; VP9 for .webm; the audio
    stream is copied packet by packet, not re-encoded (dropped with a note where the container cannot hold it).
    Returns the number of frames written."""
    import av  # only videos need it

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f'.{out_path.stem}.partial{out_path.suffix}')
    try:
        with av.open(os.fspath(in_path)) as source:
            if not source.streams.video:
                raise InputError(f'{in_path}: no video stream')
            video_in = source.streams.video[0]
            video_in.thread_type = 'AUTO'
            audio_in = source.streams.audio[0] if source.streams.audio else None
            frame_rate = video_in.average_rate or video_in.guessed_rate or 25
            with av.open(os.fspath(tmp_path), 'w') as target:
                if out_path.suffix.lower() == '.webm':  # WebM holds only VP8/VP9/AV1
                    if 'libvpx-vp9' not in av.codecs_available:
                        raise InputError(f'{out_path}: this FFmpeg has no VP9 encoder (libvpx-vp9) for .webm; '
                                         f'use .mp4 or .mkv')
                    codec = 'libvpx-vp9'
                else:
                    codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
                try:
                    video_out = target.add_stream(codec, rate=frame_rate)
                except ValueError as e:  # a container that cannot hold the codec
                    raise InputError(f'{out_path}: {out_path.suffix} cannot hold {codec} video ({e}); '
                                     f'use .mp4 or .mkv') from None
                video_out.width, video_out.height = video_in.width * scaling_factor, video_in.height * scaling_factor
                video_out.pix_fmt = 'yuv420p'
                # near-transparent quality: constant rate factor 18 for x264 and VP9 (b=0: quality alone decides);
                # MPEG-4 at quantiser 2 (ffmpeg -q:v 2)
                video_out.options = ({'crf': '18'} if codec == 'libx264' else {'crf': '18', 'b': '0'}
                                     if codec == 'libvpx-vp9' else
                                     {'flags': 'qscale', 'global_quality': str(2 * 118)})  # 118: FF_QP2LAMBDA
                audio_out = None
                if audio_in is not None:
                    if audio_in.codec_context.name in target.supported_codecs:
                        audio_out = target.add_stream_from_template(audio_in)
                    else:
                        note(f'note: {out_path}: {out_path.suffix} cannot hold {audio_in.codec_context.name} '
                             f'audio; audio dropped (use .mkv)')

                bar = tqdm(total=video_in.frames or None, unit='frame', desc=Path(in_path).name, leave=False,
                           disable=not progress)
                frames, last_pts = [], [-1]
                frame_period = 1 / Fraction(frame_rate)  # the encoder's time base

                def encode(frames):  # list of av.VideoFrame -> packets muxed into target
                    rgb = np.stack([frame.to_ndarray(format='rgb24') for frame in frames])  # (N, h, w, 3) uint8
                    lr_imgs = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, h, w) [0, 1]
                    lr_imgs = utils.convert_image(lr_imgs, '[0, 1]', 'imagenet-norm')
                    if tile is None or max(lr_imgs.shape[2:]) <= tile:
                        try:
                            sr_imgs = super_resolve_batch(model, lr_imgs, amp_dtype)  # (N, 3, H, W), [-1, 1]
                        except RuntimeError as e:
                            if not _is_out_of_memory(e):
                                raise
                            sr_imgs = None  # one frame at a time, with the tile-halving fallback
                    else:
                        sr_imgs = None
                    if sr_imgs is None:
                        sr_imgs = torch.stack([upscale(model, lr_img, scaling_factor, tile, tile_overlap, amp_dtype)
                                               for lr_img in lr_imgs])
                    sr_imgs = sr_imgs.add_(1.0).mul_(127.5).clamp_(0, 255).round_().to(torch.uint8)
                    for frame, sr_img in zip(frames, sr_imgs.permute(0, 2, 3, 1).numpy()):
                        out_frame = av.VideoFrame.from_ndarray(sr_img, format='rgb24')
                        # the input frame's time in 1/fps units, kept strictly increasing as encoders require
                        pts = last_pts[0] + 1
                        if frame.pts is not None and frame.time_base is not None:
                            pts = max(pts, round(frame.pts * frame.time_base / frame_period))
                        out_frame.pts, out_frame.time_base, last_pts[0] = pts, frame_period, pts
                        target.mux(video_out.encode(out_frame))
                    bar.update(len(frames))

                streams = [video_in] + ([audio_in] if audio_out is not None else [])
                for packet in source.demux(streams):
                    if packet.stream is video_in:
                        for frame in packet.decode():  # the final empty packet flushes the decoder
                            frames.append(frame)
                            if len(frames) == batch_size:
                                encode(frames)
                                frames = []
                    elif packet.dts is not None:  # audio: copy (skip the demuxer's empty flush packet)
                        packet.stream = audio_out
                        target.mux(packet)
                if frames:
                    encode(frames)
                target.mux(video_out.encode(None))  # flush the encoder
                n_frames = bar.n
                bar.close()
        if n_frames == 0:
            raise InputError(f'{in_path}: no video frames could be decoded')
        os.replace(tmp_path, out_path)
        return n_frames
    except av.FFmpegError as e:
        raise InputError(f'{in_path}: cannot decode or encode this video ({e})') from None
    finally:
        tmp_path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# The tutorial's comparison grid

def _label_font(size):
    return ImageFont.load_default(size=size)  # Pillow's built-in scalable font: the same on every machine


def _fitted_font(draw, text, size, max_width):
    """The built-in font at `size`, smaller if `text` would be wider than max_width."""
    font = _label_font(size)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    if right - left > max_width:
        font = _label_font(max(8, int(size * max_width / (right - left))))
    return font


@torch.inference_mode()
def visualize_sr(img, halve=False, srresnet_checkpoint=DEFAULT_MODEL, srgan_checkpoint=None, save_path=None,
                 device='auto', tile=DEFAULT_TILE, tile_overlap=DEFAULT_TILE_OVERLAP, precision='auto',
                 allow_unsafe_pickle=False):
    """The tutorial's 2x2 grid: Bicubic / SRResNet / SRGAN / Original HR.

    img: an image path or a PIL image, the HR. It is downsampled by the models' scale with Pillow bicubic (the LR
    every panel starts from), then upsampled with bicubic and super-resolved by each model. halve: halve the HR
    first (Lanczos), as the tutorial did for large images. srresnet_checkpoint, srgan_checkpoint: checkpoint paths
    (from train_srresnet.py / train_srgan.py), loaded models ((model, scaling_factor) from load_model), or None to
    leave that panel saying so.
    Returns the grid as a PIL RGB image of (2 W + 3 m) x (2 H + 3 m) pixels (W x H: the HR, trimmed to a multiple
    of the scale; m: the label margin); saves it to save_path when given. Needs no display."""
    name = img if isinstance(img, (str, os.PathLike)) else 'image'
    hr_img = utils.load_image(img) if isinstance(img, (str, os.PathLike)) else img.convert('RGB')
    if halve:
        hr_img = hr_img.resize((hr_img.width // 2, hr_img.height // 2), Image.LANCZOS)

    device = utils.pick_device(device)
    amp_dtype = pick_amp_dtype(device, precision)
    checkpoints = {'SRResNet': srresnet_checkpoint, 'SRGAN': srgan_checkpoint}
    models = {}
    for label, checkpoint in checkpoints.items():
        if isinstance(checkpoint, tuple):
            models[label] = checkpoint
        elif checkpoint is not None:
            shipped = Path(checkpoint) == DEFAULT_MODEL  # missing: the 'no shipped model yet' message
            models[label] = load_model(None if shipped else checkpoint, device, allow_unsafe_pickle)
    scales = {s for _, s in models.values()}
    if len(scales) > 1:
        raise CheckpointError(f'the two checkpoints upscale by different factors ({sorted(scales)})')
    s = scales.pop() if scales else 4

    width, height = hr_img.width - hr_img.width % s, hr_img.height - hr_img.height % s
    if min(width, height) < s * MIN_INPUT_SIZE:
        raise ImageLoadError(f'{name}: {hr_img.width}x{hr_img.height} is too small for the grid (at least '
                             f'{s * MIN_INPUT_SIZE} pixels a side{", after halving" if halve else ""})')
    hr_img = hr_img.crop((0, 0, width, height))
    lr_img = utils.downsample(hr_img, s)  # (w, h) PIL
    panels = {'Bicubic': lr_img.resize((width, height), Image.BICUBIC)}
    lr_tensor = utils.convert_image(lr_img, 'pil', 'imagenet-norm')  # (3, h, w)
    for label in checkpoints:
        if label in models:
            sr_img = upscale(models[label][0], lr_tensor, s, tile, tile_overlap, amp_dtype)  # (3, H, W), [-1, 1]
            panels[label] = utils.convert_image(sr_img, '[-1, 1]', 'pil')
        else:
            panels[label] = f'no {label} checkpoint given'
    panels['Original HR'] = hr_img

    font_size = max(12, round(0.045 * min(width, height)))  # 23 px at 512, as the tutorial's labels
    margin = round(1.75 * font_size)
    grid = Image.new('RGB', (2 * width + 3 * margin, 2 * height + 3 * margin), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (label, panel) in enumerate(panels.items()):
        left = margin + (i % 2) * (width + margin)
        top = margin + (i // 2) * (height + margin)
        if isinstance(panel, str):  # a missing model: a grey panel that says so
            draw.rectangle((left, top, left + width - 1, top + height - 1), fill=(224, 224, 224))
            font = _fitted_font(draw, panel, font_size, width - 8)
            draw.text((left + width / 2, top + height / 2), panel, font=font, fill=(64, 64, 64), anchor='mm')
        else:
            grid.paste(panel, (left, top))
        font = _fitted_font(draw, label, font_size, width)
        draw.text((left + width / 2, top - margin / 2), label, font=font, fill=(0, 0, 0), anchor='mm')
    if save_path is not None:
        save_image(grid, save_path)
    return grid


# ----------------------------------------------------------------------------------------------------------------
# Command line

def find_inputs(patterns):
    """Files, folders (searched recursively for images and videos), glob patterns and the JSON image lists of
    create_data_lists.py -> [(path, folder it was found in or None)], and the patterns that matched nothing."""
    extensions = utils.IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    found, missing = [], []
    for pattern in patterns:
        if os.path.exists(pattern) or not glob.has_magic(pattern):
            paths = [pattern] if os.path.exists(pattern) else []
        else:
            paths = sorted(glob.glob(pattern, recursive=True))
        if not paths:
            missing.append(pattern)
        for path in map(Path, paths):
            if path.is_dir():
                found += [(p, path) for p in sorted(path.rglob('*'))
                          if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith('.')]
            elif path.suffix.lower() == '.json':  # an image list written by create_data_lists.py
                try:
                    with open(path) as f:
                        listed = json.load(f)
                except (OSError, ValueError) as e:
                    raise SystemExit(f'error: {path}: not a readable image list ({e})') from None
                if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
                    raise SystemExit(f'error: {path}: not an image list (create_data_lists.py writes a JSON list '
                                     f'of paths)')
                found += [(Path(p), None) for p in listed]
            else:
                found.append((path, None))  # named explicitly: tried whatever its extension
    return found, missing


def output_path(in_path, folder, output, suffix, ext):
    """Where one input's result goes: `output` itself when it names a file, else output/<subfolders>/<stem>
    <suffix><ext>, keeping the layout below a folder given as input."""
    output = Path(output)
    if output.suffix and not output.is_dir():
        return output
    subfolder = in_path.parent.relative_to(folder) if folder is not None else Path()
    is_video = in_path.suffix.lower() in VIDEO_EXTENSIONS
    extension = in_path.suffix if is_video or not ext else ext
    if not is_video and extension.lower() not in Image.registered_extensions():
        extension = '.png'  # an input named without an image extension
    return output / subfolder / f'{in_path.stem}{suffix}{extension}'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Super-resolve images (any size; alpha, grayscale, 16-bit and ICC kept) and videos with a '
                    'trained SRResNet or SRGAN generator, or draw the Bicubic/SRResNet/SRGAN/HR grid (--grid).')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image or video files, folders (searched recursively), glob patterns, or image '
                             'lists (.json) written by create_data_lists.py')
    parser.add_argument('-o', '--output', default=None,
                        help=f'output folder, or one output file when there is one input (its extension picks '
                             f'the format) [default: {DEFAULT_OUTPUT_DIR}/]')
    parser.add_argument('--model', default=None,
                        help='generator checkpoint from train_srresnet.py or train_srgan.py '
                             '[default: the shipped weights/srresnet_x4.pt]')
    parser.add_argument('--tile', type=int, default=DEFAULT_TILE,
                        help='LR tile side for tiled inference (0: the whole image at once); smaller uses less '
                             'memory, and it is halved automatically on out-of-memory [default: %(default)s]')
    parser.add_argument('--tile-overlap', type=int, default=DEFAULT_TILE_OVERLAP,
                        help='LR pixels shared by neighbouring tiles, cross-faded so no seam shows '
                             '[default: %(default)s]')
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument('--fp32', dest='precision', action='store_const', const='fp32',
                           help='full precision [default: bf16 where the CPU/GPU runs it natively, else fp32]')
    precision.add_argument('--half', dest='precision', action='store_const', const='half',
                           help='half precision even where it is not the default (fp16 on older GPUs and MPS)')
    parser.set_defaults(precision='auto')
    parser.add_argument('--suffix', default=None, help='added to output names in a folder [default: _x<scale>]')
    parser.add_argument('--ext', default=None,
                        help="output image format in a folder, e.g. '.png' [default: the input's]")
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs [default: skip them]')
    parser.add_argument('--batch-size', type=int, default=4,
                        help='video frames super-resolved together [default: %(default)s]')
    parser.add_argument('--device', default='auto',
                        help="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda:1', ... [default: %(default)s]")
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help="load an original-tutorial checkpoint (pickled objects: only files you trust)")
    parser.add_argument('--grid', action='store_true',
                        help='instead of upscaling, save the Bicubic/SRResNet/SRGAN/HR grid of each image '
                             '(visualize_sr); --model is the SRResNet')
    parser.add_argument('--srgan', default=None, help='(--grid) the SRGAN checkpoint for its panel')
    parser.add_argument('--halve', action='store_true', help='(--grid) halve each image first, for large images')
    args = parser.parse_args(argv)
    if args.tile < 0 or args.tile_overlap < 0 or args.batch_size < 1:
        parser.error('--tile and --tile-overlap must be >= 0, --batch-size >= 1')
    if args.ext is not None and not args.ext.startswith('.'):
        args.ext = f'.{args.ext}'
    return args


def main(argv=None):
    args = parse_args(argv)
    inputs, missing = find_inputs(args.inputs)
    if not inputs and not missing:
        raise SystemExit(f'error: no images or videos found in {" ".join(args.inputs)}')
    output = args.output or DEFAULT_OUTPUT_DIR
    if Path(output).suffix and not Path(output).is_dir():
        if len(inputs) + len(missing) > 1:
            raise SystemExit(f'error: -o {output} names one file but {len(inputs) + len(missing)} inputs were '
                             f'given; pass a folder')
    else:  # an output folder inside an input folder: do not upscale the previous run's results again
        inputs = [(path, folder) for path, folder in inputs
                  if folder is None or Path(output).resolve() not in path.resolve().parents]
    device = utils.pick_device(args.device)
    amp_dtype = pick_amp_dtype(device, args.precision)
    try:
        model, scaling_factor = load_model(args.model, device, args.unsafe_pickle)
        srgan = None
        if args.grid and args.srgan is not None:
            srgan = load_model(args.srgan, device, args.unsafe_pickle)
            if srgan[1] != scaling_factor:  # the grid's panels must share one LR image
                raise CheckpointError(f'--srgan {args.srgan} upscales x{srgan[1]} but --model '
                                      f'{args.model or DEFAULT_MODEL} upscales x{scaling_factor}; pass two '
                                      f'checkpoints of the same scale')
    except CheckpointError as e:
        raise SystemExit(f'error: {e}')
    suffix = args.suffix if args.suffix is not None else ('_grid' if args.grid else f'_x{scaling_factor}')
    ext = '.png' if args.grid and args.ext is None else args.ext
    tile = args.tile or None

    def note(message):
        tqdm.write(message, file=sys.stderr)

    failed = [f'{pattern}: no such file or folder' for pattern in missing]
    for message in failed:
        note(f'error: {message}')
    skipped = 0
    for in_path, folder in tqdm(inputs, unit='file', desc='super-resolving', disable=len(inputs) < 2):
        out_path = output_path(in_path, folder, output, suffix, ext)
        if out_path.exists() and not args.overwrite:
            note(f'skip: {out_path} exists (pass --overwrite to replace it)')
            skipped += 1
            continue
        try:
            if args.grid:
                visualize_sr(in_path, args.halve, (model, scaling_factor), srgan, out_path, device, tile,
                             args.tile_overlap, args.precision)
            elif in_path.suffix.lower() in VIDEO_EXTENSIONS:
                super_resolve_video(model, in_path, out_path, scaling_factor, tile, args.tile_overlap, amp_dtype,
                                    args.batch_size, note)
            else:
                # one image: the file bar is off, so a large one shows its tiles instead
                super_resolve_file(model, in_path, out_path, scaling_factor, tile, args.tile_overlap, amp_dtype, note,
                                   progress=len(inputs) < 2)
        except (ImageLoadError, InputError) as e:
            note(f'error: {e}')
            failed.append(str(e))
            continue
        note(f'wrote {out_path}')

    done = len(inputs) + len(missing) - len(failed) - skipped
    summary = f'{done} written, {skipped} skipped (already there), {len(failed)} failed'
    if failed:
        raise SystemExit(f'error: {summary}')
    note(summary)


if __name__ == '__main__':
    main()

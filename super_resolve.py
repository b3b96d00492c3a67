"""
Super-resolve your own images and videos with a trained SRResNet or SRGAN generator, and draw the tutorial's
Bicubic / SRResNet / SRGAN / Original HR comparison grid.

    python super_resolve.py photo.jpg                            # -> results/photo_x4.jpg
    python super_resolve.py photos/ scans/*.tif -o upscaled/     # files, folders (recursive) and globs
    python super_resolve.py photo.png -o big.png --model checkpoints/srgan/checkpoint.pt
    python super_resolve.py clip.mp4 -o clip_x4.mp4              # video: same frame rate, audio copied
    python super_resolve.py photo.jpg --self-ensemble            # the mean over 8 flips / rotations: ~8x the time
    python super_resolve.py photo.png --grid --srgan checkpoints/srgan/checkpoint.pt   # visualize_sr's grid
    python super_resolve.py data/Set5_test_images.json --grid --srgan ...    # a list from create_data_lists.py

From Python:

    from super_resolve import visualize_sr
    grid = visualize_sr('photo.png', srgan_checkpoint='checkpoints/srgan/checkpoint.pt', save_path='grid.png')

Images of any size: the LR image goes through the network in overlapping tiles (--tile, --tile-overlap) that are
cross-faded on a CPU canvas (inference.Upscaler, which eval.py uses too), so memory is bounded by the tile, not
the image; on out-of-memory the tile is halved and the image tried again.
--self-ensemble (EDSR+'s, Lim et al. 2017; off by default): each image, tile or batch of video frames goes through
the network in its 8 flips and rotations, each output is turned back, and the 8 are averaged: ~8x the time for a
small gain in PSNR (README, Self-ensemble).
What you give is kept: transparency (upscaled with bicubic and re-attached), grayscale, 16-bit depth (PNG and
TIFF outputs), the ICC colour profile; EXIF orientation is applied. The output format follows the extension.
Every output is planned before any work (outputs.OutputPlan): never an input, even with --overwrite; never two
inputs on one output; never inside an input folder; existing ones are skipped unless --overwrite.
Speed: the model is rewritten once for inference (speedups.for_inference) and run under inference_mode with
bf16 autocast where the hardware runs bf16 natively (CPUs with AVX-512 BF16 or AMX, Ampere and newer GPUs),
else fp32; --fp32 and --half override that.
"""

import argparse
import dataclasses
import gc
import glob
import numbers
import os
import struct
import sys
import zlib
from fractions import Fraction
from pathlib import Path

if __name__ == '__main__':  # run as a script: settings that must come before torch loads (README, Inference speed)
    gc.disable()  # until main(): collecting the ~10^6 objects torch's import makes, all long-lived, cost ~0.3 s
    # OpenMP threads sleep between parallel regions instead of spinning: a spinning thread used up its share of a
    # core that another process was using, and each small op then waited a scheduler slice (~8 ms) for it
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')  # 2 MB pages for large tensors: 10x fewer page faults

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import inference
from checkpoints import CheckpointError
from datasets import read_image_list
from inference import (DEFAULT_MODEL, DEFAULT_TILE, DEFAULT_TILE_OVERLAP, MIN_TILE, MIN_TILE_OVERLAP, load_upscaler,
                       tiling)
from outputs import OutputError, OutputPlan, WriteError, atomic_path
from utils import (IMAGE_EXTENSIONS, ImageLoadError, UserError, convert_image, crop_to_multiple, downsample, load_image,
                   number, pick_device, read_image, run_main)

DEFAULT_OUTPUT_DIR = 'results'
MIN_INPUT_SIZE = 8  # smaller inputs are mostly padding for the 9x9 kernels: a thumbnail given by mistake
VIDEO_EXTENSIONS = ('.mp4', '.mkv', '.mov', '.avi', '.webm', '.m4v')
FORMATS_16_BIT = ('.png', '.tif', '.tiff')  # 16-bit outputs: grayscale through Pillow, colour through PyAV
FORMATS_WITHOUT_ALPHA = ('.jpg', '.jpeg')
# zlib level of PNG outputs: 1 (zlib's fastest, OpenCV's default) encodes a 2048x2048 output 2-5x faster than
# Pillow's default 6 (2.5 s -> 0.5 s, ~20% of the whole process on 2 cores) for files 10-17% larger (README)
PNG_COMPRESS_LEVEL = 1


class InputError(UserError, ValueError):
    """An input that cannot be super-resolved, an output that cannot be written (the message names the file), or an
    argument of visualize_sr that does not fit."""


class TileBar:
    """An on_tile callback for Upscaler.upscale: a progress bar of one image's tiles, shown only when the image
    is cut into several (named `name`; None: no bar)."""

    def __init__(self, name):
        self.name, self.bar = name, None

    def __call__(self, done, total):
        if self.bar is None and self.name is not None and total > 1:
            self.bar = tqdm(total=total, unit='tile', desc=self.name, leave=False)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------------------------
# Images: keep what the user gave (alpha, grayscale, 16 bits, ICC profile)

@torch.inference_mode()
def super_resolve_image(upscaler, loaded, bits=None, keep_alpha=True, on_retry=None, progress=None):
    """utils.LoadedImage -> PIL image s times larger, of the input's kind: 'RGB' / 'RGBA', 'L' / 'LA' for
    grayscale, 'I;16' for 16-bit grayscale; for 16-bit colour, which Pillow cannot hold, a (H, W, 3 or 4) uint16
    array (save_image writes it with PyAV). bits: 8 or 16 (None: the input's). progress: a name to show a bar of
    tiles under (for one large image), or None."""
    height, width = loaded.rgb.shape[:2]
    if min(height, width) < MIN_INPUT_SIZE:
        raise InputError(f'{width}x{height} is too small to super-resolve (at least {MIN_INPUT_SIZE} pixels a side)')
    in_max = 65535.0 if loaded.bits == 16 else 255.0
    bits = bits or loaded.bits
    if loaded.alpha is not None and keep_alpha and loaded.gray:
        bits = 8  # Pillow has no 16-bit LA mode
    out_max = 65535.0 if bits == 16 else 255.0

    lr_img = torch.from_numpy(loaded.rgb.astype(np.float32)).permute(2, 0, 1).div_(in_max)  # (3, h, w), [0, 1]
    lr_img = convert_image(lr_img, '[0, 1]', 'imagenet-norm')  # (3, h, w)
    tile_bar = TileBar(progress)
    try:
        sr_img = upscaler.upscale(lr_img, on_retry, tile_bar)  # (3, H, W) in [-1, 1]
    finally:
        tile_bar.close()
    del lr_img
    sr_img = convert_image(sr_img, '[-1, 1]', '[0, 1]').mul_(out_max).clamp_(0.0, out_max)  # in place from here
    if loaded.gray:
        # the network's three channels of a gray input are nearly equal; their mean is the gray value
        channels = sr_img.mean(0).round_().numpy()  # (H, W)
    else:
        channels = sr_img.round_().permute(1, 2, 0).numpy()  # (H, W, 3)
    del sr_img
    channels = channels.astype(np.uint16 if bits == 16 else np.uint8)
    alpha = _upscaled_alpha(loaded, channels.shape[1::-1], in_max, out_max) if keep_alpha else None
    if bits == 16 and not loaded.gray:
        return channels if alpha is None else np.dstack([channels, alpha])  # (H, W, 3 or 4) uint16
    sr = Image.fromarray(channels)  # 'I;16', 'L' or 'RGB'
    del channels
    if alpha is not None:
        sr = Image.merge('LA' if sr.mode == 'L' else 'RGBA', (*sr.split(), Image.fromarray(alpha)))
    return sr


def _upscaled_alpha(loaded, size, in_max, out_max):
    """The transparency, upscaled with bicubic (no network for it) to `size` (W, H), at the output's bit depth."""
    if loaded.alpha is None:
        return None
    alpha = Image.fromarray(loaded.alpha.astype(np.float32) * (out_max / in_max))  # mode 'F'
    alpha = np.asarray(alpha.resize(size, Image.BICUBIC))
    return np.clip(np.round(alpha), 0, out_max).astype(np.uint16 if out_max > 255 else np.uint8)  # (H, W)


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
    elif fmt == 'PNG':
        options['compress_level'] = PNG_COMPRESS_LEVEL
    try:
        with atomic_path(path) as tmp_path:
            if isinstance(img, np.ndarray):
                _save_16_bit_colour(img, Path(tmp_path), icc_profile)
            else:
                img.save(tmp_path, format=fmt, **options)
    except WriteError as e:  # a full disk, no permission, Pillow's 'cannot write mode P as JPEG'
        raise InputError(str(e)) from None
    except (ValueError, KeyError) as e:  # e.g. a mode the format cannot hold
        raise InputError(f'{path}: could not write ({e})') from None


def super_resolve_file(upscaler, in_path, out_path, note=print, progress=False):
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
        sr = super_resolve_image(upscaler, loaded, bits, keep_alpha,
                                 on_retry=lambda message: note(f'note: {in_path}: {message}'),
                                 progress=Path(in_path).name if progress else None)
    except InputError as e:
        raise InputError(f'{in_path}: {e}') from None
    save_image(sr, out_path, loaded.icc_profile)


# ----------------------------------------------------------------------------------------------------------------
# Video: decode with PyAV, super-resolve frames in batches, encode at the same frame rate, copy the audio

@torch.inference_mode()
def super_resolve_video(upscaler, in_path, out_path, batch_size=4, note=print, progress=True):
    """Frame by frame: h264 (libx264) when PyAV's FFmpeg has it, else MPEG-4 Part 2; VP9 for .webm; the audio
    stream is copied packet by packet, not re-encoded (dropped with a note where the container cannot hold it).
    Written atomically. Returns the number of frames written."""
    import av  # only videos need it

    out_path = Path(out_path)
    try:
        with av.open(os.fspath(in_path)) as source, atomic_path(out_path) as tmp_path:
            if not source.streams.video:
                raise InputError(f'{in_path}: no video stream')
            video_in = source.streams.video[0]
            video_in.thread_type = 'AUTO'
            with av.open(tmp_path, 'w') as target:
                encoder = FrameEncoder(upscaler, target, video_in, out_path, batch_size)
                audio_in = _copied_audio(source, target, out_path, note)
                bar = tqdm(total=video_in.frames or None, unit='frame', desc=Path(in_path).name, leave=False,
                           disable=not progress)
                for packet in source.demux([video_in] + ([audio_in] if audio_in is not None else [])):
                    if packet.stream is video_in:
                        for frame in packet.decode():  # the final empty packet flushes the decoder
                            bar.update(encoder.add(frame))
                    elif packet.dts is not None:  # audio: copy (skip the demuxer's empty flush packet)
                        packet.stream = target.streams.audio[0]
                        target.mux(packet)
                bar.update(encoder.finish())
                bar.close()
            if encoder.n_frames == 0:
                raise InputError(f'{in_path}: no video frames could be decoded')
        return encoder.n_frames
    except av.FFmpegError as e:
        raise InputError(f'{in_path}: cannot decode or encode this video ({e})') from None


def _copied_audio(source, target, out_path, note):
    """The input's audio stream, with a stream for it added to `target`; None (with a note) where the container
    cannot hold its codec, or where there is no audio."""
    if not source.streams.audio:
        return None
    audio_in = source.streams.audio[0]
    if audio_in.codec_context.name not in target.supported_codecs:
        note(f'note: {out_path}: {out_path.suffix} cannot hold {audio_in.codec_context.name} audio; audio dropped '
             f'(use .mkv)')
        return None
    target.add_stream_from_template(audio_in)
    return audio_in


class FrameEncoder:
    """Collects decoded frames, super-resolves them in batches and muxes them into the output video stream at
    the input frames' times."""

    def __init__(self, upscaler, target, video_in, out_path, batch_size):
        import av
        self.upscaler, self.target, self.batch_size = upscaler, target, batch_size
        frame_rate = video_in.average_rate or video_in.guessed_rate or 25
        if out_path.suffix.lower() == '.webm':  # WebM holds only VP8/VP9/AV1
            if 'libvpx-vp9' not in av.codecs_available:
                raise InputError(f'{out_path}: this FFmpeg has no VP9 encoder (libvpx-vp9) for .webm; use .mp4 or .mkv')
            codec = 'libvpx-vp9'
        else:
            codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
        try:
            self.stream = target.add_stream(codec, rate=frame_rate)
        except ValueError as e:  # a container that cannot hold the codec
            raise InputError(f'{out_path}: {out_path.suffix} cannot hold {codec} video ({e}); use .mp4 or '
                             f'.mkv') from None
        s = upscaler.scaling_factor
        self.stream.width, self.stream.height, self.stream.pix_fmt = video_in.width * s, video_in.height * s, 'yuv420p'
        # near-transparent quality: constant rate factor 18 for x264 and VP9 (b=0: quality alone decides);
        # MPEG-4 at quantiser 2 (ffmpeg -q:v 2)
        self.stream.options = ({'crf': '18'} if codec == 'libx264' else {'crf': '18', 'b': '0'}
                               if codec == 'libvpx-vp9' else {'flags': 'qscale', 'global_quality': str(2 * 118)})
        self.frame_period = 1 / Fraction(frame_rate)  # the encoder's time base
        self.frames, self.last_pts, self.n_frames = [], -1, 0

    def add(self, frame):
        """Queue one decoded frame; returns the number of frames encoded now (0, or a batch)."""
        self.frames.append(frame)
        return self._encode() if len(self.frames) == self.batch_size else 0

    def finish(self):
        """Encode the frames still queued and flush the encoder; returns how many were encoded."""
        n = self._encode() if self.frames else 0
        self.target.mux(self.stream.encode(None))
        return n

    def _encode(self):
        import av
        rgb = np.stack([frame.to_ndarray(format='rgb24') for frame in self.frames])  # (N, h, w, 3) uint8
        lr_imgs = convert_image(torch.from_numpy(rgb).permute(0, 3, 1, 2).float(), '[0, 255]', 'imagenet-norm')
        sr_imgs = upscale_frames(self.upscaler, lr_imgs)  # (N, 3, H, W) in [-1, 1]
        sr_imgs = convert_image(sr_imgs, '[-1, 1]', '[0, 255]').clamp_(0, 255).round_().to(torch.uint8)
        for frame, sr_img in zip(self.frames, sr_imgs.permute(0, 2, 3, 1).numpy()):
            out_frame = av.VideoFrame.from_ndarray(sr_img, format='rgb24')
            # the input frame's time in 1/fps units, kept strictly increasing as encoders require
            pts = self.last_pts + 1
            if frame.pts is not None and frame.time_base is not None:
                pts = max(pts, round(frame.pts * frame.time_base / self.frame_period))
            out_frame.pts, out_frame.time_base, self.last_pts = pts, self.frame_period, pts
            self.target.mux(self.stream.encode(out_frame))
        n, self.frames = len(self.frames), []
        self.n_frames += n
        return n


def upscale_frames(upscaler, lr_imgs):
    """(N, 3, h, w) ImageNet-normalised frames -> (N, 3, h * s, w * s) in [-1, 1]: as one batch when a frame fits
    in a tile, else (or after out-of-memory) one frame at a time, tiled."""
    if upscaler.tile is None or max(lr_imgs.shape[2:]) <= upscaler.tile:
        try:
            return upscaler.forward(lr_imgs)
        except RuntimeError as e:
            if not inference.is_out_of_memory(e):
                raise
    return torch.stack([upscaler.upscale(lr_img) for lr_img in lr_imgs])


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


def visualize_sr(img, halve=False, srresnet_checkpoint=DEFAULT_MODEL, srgan_checkpoint=None, save_path=None,
                 device='auto', scale=None):
    """The tutorial's 2x2 grid: Bicubic / SRResNet / SRGAN / Original HR.

    img: an image path or a PIL image, the HR. It is downsampled by the models' scale with Pillow bicubic (the LR
    every panel starts from), then upsampled with bicubic and super-resolved by each model. halve: halve the HR
    first (Lanczos), as the tutorial did for large images. srresnet_checkpoint, srgan_checkpoint: checkpoint paths
    (from train_srresnet.py / train_srgan.py), inference.Upscalers (to choose tiles or precision, or to load an
    original-tutorial checkpoint with allow_unsafe_pickle, or to run one with self_ensemble: its panel's label then
    says so), or None to leave that panel saying so. scale: 2, 4 or 8
    (an int; an InputError for anything else), the shipped SRResNet of that scale when srresnet_checkpoint is left as
    it is, and a CheckpointError for a checkpoint of another scale (None: the checkpoints' own scale, x4 without
    any).
    Returns the grid as a PIL RGB image of (2 W + 3 m) x (2 H + 3 m) pixels (W x H: the HR, trimmed to a multiple
    of the scale; m: the label margin); saves it to save_path when given (replaced if it exists; an OutputError if it
    is the image or a checkpoint, or not an image format). Needs no display."""
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Integral)
                              or scale not in inference.SCALES):
        raise InputError(f'scale={scale!r}: pass one of {", ".join(map(str, inference.SCALES))} (an int), or None for '
                         f'the checkpoints\' own scale')
    if save_path is not None:  # never over the image or a checkpoint it reads; a save_path given may be replaced
        reads = [p for p in (img, srresnet_checkpoint, srgan_checkpoint) if isinstance(p, (str, os.PathLike))]
        OutputPlan(reads=reads).file(save_path, 'save_path', formats=IMAGE_EXTENSIONS, if_exists='replace')
    name = img if isinstance(img, (str, os.PathLike)) else 'image'
    hr_img = load_image(img) if isinstance(img, (str, os.PathLike)) else img.convert('RGB')
    if halve:
        hr_img = hr_img.resize((hr_img.width // 2, hr_img.height // 2), Image.LANCZOS)
    if scale is not None and srresnet_checkpoint is DEFAULT_MODEL:  # the default: the shipped model of that scale
        srresnet_checkpoint = inference.shipped_model(scale)
    upscalers = {}
    for label, checkpoint in (('SRResNet', srresnet_checkpoint), ('SRGAN', srgan_checkpoint)):
        given = isinstance(checkpoint, inference.Upscaler)
        upscalers[label] = (checkpoint if given else
                            load_upscaler(checkpoint, pick_device(device)) if checkpoint is not None else None)
        if upscalers[label] is not None:
            named = f'{label.lower()}_checkpoint={"an Upscaler" if given else checkpoint}'
            inference.check_scale(upscalers[label].scaling_factor, scale, named, scale_flag='scale=')
    scales = {u.scaling_factor for u in upscalers.values() if u is not None}
    if len(scales) > 1:
        raise CheckpointError(f'the two checkpoints upscale by different factors ({sorted(scales)})')
    s = scales.pop() if scales else scale or 4

    if min(hr_img.width, hr_img.height) < s * MIN_INPUT_SIZE:
        raise ImageLoadError(f'{name}: {hr_img.width}x{hr_img.height} is too small for the grid (at least '
                             f'{s * MIN_INPUT_SIZE} pixels a side{", after halving" if halve else ""})')
    hr_img = crop_to_multiple(hr_img, s)
    lr_img = downsample(hr_img, s)  # (w, h) PIL
    panels = {'Bicubic': lr_img.resize(hr_img.size, Image.BICUBIC)}
    lr_tensor = convert_image(lr_img, 'pil', 'imagenet-norm')  # (3, h, w)
    for label, upscaler in upscalers.items():
        if upscaler is None:
            panels[label] = f'no {label} checkpoint given'
        else:
            panels[label + (' + self-ensemble' if upscaler.self_ensemble else '')] = convert_image(
                upscaler.upscale(lr_tensor), '[-1, 1]', 'pil')
    panels['Original HR'] = hr_img
    grid = draw_grid(panels, *hr_img.size)
    if save_path is not None:
        save_image(grid, save_path)
    return grid


def draw_grid(panels, width, height):
    """{label: PIL image of width x height, or a message for a missing model} -> the 2x2 grid, labels above."""
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
    return grid


# ----------------------------------------------------------------------------------------------------------------
# Command line

def find_inputs(patterns):
    """Files, folders (searched recursively for images and videos), glob patterns and the JSON image lists of
    create_data_lists.py -> [(path, folder it was found in or None)], the patterns that matched nothing, and the
    folders and lists read for them."""
    extensions = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    found, missing, sources = [], [], []
    for pattern in patterns:
        if os.path.exists(pattern) or not glob.has_magic(pattern):
            paths = [pattern] if os.path.exists(pattern) else []
        else:
            paths = sorted(glob.glob(pattern, recursive=True))
        if not paths:
            missing.append(pattern)
        for path in map(Path, paths):
            if path.is_dir() or path.suffix.lower() == '.json':
                sources.append(path)
            if path.is_dir():
                found += [(p, path) for p in sorted(path.rglob('*'))
                          if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith('.')]
            elif path.suffix.lower() == '.json':  # an image list written by create_data_lists.py
                found += [(Path(p), None) for p in read_image_list(path)]
            else:
                found.append((path, None))  # named explicitly: tried whatever its extension
    return found, missing, sources


def output_path(in_path, folder, output, suffix, ext, video):
    """Where one input's result goes in the output folder: output/<subfolders>/<stem><suffix><ext>, keeping the
    layout below a folder given as input. video: the result is a video, which keeps the input's extension."""
    subfolder = in_path.parent.relative_to(folder) if folder is not None else Path()
    extension = in_path.suffix if video else ext or in_path.suffix
    if not video and extension.lower() not in IMAGE_EXTENSIONS:
        extension = '.png'  # an input named without an image extension, or of one not written (.gif)
    return Path(output) / subfolder / f'{in_path.stem}{suffix}{extension}'


def add_model_arguments(parser):
    """Which model, and how it runs: tiles, precision, self-ensemble."""
    parser.add_argument('--model', default=None,
                        help='generator checkpoint from train_srresnet.py or train_srgan.py '
                             '[default: the shipped weights/srresnet_x<scale>.pt]')
    parser.add_argument('--scale', type=int, choices=inference.SCALES, default=None,
                        help='upscale by 2, 4 or 8: the shipped SRResNet of that scale when no --model is given; '
                             'with --model, the scale it must have [default: x4, or the --model\'s own]')
    parser.add_argument('--tile', type=number(int, minimum=0), default=DEFAULT_TILE,
                        help=f'LR tile side for tiled inference, at least {MIN_TILE} (0: the whole image at once); '
                             f'smaller uses less memory, and it is halved automatically on out-of-memory '
                             f'[default: %(default)s]')
    parser.add_argument('--tile-overlap', type=number(int, minimum=0), default=None,
                        help=f'LR pixels shared by neighbouring tiles, cross-faded so no seam shows: from '
                             f'{MIN_TILE_OVERLAP} to half the tile [default: {DEFAULT_TILE_OVERLAP}, or half the tile '
                             f'when less]')
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument('--fp32', dest='precision', action='store_const', const='fp32',
                           help='full precision [default: bf16 where the CPU/GPU runs it natively, else fp32]')
    precision.add_argument('--half', dest='precision', action='store_const', const='half',
                           help='half precision even where it is not the default (fp16 on older GPUs and MPS)')
    parser.set_defaults(precision='auto')
    parser.add_argument('--self-ensemble', action='store_true',
                        help="average the model's outputs over the 8 flips and rotations of each input, each "
                             'turned back (EDSR+, Lim et al. 2017): ~8x the time, a little closer to the HR (README, '
                             'Self-ensemble) [default: off]')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Super-resolve images (any size; alpha, grayscale, 16-bit and ICC kept) and videos with a '
                    'trained SRResNet or SRGAN generator, or draw the Bicubic/SRResNet/SRGAN/HR grid (--grid).')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image or video files, folders (searched recursively), glob patterns, or image '
                             'lists (.json) written by create_data_lists.py')
    parser.add_argument('-o', '--output', default=None,
                        help=f'output folder, outside the input folders (the next run would read its files as '
                             f'inputs), or one output file when there is one input (its extension picks the format) '
                             f'[default: {DEFAULT_OUTPUT_DIR}/]')
    add_model_arguments(parser)
    parser.add_argument('--suffix', default=None, help='added to output names in a folder [default: _x<scale>]')
    parser.add_argument('--ext', default=None,
                        help="output image format in a folder, e.g. '.png' [default: the input's]")
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs [default: skip them]')
    parser.add_argument('--batch-size', type=number(int, minimum=1), default=4,
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
    try:
        args.tile, args.tile_overlap = tiling(args.tile, args.tile_overlap)
    except ValueError as e:
        parser.error(str(e))
    if args.halve and not args.grid:
        parser.error('--halve applies to --grid only (it halves each image before drawing the grid)')
    if args.ext is not None and not args.ext.startswith('.'):
        args.ext = f'.{args.ext}'
    if args.ext is not None and args.ext.lower() not in IMAGE_EXTENSIONS:
        parser.error(f'--ext {args.ext}: images are written as {", ".join(IMAGE_EXTENSIONS)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    inputs, missing, sources = find_inputs(args.inputs)
    if not inputs and not missing:
        raise InputError(f'no images or videos found in {" ".join(args.inputs)}')
    output = args.output or DEFAULT_OUTPUT_DIR
    if names_one_file(output) and len(inputs) + len(missing) > 1:
        raise OutputError(f'-o {output} names one file but {len(inputs) + len(missing)} inputs were given; pass a '
                          f'folder')
    models = [args.model or inference.shipped_model(args.scale or 4), args.srgan]
    lists, folders = [p for p in sources if not p.is_dir()], [p for p in sources if p.is_dir()]
    plan = OutputPlan(reads=[path for path, _ in inputs] + lists + models, read_folders=folders,
                      overwrite=args.overwrite)
    upscaler, srgan = load_upscalers(args)
    jobs = plan_outputs(plan, inputs, args, upscaler.scaling_factor)
    failed = [f'{pattern}: no such file or folder' for pattern in missing]
    for message in failed:
        note(f'error: {message}')
    counts = {'written': 0, 'skipped': sum(out_path is None for _, out_path in jobs)}
    try:
        upscale_all(jobs, args, (upscaler, srgan), counts, failed)
    except KeyboardInterrupt:  # the file being written is not left half-written (atomic writes); run_main says stopped
        note(f'{counts["written"]} written, {counts["skipped"]} skipped, {len(failed)} failed, '
             f'{len(jobs) - counts["written"] - counts["skipped"] - len(failed) + len(missing)} not done; the same '
             f'command goes on from there (it skips what exists)')
        raise
    summary = f'{counts["written"]} written, {counts["skipped"]} skipped (already there), {len(failed)} failed'
    if failed:
        raise UserError(summary)
    note(summary)


def note(message):
    """A line to stderr that does not break a progress bar."""
    tqdm.write(message, file=sys.stderr)


def names_one_file(output):
    """True when -o names one output file: an existing file, or a name with an extension that is not a folder."""
    return os.path.isfile(output) or (bool(Path(output).suffix) and not os.path.isdir(output))  # no OSError


def plan_outputs(plan, inputs, args, scale):
    """[(input, folder it was found in)] -> [(input, output, or None for an existing output to skip)], every output
    planned (outputs.OutputPlan) before any work: never an input (even with --overwrite), never two inputs on one
    output, never inside an input folder, a format known before writing, an existing one skipped unless
    --overwrite. -o is one file (its extension picks the format) or a folder."""
    output = Path(args.output or DEFAULT_OUTPUT_DIR)
    one_file = names_one_file(output)
    if not one_file:
        plan.folder(output, '-o')
    suffix = args.suffix if args.suffix is not None else ('_grid' if args.grid else f'_x{scale}')
    ext = '.png' if args.grid and args.ext is None else args.ext
    jobs = []
    for in_path, folder in inputs:
        video = in_path.suffix.lower() in VIDEO_EXTENSIONS and not args.grid
        out_path = output if one_file else output_path(in_path, folder, output, suffix, ext, video)
        planned = plan.file(out_path, '-o' if one_file else f'{in_path} ->',
                            formats=VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS,
                            if_exists='replace' if args.overwrite else 'skip')
        if planned is None:
            note(f'skip: {out_path} exists (pass --overwrite to replace it)')
        jobs.append((in_path, planned))
    return jobs


def upscale_all(jobs, args, upscalers, counts, failed):
    """Upscale each (input, output) planned (output None: skipped), counting into `counts` ('written') and appending
    each failure (one line) to `failed`: a bad file is reported and passed over."""
    upscaler, srgan = upscalers
    for in_path, out_path in tqdm(jobs, unit='file', desc='super-resolving', disable=len(jobs) < 2):
        if out_path is None:
            continue
        try:
            if args.grid:
                visualize_sr(in_path, args.halve, upscaler, srgan, out_path)
            elif in_path.suffix.lower() in VIDEO_EXTENSIONS:
                super_resolve_video(upscaler, in_path, out_path, args.batch_size, note)
            else:  # one image: the file bar is off, so a large one shows its tiles instead
                super_resolve_file(upscaler, in_path, out_path, note, progress=len(jobs) < 2)
        except (ImageLoadError, InputError) as e:
            note(f'error: {e}')
            failed.append(str(e))
            continue
        note(f'wrote {out_path}')
        counts['written'] += 1


def load_upscalers(args):
    """--model (and --srgan with --grid) -> (Upscaler, SRGAN Upscaler or None); a CheckpointError (one line) for a
    model that cannot be loaded or is not of --scale."""
    device = pick_device(args.device)
    settings = dict(device=device, precision=args.precision, tile=args.tile, tile_overlap=args.tile_overlap,
                    allow_unsafe_pickle=args.unsafe_pickle)
    upscaler = load_upscaler(args.model or inference.shipped_model(args.scale or 4), **settings)
    upscaler = dataclasses.replace(upscaler, self_ensemble=args.self_ensemble)
    inference.check_scale(upscaler.scaling_factor, args.scale, f'--model {args.model}' if args.model else
                          'the shipped model', other=' (or no --model: the shipped one)' if args.model else '')
    srgan = None
    if args.grid and args.srgan is not None:
        srgan = dataclasses.replace(load_upscaler(args.srgan, **settings), self_ensemble=args.self_ensemble)
        inference.check_scale(srgan.scaling_factor, args.scale, f'--srgan {args.srgan}')
        if srgan.scaling_factor != upscaler.scaling_factor:  # the grid's panels must share one LR image
            raise CheckpointError(f'--srgan {args.srgan} upscales x{srgan.scaling_factor} but --model '
                                  f'{args.model or "(the shipped model)"} upscales x{upscaler.scaling_factor}; '
                                  f'pass two checkpoints of the same scale')
    return upscaler, srgan


if __name__ == '__main__':
    gc.enable()
    run_main(main)

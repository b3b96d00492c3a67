"""
Super-resolve your own images and videos with a trained SRResNet or SRGAN generator, and draw the tutorial's
Bicubic / SRResNet / SRGAN / Original HR comparison grid.

    python super_resolve.py photo.jpg                            # -> results/photo_x4.jpg
    python super_resolve.py photos/ scans/*.tif -o upscaled/     # files, folders (recursive) and globs
    python super_resolve.py photo.png -o big.png --model checkpoints/srgan/checkpoint.pt
    python super_resolve.py clip.mp4 -o clip_x4.mp4              # video: same frame rate, audio copied
    python super_resolve.py web_photo.jpg --real                 # JPEG photos, video frames: the real-input x4
    python super_resolve.py photo.jpg --self-ensemble            # the mean over 8 flips / rotations: 8 passes
    python super_resolve.py photo.png --grid --srgan checkpoints/srgan/checkpoint.pt   # visualize_sr's grid
    python super_resolve.py data/Set5_test_images.json --grid --srgan ...    # a list from create_data_lists.py

From Python:

    from super_resolve import visualize_sr
    grid = visualize_sr('photo.png', srgan_checkpoint='checkpoints/srgan/checkpoint.pt', save_path='grid.png')

Images of any size: the LR image goes through the network in overlapping tiles (--tile, --tile-overlap) that are
cross-faded on a CPU canvas (inference.Upscaler, which eval.py uses too), so memory is bounded by the tile, not
the image; on out-of-memory the tile is halved and the image tried again.
--self-ensemble (EDSR+'s, Lim et al. 2017; off by default): each image, tile or batch of video frames goes through
the network in its 8 flips and rotations, each output is turned back, and the 8 are averaged (README, Self-ensemble).
What you give is kept: transparency (upscaled with bicubic and re-attached), grayscale, 16-bit depth (PNG and
TIFF outputs; 16-bit colour through image_formats.py), the ICC colour profile; EXIF orientation is applied. The
output format follows the extension.
Every output is planned before any work (outputs.OutputPlan): never an input, even with --overwrite; never two
inputs on one output; never inside an input folder; existing ones are skipped unless --overwrite.
Precision: bf16 where the CPU or GPU runs it natively, else fp32 (--fp32, --half: inference.pick_amp_dtype).
"""

import argparse
import dataclasses
import gc
import glob
import numbers
import os
import sys
from pathlib import Path

if __name__ == '__main__':  # as a script: start-up settings for speed, which must come before torch loads
    gc.disable()  # torch's import makes many objects that all live on: collecting them is wasted (on again below)
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # idle OpenMP threads sleep, not spin on cores others use
    os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')  # huge memory pages for large tensors: fewer page faults

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import inference
from checkpoints import CheckpointError
from datasets import read_image_list
from images import (FORMATS_16_BIT, FORMATS_WITHOUT_ALPHA, InputError, load_image, output_format, read_image,
                    save_image)
from inference import (DEFAULT_MODEL, DEFAULT_TILE, DEFAULT_TILE_OVERLAP, MIN_TILE, MIN_TILE_OVERLAP, load_upscaler,
                       tiling)
from outputs import OutputError, OutputPlan
from utils import (IMAGE_EXTENSIONS, ImageLoadError, UserError, convert_image, crop_to_multiple, downsample, number,
                   pick_device, run_main)
from video import VIDEO_EXTENSIONS, super_resolve_video

DEFAULT_OUTPUT_DIR = 'results'
MIN_INPUT_SIZE = 8  # smaller inputs are mostly padding for the 9x9 kernels: a thumbnail given by mistake


# ----------------------------------------------------------------------------------------------------------------
# Images: keep what the user gave (alpha, grayscale, 16 bits, ICC profile)

@torch.inference_mode()
def super_resolve_image(upscaler, loaded, bits=None, keep_alpha=True, on_retry=None, progress=None):
    """images.LoadedImage -> PIL image s times larger, of the input's kind: 'RGB' / 'RGBA', 'L' / 'LA' for
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
# The tutorial's comparison grid

def visualize_sr(img, halve=False, srresnet_checkpoint=DEFAULT_MODEL, srgan_checkpoint=None, save_path=None,
                 device='auto', scale=None, real=False):
    """The tutorial's 2x2 grid: Bicubic / SRResNet / SRGAN / Original HR.

    img: an image path or a PIL image, the HR. It is downsampled by the models' scale with Pillow bicubic (the LR
    every panel starts from), then upsampled with bicubic and super-resolved by each model. halve: halve the HR
    first (Lanczos), as the tutorial did for large images. srresnet_checkpoint, srgan_checkpoint: checkpoint paths
    (from train_srresnet.py / train_srgan.py), inference.Upscalers (to choose tiles or precision, or to load an
    original-tutorial checkpoint with allow_unsafe_pickle, or to run one with self_ensemble: its panel's label then
    says so), or None to leave that panel saying so. scale: 2, 4 or 8 (an int; an InputError for anything else), the
    shipped SRResNet of that scale when srresnet_checkpoint is left as it is, and a CheckpointError for a checkpoint
    of another scale (None: the checkpoints' own scale, x4 without any). real: the SRResNet panel is the shipped x4
    for real inputs (weights/srresnet_x4_real.pt; README, Real photos and video) when srresnet_checkpoint is left as
    it is, and is labelled "SRResNet for real inputs" either way.
    Returns the grid as a PIL RGB image of (2 W + 3 m) x (2 H + 3 m) pixels (W x H: the HR, trimmed to a multiple
    of the scale; m: the label margin); saves it to save_path when given (replaced if it exists; an OutputError if it
    is the image or a checkpoint, or not an image format). Needs no display."""
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Integral)
                              or scale not in inference.SCALES):
        raise InputError(f'scale={scale!r}: pass one of {", ".join(map(str, inference.SCALES))} (an int), or None for '
                         f'the checkpoints\' own scale')
    if real and scale not in (None, *inference.REAL_SCALES):
        raise InputError(f'real=True with scale={scale}: the real-input model upscales '
                         f'x{", x".join(map(str, inference.REAL_SCALES))} only')
    if save_path is not None:  # never over the image or a checkpoint it reads; a save_path given may be replaced
        reads = [p for p in (img, srresnet_checkpoint, srgan_checkpoint) if isinstance(p, (str, os.PathLike))]
        OutputPlan(reads=reads).file(save_path, 'save_path', formats=IMAGE_EXTENSIONS, if_exists='replace')
    name = img if isinstance(img, (str, os.PathLike)) else 'image'
    hr_img = load_image(img) if isinstance(img, (str, os.PathLike)) else img.convert('RGB')
    if halve:
        hr_img = hr_img.resize((hr_img.width // 2, hr_img.height // 2), Image.LANCZOS)
    if srresnet_checkpoint is DEFAULT_MODEL and (scale is not None or real):  # the shipped model of that scale
        srresnet_checkpoint = inference.shipped_model(scale or 4, real)
    upscalers = grid_upscalers(srresnet_checkpoint, srgan_checkpoint, scale, device, real)
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


def grid_upscalers(srresnet_checkpoint, srgan_checkpoint, scale, device, real=False):
    """visualize_sr's two checkpoints (paths, Upscalers or None) -> {panel label: Upscaler or None}: 'SRResNet' (real:
    'SRResNet for real inputs') and 'SRGAN', each checked to be of `scale` when one is asked for."""
    upscalers = {}
    srresnet_label = 'SRResNet for real inputs' if real else 'SRResNet'
    for name, label, checkpoint in (('srresnet', srresnet_label, srresnet_checkpoint),
                                    ('srgan', 'SRGAN', srgan_checkpoint)):
        given = isinstance(checkpoint, inference.Upscaler)
        upscalers[label] = (checkpoint if given else
                            load_upscaler(checkpoint, pick_device(device)) if checkpoint is not None else None)
        if upscalers[label] is not None:
            named = f'{name}_checkpoint={"an Upscaler" if given else checkpoint}'
            inference.check_scale(upscalers[label].scaling_factor, scale, named, scale_flag='scale=')
    return upscalers


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


def _fitted_font(draw, text, size, max_width):
    """Pillow's built-in scalable font (the same on every machine) at `size`, smaller if `text` would be wider than
    max_width."""
    font = ImageFont.load_default(size=size)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    if right - left > max_width:
        font = ImageFont.load_default(size=max(8, int(size * max_width / (right - left))))
    return font


# ----------------------------------------------------------------------------------------------------------------
# Command line

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
    parser.add_argument('--ext', type=image_extension, default=None,
                        help="output image format in a folder, e.g. '.png' or png [default: the input's]")
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
    if args.real and args.model is not None:
        parser.error('--real picks the shipped real-input model; --model names another: pass one of them')
    if args.real and args.scale not in (None, *inference.REAL_SCALES):
        parser.error(f'--real: the real-input model upscales x{", x".join(map(str, inference.REAL_SCALES))} only; '
                     f'drop --scale {args.scale} or --real')
    return args


def model_path(args):
    """The generator --model, --real and --scale ask for: --model, else the shipped one."""
    return args.model or inference.shipped_model(args.scale or 4, real=args.real)


def image_extension(text):
    """An argparse type: --ext png or .png -> '.png', one of the image formats written."""
    ext = text if text.startswith('.') else f'.{text}'
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise argparse.ArgumentTypeError(f'{ext}: images are written as {", ".join(IMAGE_EXTENSIONS)}')
    return ext


def add_model_arguments(parser):
    """Which model, and how it runs: tiles, precision, self-ensemble."""
    parser.add_argument('--model', default=None,
                        help='generator checkpoint from train_srresnet.py or train_srgan.py '
                             '[default: the shipped weights/srresnet_x<scale>.pt]')
    parser.add_argument('--scale', type=int, choices=inference.SCALES, default=None,
                        help='upscale by 2, 4 or 8: the shipped SRResNet of that scale when no --model is given; '
                             'with --model, the scale it must have [default: x4, or the --model\'s own]')
    parser.add_argument('--real', action='store_true',
                        help='the shipped x4 trained for real inputs, weights/srresnet_x4_real.pt: for JPEG photos '
                             'from the web and video frames, whose compression the default model sharpens along '
                             'with the detail (README, Real photos and video) [default: the clean-LR model]')
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
                             'turned back (EDSR+, Lim et al. 2017): 8 passes of the network, a little closer to the '
                             'HR (README, Self-ensemble) [default: off]')


def main(argv=None):
    args = parse_args(argv)
    inputs, missing, sources = find_inputs(args)
    upscaler, srgan = load_upscalers(args)
    jobs = plan_outputs(inputs, sources, args, upscaler.scaling_factor)  # every output checked before any work
    written, skipped, failed = upscale_all(jobs, missing, args, upscaler, srgan)
    summary = f'{written} written, {skipped} skipped (already there), {len(failed)} failed'
    if failed:
        raise UserError(summary)
    note(summary)


def find_inputs(args):
    """Files, folders (searched recursively for images and videos), glob patterns and the JSON image lists of
    create_data_lists.py -> [(path, folder it was found in or None)], the patterns that matched nothing, and the
    folders and lists read for them. An error when there is nothing to do, or -o names one file for several."""
    extensions = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    found, missing, sources = [], [], []
    for pattern in args.inputs:
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
    if not found and not missing:
        raise InputError(f'no images or videos found in {" ".join(args.inputs)}')
    output = args.output or DEFAULT_OUTPUT_DIR
    if names_one_file(output) and len(found) + len(missing) > 1:
        raise OutputError(f'-o {output} names one file but {len(found) + len(missing)} inputs were given; pass a '
                          f'folder')
    return found, missing, sources


def load_upscalers(args):
    """--model (and --srgan with --grid) -> (Upscaler, SRGAN Upscaler or None); a CheckpointError (one line) for a
    model that cannot be loaded or is not of --scale."""
    device = pick_device(args.device)
    settings = dict(device=device, precision=args.precision, tile=args.tile, tile_overlap=args.tile_overlap,
                    allow_unsafe_pickle=args.unsafe_pickle)
    upscaler = load_upscaler(model_path(args), **settings)
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


def plan_outputs(inputs, sources, args, scale):
    """[(input, folder it was found in)] -> [(input, output, or None for an existing output to skip)], every output
    planned (outputs.OutputPlan) before any work: never an input, a data list or a model (even with --overwrite),
    never two inputs on one output, never inside an input folder (`sources`: the folders and lists searched), a
    format known before writing, an existing one skipped unless --overwrite. -o is one file or a folder."""
    models = [model_path(args), args.srgan]
    lists, folders = [p for p in sources if not p.is_dir()], [p for p in sources if p.is_dir()]
    plan = OutputPlan(reads=[path for path, _ in inputs] + lists + models, read_folders=folders,
                      overwrite=args.overwrite)
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


def output_path(in_path, folder, output, suffix, ext, video):
    """Where one input's result goes in the output folder: output/<subfolders>/<stem><suffix><ext>, keeping the
    layout below a folder given as input. video: the result is a video, which keeps the input's extension."""
    subfolder = in_path.parent.relative_to(folder) if folder is not None else Path()
    extension = in_path.suffix if video else ext or in_path.suffix
    if not video and extension.lower() not in IMAGE_EXTENSIONS:
        extension = '.png'  # an input named without an image extension, or of one not written (.gif)
    return Path(output) / subfolder / f'{in_path.stem}{suffix}{extension}'


def names_one_file(output):
    """True when -o names one output file: an existing file, or a name with an extension that is not a folder."""
    return os.path.isfile(output) or (bool(Path(output).suffix) and not os.path.isdir(output))  # no OSError


def upscale_all(jobs, missing, args, upscaler, srgan):
    """Upscale each (input, output) planned (output None: skipped) -> (written, skipped, failed: one line each, the
    patterns in `missing` first): a bad file is reported and passed over. On Ctrl-C, says what was done and stops."""
    failed = [f'{pattern}: no such file or folder' for pattern in missing]
    for message in failed:
        note(f'error: {message}')
    written, skipped = 0, sum(out_path is None for _, out_path in jobs)
    try:
        for in_path, out_path in tqdm(jobs, unit='file', desc='super-resolving', disable=len(jobs) < 2):
            if out_path is None:
                continue
            try:
                if args.grid:
                    visualize_sr(in_path, args.halve, upscaler, srgan, out_path, real=args.real)
                elif in_path.suffix.lower() in VIDEO_EXTENSIONS:
                    super_resolve_video(upscaler, in_path, out_path, args.batch_size, note)
                else:  # one image: the file bar is off, so a large one shows its tiles instead
                    super_resolve_file(upscaler, in_path, out_path, note, progress=len(jobs) < 2)
            except (ImageLoadError, InputError) as e:
                note(f'error: {e}')
                failed.append(str(e))
                continue
            note(f'wrote {out_path}')
            written += 1
    except KeyboardInterrupt:  # the file being written is not left half-written (atomic writes); run_main says stopped
        not_done = len(jobs) - written - skipped - (len(failed) - len(missing))
        note(f'{written} written, {skipped} skipped, {len(failed)} failed, {not_done} not done; the same command goes '
             f'on from there (it skips what exists)')
        raise
    return written, skipped, failed


def note(message):
    """A line to stderr that does not break a progress bar."""
    tqdm.write(message, file=sys.stderr)


if __name__ == '__main__':
    gc.enable()
    run_main(main)

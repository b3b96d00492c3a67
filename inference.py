"""
Inference: a trained generator loaded for inference and run over images of any size in bounded memory. eval.py,
super_resolve.py and the trainers' validation all upscale through Upscaler, so they share one tiling routine, one
tile default, and one out-of-memory fallback.

    upscaler = load_upscaler('weights/srresnet_x4.pt')
    sr_img = upscaler.upscale(lr_img)   # (3, h, w) ImageNet-normalised -> (3, 4h, 4w) in [-1, 1], on the CPU

Tiles: the LR image goes through the network in overlapping tiles that are cross-faded on a CPU canvas, so memory
is bounded by the tile, not the image; on out-of-memory the tile is halved and the image tried again.

Self-ensemble (EDSR+, Lim et al. 2017; off unless asked for): every batch the model sees, a whole image, a tile or
video frames, goes through it 8 times, once per flip / rotation (DIHEDRAL), each output is turned back and the 8
are averaged (README, Self-ensemble).

    upscaler = dataclasses.replace(load_upscaler(), self_ensemble=True)
"""

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

import speedups
from checkpoints import CheckpointError, generator_of, load_checkpoint
from models import SRResNet
from utils import autocast_dtype

DEFAULT_TILE = 512  # LR tile side: photos up to 512x512 go through whole (no overlap work), larger in bounded memory
DEFAULT_TILE_OVERLAP = 24  # LR pixels shared by neighbouring tiles: enough for no seam to show, and cheap
# The smallest tile and overlap accepted (where halving the tile after out-of-memory stops too): below them the
# output differs visibly from the untiled one (README, Large images)
MIN_TILE = 32
MIN_TILE_OVERLAP = 16
DEFAULT_MODEL = Path(__file__).resolve().parent / 'weights' / 'srresnet_x4.pt'  # the SRResNet shipped with the repo
SCALES = (2, 4, 8)  # a shipped SRResNet for each, weights/srresnet_x<scale>.pt
REAL_SCALES = (4,)  # and one trained for real inputs (JPEG, video, noise; README, Real photos and video) at x4
# The 8 symmetries of the square (the dihedral group D4), as (quarter turns, then transposed?): the identity, the
# rotations by 90, 180 and 270 degrees, and the transposes of those four (which are the two flips and the two
# diagonal reflections). The self-ensemble's inputs.
DIHEDRAL = tuple((turns, transposed) for transposed in (False, True) for turns in range(4))


def shipped_model(scale=4, real=False):
    """The path of the SRResNet shipped for `scale` (2, 4 or 8); real: the one trained on degraded LR (blur, noise,
    resizing, JPEG) for compressed photos and video frames, weights/srresnet_x<scale>_real.pt (x4 only)."""
    if real:
        return DEFAULT_MODEL.with_name(f'srresnet_x{scale}_real.pt')
    return DEFAULT_MODEL if scale == 4 else DEFAULT_MODEL.with_name(f'srresnet_x{scale}.pt')


def load_generator(path, device='cpu', allow_unsafe_pickle=False, checkpoint=None):
    """Any SRResNet/SRGAN checkpoint -> an SRResNet (the Generator's network) in eval mode on `device`, with the
    architecture and scale read from the checkpoint. checkpoint: the file's contents when already loaded."""
    if checkpoint is None:
        checkpoint = load_checkpoint(path, allow_unsafe_pickle)
    config, state_dict = generator_of(checkpoint, path)
    try:
        model = SRResNet(**config)
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f'{path}: weights do not fit SRResNet({config}): {str(e).splitlines()[0]}; pass a '
                              f'checkpoint written by train_srresnet.py or train_srgan.py') from None
    return model.to(device).eval()


def tiling(tile, tile_overlap=None):
    """--tile and --tile-overlap -> (tile or None for whole images, overlap). tile_overlap None: the default, or half
    the tile when that is less. A ValueError in one line for values whose output would show seams (see MIN_TILE)."""
    if tile == 0:
        return None, DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap
    if tile < MIN_TILE:
        raise ValueError(f'--tile {tile} is too small: tiles under {MIN_TILE} LR pixels leave visible seams; use '
                         f'--tile {MIN_TILE} or more, or 0 for whole images')
    if tile_overlap is None:
        return tile, min(DEFAULT_TILE_OVERLAP, tile // 2)
    if not MIN_TILE_OVERLAP <= tile_overlap <= tile // 2:
        raise ValueError(f'--tile-overlap {tile_overlap} must be between {MIN_TILE_OVERLAP} (less leaves visible '
                         f'seams) and half of --tile {tile} ({tile // 2})')
    return tile, tile_overlap


def pick_amp_dtype(device, precision='auto'):
    """precision 'auto': bf16 where the hardware runs it natively, else fp32 (None); 'fp32': None;
    'half': bf16 or fp16 even where it is not the default (fp16 on older GPUs and MPS; bf16 on any CPU)."""
    native = autocast_dtype(device)
    if precision == 'fp32':
        return None
    if precision == 'half':
        return native or torch.bfloat16
    return native if native == torch.bfloat16 else None


def load_upscaler(path=None, device='cpu', precision='auto', tile=DEFAULT_TILE, tile_overlap=DEFAULT_TILE_OVERLAP,
                  allow_unsafe_pickle=False):
    """A checkpoint from train_srresnet.py or train_srgan.py (None: the shipped x4 model; shipped_model(scale) for
    another), or an .onnx export of one -> an Upscaler on `device` (see pick_amp_dtype for `precision`; an .onnx
    runs in the precision it was exported in)."""
    path = DEFAULT_MODEL if path is None else Path(path)
    shipped = {shipped_model(s): f'x{s}' for s in SCALES} | {shipped_model(s, real=True): f'real-input x{s}'
                                                               for s in REAL_SCALES}
    if path in shipped and not path.is_file():
        raise CheckpointError(f'no shipped {shipped[path]} model yet ({path} is missing); pass --model PATH, '
                              f'a checkpoint written by train_srresnet.py or train_srgan.py')
    if path.suffix.lower() == '.onnx':  # an exported model, run by onnxruntime in its own precision
        return Upscaler.for_onnx(path, device, tile, tile_overlap)
    model = load_generator(path, device, allow_unsafe_pickle)
    return Upscaler.for_model(model, tile, tile_overlap, pick_amp_dtype(device, precision))


def check_scale(model_scale, scale, model, scale_flag='--scale ', other=''):
    """A CheckpointError when a scale was asked for (not None) and the model upscales by another. model: the model
    as the user named it ('--model x.pt', '--srgan g.pt', 'the shipped model'); scale_flag: how the scale is asked
    for, before its value ('--scale ', or 'scale=' from Python); other: what else the user may do, for the message."""
    if scale is not None and model_scale != scale:
        raise CheckpointError(f'{model} upscales x{model_scale}, not {scale_flag}{scale}: pass {scale_flag}'
                              f'{model_scale}, or a model of x{scale}{other}')


def dihedral(imgs, turns, transposed):
    """(..., H, W) -> the images turned `turns` quarter turns counter-clockwise, then transposed when `transposed`:
    (..., H, W) or (..., W, H). Exact: pixels are moved, never interpolated."""
    imgs = imgs.rot90(turns, (-2, -1))
    return imgs.transpose(-2, -1) if transposed else imgs


def undo_dihedral(imgs, turns, transposed):
    """The inverse of dihedral(imgs, turns, transposed): transposed back, then turned back."""
    imgs = imgs.transpose(-2, -1) if transposed else imgs
    return imgs.rot90(-turns, (-2, -1))


@dataclasses.dataclass
class Upscaler:
    """A generator ready for inference and how to run it: the values that travel together through every
    inference call."""
    model: nn.Module  # takes (N, 3, h, w) ImageNet-normalised LR, returns (N, 3, h * s, w * s) in [-1, 1]
    scaling_factor: int
    tile: int | None = DEFAULT_TILE  # LR tile side; None: the whole image at once
    tile_overlap: int = DEFAULT_TILE_OVERLAP  # LR pixels shared by neighbouring tiles, where they are cross-faded
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    self_ensemble: bool = False  # True: each output the mean over the 8 DIHEDRAL transforms of its input (8 passes)

    @classmethod
    def for_model(cls, model, tile=DEFAULT_TILE, tile_overlap=DEFAULT_TILE_OVERLAP, amp_dtype=None):
        """An SRResNet (left untouched) -> an Upscaler of its inference rewrite (speedups.for_inference)."""
        return cls(speedups.for_inference(model), model.scaling_factor, tile, tile_overlap, amp_dtype)

    @classmethod
    def for_onnx(cls, path, device='cpu', tile=DEFAULT_TILE, tile_overlap=DEFAULT_TILE_OVERLAP):
        """An .onnx export of this repo (deploy.py), or one that fits it -> an Upscaler running it with onnxruntime
        (deploy.OnnxGenerator, the one reader of .onnx files: a model that does not fit is a CheckpointError)."""
        import deploy  # only .onnx models need it (and onnxruntime)
        model = deploy.OnnxGenerator(path, device)
        return cls(model, model.scaling_factor, tile, tile_overlap)

    @property
    def device(self):
        parameter = next(self.model.parameters(), None)  # an OnnxGenerator has none: it takes CPU tensors
        return torch.device('cpu') if parameter is None else parameter.device

    @torch.inference_mode()
    def forward(self, lr_imgs):
        """(N, 3, h, w) ImageNet-normalised, on any device -> (N, 3, h * s, w * s) in [-1, 1], float32, on the CPU.
        With self_ensemble, the mean of the 8 outputs of the input's flips and rotations, each transformed back
        (the 8 passes run one after another: the memory of one pass, and one output-sized sum)."""
        lr_imgs = lr_imgs.to(self.device, non_blocking=True)
        if not self.self_ensemble:
            return self._model_pass(lr_imgs)
        sr_imgs = torch.zeros(*lr_imgs.shape[:2], *(side * self.scaling_factor for side in lr_imgs.shape[2:]))
        for turns, transposed in DIHEDRAL:
            sr_imgs += undo_dihedral(self._model_pass(dihedral(lr_imgs, turns, transposed)), turns, transposed)
        return sr_imgs.div_(len(DIHEDRAL))  # (N, 3, h * s, w * s), on the CPU

    def _model_pass(self, lr_imgs):
        """One pass of the model: (N, 3, h, w) on its device -> (N, 3, h * s, w * s) in [-1, 1], float32, CPU."""
        device = lr_imgs.device
        if device.type != 'mps':
            lr_imgs = lr_imgs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.model(lr_imgs).float().cpu()

    def upscale(self, lr_img, on_retry=None, on_tile=None):
        """One image, tile by tile (see tiled), halving the tile after an out-of-memory error until MIN_TILE.
        lr_img: (3, h, w) ImageNet-normalised -> (3, h * s, w * s) in [-1, 1], float32, on the CPU.
        on_retry(message): told when the tile is halved. on_tile: see tiled."""
        upscaler = self
        while True:
            try:
                return upscaler.tiled(lr_img, on_tile)
            except RuntimeError as e:  # torch.OutOfMemoryError is one
                current = upscaler.tile or max(lr_img.shape[1:])  # None: the whole image was one tile
                if not is_out_of_memory(e) or current // 2 < MIN_TILE:
                    raise
                upscaler = dataclasses.replace(upscaler, tile=current // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if on_retry is not None:
                    on_retry(f'out of memory; trying again with --tile {upscaler.tile}')

    @torch.inference_mode()
    def tiled(self, lr_img, on_tile=None):
        """Super-resolve one image tile by tile and blend the tiles, so memory is bounded by the tile size.
        lr_img: (3, h, w) ImageNet-normalised -> (3, h * s, w * s) in [-1, 1], float32, on the CPU: the full-size
        canvas never lives on the accelerator. on_tile(done, total): called with the tiles done and the tiles in
        all, before the first tile and after each one (for a progress bar)."""
        s, tile = self.scaling_factor, self.tile
        _, h, w = lr_img.shape
        report = on_tile or (lambda done, total: None)
        if tile is None or (h <= tile and w <= tile):
            report(0, 1)
            sr_img = self.forward(lr_img[None])[0]
            report(1, 1)
            return sr_img

        overlap = min(self.tile_overlap, tile // 2)
        (tops, th), (lefts, tw) = _spread(h, tile, overlap), _spread(w, tile, overlap)
        sr_img = torch.zeros(3, h * s, w * s)  # the canvas (CPU)
        weight = torch.zeros(1, h * s, w * s)
        tiles = [(top, left) for top in tops for left in lefts]
        report(0, len(tiles))
        for done, (top, left) in enumerate(tiles, 1):
            out = self.forward(lr_img[None, :, top:top + th, left:left + tw])[0]  # (3, th * s, tw * s)
            # cross-fade only where a neighbour overlaps; image borders keep full weight
            wy = _blend_ramp(th * s, overlap * s if top > 0 else 0, overlap * s if top + th < h else 0)
            wx = _blend_ramp(tw * s, overlap * s if left > 0 else 0, overlap * s if left + tw < w else 0)
            mask = wy[:, None] * wx[None, :]  # (th * s, tw * s)
            sr_img[:, top * s:(top + th) * s, left * s:(left + tw) * s] += out * mask
            weight[:, top * s:(top + th) * s, left * s:(left + tw) * s] += mask
            report(done, len(tiles))
        return sr_img.div_(weight)  # in place: no second full-size canvas


def _spread(size, tile, overlap):
    """The fewest tiles of side <= `tile` that cover [0, size) with neighbours sharing >= `overlap` pixels, made
    equal and evenly spaced (a last tile pushed flush with the edge would redo up to a whole tile).
    -> (tile starts, tile side)."""
    if size <= tile:
        return [0], size
    n = math.ceil((size - overlap) / (tile - overlap))
    side = math.ceil((size + (n - 1) * overlap) / n)  # <= tile
    return [i * (size - side) // (n - 1) for i in range(n)], side


def _blend_ramp(length, overlap_left, overlap_right):
    """1-D weights of one tile: 1 in the middle; over each overlap, 0 for its outer quarter (next to the tile's
    edge, where zero padding spoils the output: SRResNet sees ~39 LR pixels each way), rising linearly over its
    middle half, 1 for its inner quarter. Two neighbours' ramps over the same overlap sum to 1. Leaving out the
    outer quarter keeps the padding's error out of the blend."""
    def ramp(n):  # (n,) rising from 0 to 1 over the middle half of n pixels
        return ((torch.arange(n) + 0.5 - n / 4) / (n / 2)).clamp(0, 1)

    w = torch.ones(length)
    if overlap_left > 0:
        w[:overlap_left] = ramp(overlap_left)
    if overlap_right > 0:
        w[length - overlap_right:] = torch.minimum(w[length - overlap_right:], ramp(overlap_right).flip(0))
    return w


def is_out_of_memory(error):
    # CUDA raises torch.OutOfMemoryError; the CPU allocator and MPS raise a RuntimeError saying so
    return isinstance(error, torch.OutOfMemoryError) or any(
        text in str(error) for text in ("can't allocate memory", 'out of memory'))

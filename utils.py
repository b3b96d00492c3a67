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

import dataclasses
import math
import os
import pickle
import random
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
    """

    def __init__(self, split, crop_size, scaling_factor, lr_img_type, hr_img_type, blur_sigma=0.0):
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
    x = img1.double().reshape(-1, 1, *img1.shape[-2:])  # (N, 1, H, W)
    y = img2.double().reshape(-1, 1, *img2.shape[-2:])
    window = _gaussian_window(window_size, sigma, device=x.device)[None, None]  # (1, 1, 11, 11)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    sigma_xx = F.conv2d(x * x, window) - mu_x ** 2
    sigma_yy = F.conv2d(y * y, window) - mu_y ** 2
    sigma_xy = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sigma_xx + sigma_yy + c2))
    ssim = ssim_map.flatten(1).mean(1)  # (N,)
    return ssim.reshape(img1.shape[:-2])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: one format, state_dicts only, written atomically, read with weights_only=True

class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what to do."""


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


def load_checkpoint(path, allow_unsafe_pickle=False, map_location='cpu'):
    """Read a checkpoint with torch.load(weights_only=True), which cannot run code from the file.

    The original tutorial saved whole pickled model objects; unpickling those can execute arbitrary code, so they
    are refused unless `allow_unsafe_pickle` is set (only for files you trust), and converted to this repo's format
    on the fly (see convert_tutorial_checkpoint)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such checkpoint file')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not allow_unsafe_pickle:
            raise CheckpointError(
                f'{path} holds pickled Python objects (as the original tutorial saved them), and loading it could '
                f'run code from the file. If you trust it, pass --unsafe-pickle once to convert it, or run '
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
    sys.modules.setdefault('models', models)
    old = torch.load(path, map_location=map_location, weights_only=False)
    if 'generator' in old:  # SRGAN checkpoint
        generator = old['generator']
        state_dict = {k.removeprefix('net.'): v for k, v in generator.state_dict().items()}
        net = generator.net
    elif 'model' in old:
        net = old['model']
        state_dict = net.state_dict()
    else:
        raise CheckpointError(f'{path}: not a tutorial checkpoint (no "model" or "generator" entry)')
    return {'kind': 'srresnet', 'model': state_dict, 'model_config': _model_config_from_state_dict(state_dict),
            'iteration': None, 'config': {'converted_from': os.path.basename(path), 'epoch': old.get('epoch')}}


def _model_config_from_state_dict(state_dict):
    """Recover SRResNet's constructor arguments from its weights."""
    n_blocks = len({k.split('.')[1] for k in state_dict if k.startswith('residual_blocks.')})
    n_subpixel = len({k.split('.')[1] for k in state_dict if k.startswith('subpixel_convolutional_blocks.')})
    first, small = state_dict['conv_block1.conv_block.0.weight'], state_dict['conv_block2.conv_block.0.weight']
    return {'large_kernel_size': first.shape[-1], 'small_kernel_size': small.shape[-1],
            'n_channels': first.shape[0], 'n_blocks': n_blocks, 'scaling_factor': 2 ** n_subpixel}


def generator_state_dict(checkpoint):
    """The SRResNet-layout state_dict (no 'net.' prefix) of the generator in any of this repo's checkpoints:
    train_srresnet.py's ({'model': ...}) or train_srgan.py's ({'generator': ...})."""
    for key in ('model', 'generator'):
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
    """1-D weights: rising linearly over the left overlap, 1 in the middle, falling over the right overlap."""
    w = torch.ones(length, device=device)
    if overlap_left > 0:
        w[:overlap_left] = (torch.arange(overlap_left, device=device) + 0.5) / overlap_left
    if overlap_right > 0:
        w[length - overlap_right:] = torch.minimum(w[length - overlap_right:],
                                                   (torch.arange(overlap_right, 0, -1, device=device) - 0.5) / overlap_right)
    return w


@torch.inference_mode()
def super_resolve_tiled(model, lr_img, scaling_factor, tile=None, tile_overlap=16, amp_dtype=None):
    """Super-resolve one image tile by tile and blend the tiles, so memory is bounded by the tile size.

    model: SRResNet-like, takes ImageNet-normalised LR, returns [-1, 1]; lr_img: (3, h, w) ImageNet-normalised,
    on the CPU or the model's device. tile: LR tile side (None: the whole image at once); tile_overlap: LR pixels
    shared by neighbouring tiles, where the outputs are cross-faded linearly.
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

    if tile is None or (h <= tile and w <= tile):
        return forward(lr_img)

    tile_overlap = min(tile_overlap, tile // 2)
    step = tile - tile_overlap

    def starts(size):  # tile origins covering [0, size), the last one flush with the edge
        if size <= tile:
            return [0]
        origins = list(range(0, size - tile, step))
        return origins + [size - tile]

    sr = torch.zeros(3, h * s, w * s)  # the canvas (CPU)
    weight = torch.zeros(1, h * s, w * s)
    for top in starts(h):
        for left in starts(w):
            th, tw = min(tile, h - top), min(tile, w - left)
            out = forward(lr_img[:, top:top + th, left:left + tw])  # (3, th * s, tw * s)
            # cross-fade only where a neighbour overlaps; image borders keep full weight
            wy = _blend_ramp(th * s, (tile_overlap * s if top > 0 else 0), (tile_overlap * s if top + th < h else 0), 'cpu')
            wx = _blend_ramp(tw * s, (tile_overlap * s if left > 0 else 0), (tile_overlap * s if left + tw < w else 0), 'cpu')
            mask = wy[:, None] * wx[None, :]  # (th * s, tw * s)
            sr[:, top * s:(top + th) * s, left * s:(left + tw) * s] += out * mask
            weight[:, top * s:(top + th) * s, left * s:(left + tw) * s] += mask
    return sr / weight


# ----------------------------------------------------------------------------------------------------------------
# Hardware

def pick_device(name='auto'):
    """'auto' -> CUDA if available, else Apple MPS, else CPU; or a device name as torch accepts it."""
    if name != 'auto':
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device('cuda')
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return torch.device('mps')
    return torch.device('cpu')


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


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description="Convert an original-tutorial checkpoint (pickled model objects) "
                                                 "into this repo's weights-only format. Unpickling runs code from "
                                                 "the file: only convert checkpoints you trust.")
    parser.add_argument('command', choices=['convert'])
    parser.add_argument('input', help="the tutorial's checkpoint_srresnet.pth.tar or checkpoint_srgan.pth.tar")
    parser.add_argument('output', help='where to write the converted checkpoint (.pt)')
    args = parser.parse_args()
    save_checkpoint(convert_tutorial_checkpoint(args.input), args.output)
    print(f'wrote {args.output}')

"""
The evaluation protocol, whole: what an HR test image becomes, how its LR image is made, how the bicubic baseline
upscales it, and how an SR image is compared with the HR (the channel, the border, 8-bit rounding, PSNR and SSIM as
MATLAB computes them). eval.py and the trainers' validation measure through it alike.

    PROTOCOLS                    each protocol's settings: the crop, the LR kernel, the border, how it measures
    make_test_pair(img, s)       an HR test image (PIL) -> (LR, HR) uint8 tensors, as the protocol makes them
    bicubic_upscale(lr_img, s)   the bicubic baseline, with the kernel that made the LR
    evaluate_image(sr, hr, s)    PSNR and SSIM of SR against HR: Y, the border, PSNR, SSIM

Why protocols matter: the same SR image scores differently depending on how the LR was made (Pillow vs MATLAB
bicubic), which channel is measured (RGB vs Y), the border, 8-bit rounding of SR, and the SSIM window (7x7 uniform
vs 11x11 Gaussian); every number eval.py prints names its protocol. The torch code runs batched on any device.
"""

import dataclasses
import math

import numpy as np
import torch
from PIL import Image

from utils import convert_image, crop_to_multiple, downsample

LR_KERNELS = {'matlab': "MATLAB's imresize bicubic (antialiased)", 'pillow': "Pillow's bicubic (antialiased)"}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol's settings, each a choice that moves the numbers."""
    crop: str  # the HR cropped to a multiple of the scale: 'top-left' (MATLAB's modcrop) or 'centre'
    lr_kernel: str  # how LR images are made from HR ones and bicubic upscales them, unless asked otherwise
    border: int | None  # pixels removed from every side before measuring; None: as many as the scale
    measure: str  # 'matlab': 8-bit Y, PSNR and Gaussian SSIM as MATLAB; 'skimage': float Y, scikit-image's defaults
    description: str  # what it measures, printed above eval.py's table

    def border_at(self, scaling_factor):
        """Pixels removed from every side at this scale."""
        return scaling_factor if self.border is None else self.border

    def min_side(self, scaling_factor):
        """The smallest image side measurable at this scale: an 11-px SSIM window fits inside the border after the
        crop."""
        return -(-(2 * self.border_at(scaling_factor) + 11) // scaling_factor) * scaling_factor


PROTOCOLS = {
    # the literature's MATLAB scripts, which the paper's Table 2 is compared against
    'paper': Protocol(crop='top-left', lr_kernel='matlab', border=None, measure='matlab', description=(
        'Y (BT.601, 16-235, rounded to 8 bits as MATLAB rgb2ycbcr; single-channel files measured on their gray '
        'values), a border of `scale` px removed, SR clamped and rounded to 8 bits, SSIM 11x11 Gaussian sigma 1.5 '
        '(MATLAB ssim_index)')),
    # sgrvinod's eval.py, to compare with the tutorial's README
    'tutorial': Protocol(crop='centre', lr_kernel='pillow', border=4, measure='skimage', description=(
        "sgrvinod's eval.py: Y (BT.601, 16-235, float), a 4-px border removed whatever the scale, float SR (not "
        'clamped or rounded), scikit-image PSNR and SSIM defaults (7x7 uniform window)')),
}


def protocol_named(name):
    """PROTOCOLS[name], or a ValueError naming the protocols there are."""
    if name not in PROTOCOLS:
        raise ValueError(f'protocol must be one of {sorted(PROTOCOLS)}, not {name!r}')
    return PROTOCOLS[name]


# What a test image becomes: (LR, HR), and the bicubic baseline

def to_uint8_tensor(img):
    """PIL RGB -> (3, H, W) uint8."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def make_test_pair(img, scaling_factor, protocol='paper', lr_kernel=None):
    """A PIL RGB test image -> (lr_img (3, H / s, W / s), hr_img (3, H, W)), uint8: the HR cropped to a multiple of
    the scale as the protocol crops it, the LR made from it by lr_kernel (None: the protocol's)."""
    settings = protocol_named(protocol)
    hr_img = crop_to_multiple(img, scaling_factor, centered=settings.crop == 'centre')
    return make_lr(hr_img, scaling_factor, lr_kernel or settings.lr_kernel), to_uint8_tensor(hr_img)


def make_lr(hr_img, scaling_factor, lr_kernel):
    """PIL HR image (sides multiples of the scale) -> LR image, (3, H / s, W / s) uint8."""
    if lr_kernel == 'pillow':
        return to_uint8_tensor(downsample(hr_img, scaling_factor))
    lr_img = imresize(to_uint8_tensor(hr_img).double(), 1 / scaling_factor)  # (3, h, w), 0-255, float
    return lr_img.clamp(0, 255).round().to(torch.uint8)  # stored as an 8-bit image, as MATLAB does for uint8


def bicubic_upscale(lr_img, scaling_factor, lr_kernel):
    """The bicubic baseline with the kernel that made the LR: (3, h, w) uint8 -> (3, h * s, w * s) in [-1, 1]."""
    if lr_kernel == 'pillow':
        lr_pil = Image.fromarray(lr_img.permute(1, 2, 0).numpy())
        sr_img = to_uint8_tensor(lr_pil.resize((lr_pil.width * scaling_factor, lr_pil.height * scaling_factor),
                                               Image.BICUBIC)).double()
    else:
        sr_img = imresize(lr_img.double(), scaling_factor).clamp(0, 255).round()
    return convert_image(sr_img, '[0, 255]', '[-1, 1]')


# What is compared: PSNR and SSIM of the Y channel

def evaluate_image(sr_imgs, hr_imgs, scaling_factor, protocol='paper', gray=False):
    """PSNR (dB) and SSIM of SR images against their HR images under a protocol (PROTOCOLS).

    sr_imgs, hr_imgs: (3, H, W) or (N, 3, H, W) in [-1, 1] (SR straight from the model; values outside the range
    are clamped by 'paper', kept by 'tutorial'). gray: the HR file was single-channel ('paper' then measures the
    gray values themselves, 0-255, as MATLAB scripts do when they skip rgb2ycbcr).
    Returns (psnr, ssim): float64 tensors of the batch shape (0-dim for one image)."""
    settings = protocol_named(protocol)
    b = settings.border_at(scaling_factor)
    if settings.measure == 'matlab':
        sr_y = y_channel_8bit(sr_imgs, gray)[..., b:-b, b:-b]  # (..., H - 2b, W - 2b)
        hr_y = y_channel_8bit(hr_imgs, gray)[..., b:-b, b:-b]
        return calculate_psnr(sr_y, hr_y), calculate_ssim(sr_y, hr_y)
    sr_y = convert_image(sr_imgs.float(), '[-1, 1]', 'y-channel')[..., b:-b, b:-b]  # float Y, as the tutorial
    hr_y = convert_image(hr_imgs.float(), '[-1, 1]', 'y-channel')[..., b:-b, b:-b]
    return skimage_psnr_ssim(sr_y, hr_y)


def skimage_psnr_ssim(sr_y, hr_y):
    """scikit-image's peak_signal_noise_ratio and structural_similarity with their defaults (a 7x7 uniform window,
    sample covariance), on the 0-255 scale: (H, W) or (N, H, W) tensors -> float64 tensors of the batch shape."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    batch_shape = sr_y.shape[:-2]
    sr_y, hr_y = sr_y.reshape(-1, *sr_y.shape[-2:]).cpu().numpy(), hr_y.reshape(-1, *hr_y.shape[-2:]).cpu().numpy()
    psnr = [peak_signal_noise_ratio(hr, sr, data_range=255.) for hr, sr in zip(hr_y, sr_y)]
    ssim = [structural_similarity(hr, sr, data_range=255.) for hr, sr in zip(hr_y, sr_y)]
    return (torch.tensor(psnr, dtype=torch.float64).reshape(batch_shape),
            torch.tensor(ssim, dtype=torch.float64).reshape(batch_shape))


def y_channel_8bit(imgs, gray=False):
    """What MATLAB's rgb2ycbcr gives for a uint8 image: (3, H, W) or (N, 3, H, W) in [-1, 1] -> clamped and rounded
    to 8 bits (as when saved) -> BT.601 Y in [16, 235], rounded -> float64 (H, W) or (N, H, W).
    gray: the image came from a single-channel file: its gray values themselves, 0-255 (luma on the full range)."""
    imgs = convert_image(imgs.double(), '[-1, 1]', '[0, 255]').clamp(0, 255).round()  # an 8-bit image
    y = convert_image(imgs, '[0, 255]', 'y-channel')  # in [16, 235]
    if gray:
        y = (y - 16) * (255 / 219)  # the weights sum to 219: R = G = B = v gives v
    return y.round()


# PSNR and SSIM of Y channels (on the 0-255 scale; the caller removes the border)

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
        # (sums of shifted copies: faster on the CPU than a float64 conv2d with the 11x11 window)
        width, height = z.shape[-1] - window_size + 1, z.shape[-2] - window_size + 1
        rows = sum(g[k] * z[..., k:k + width] for k in range(window_size))
        return sum(g[k] * rows[..., k:k + height, :] for k in range(window_size))

    mu_x, mu_y, mean_xx, mean_yy, mean_xy = window_mean(torch.stack([x, y, x * x, y * y, x * y]))
    sigma_xx = mean_xx - mu_x ** 2
    sigma_yy = mean_yy - mu_y ** 2
    sigma_xy = mean_xy - mu_x * mu_y
    ssim_map = (((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2))
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (sigma_xx + sigma_yy + c2)))
    return ssim_map.flatten(-2).mean(-1)  # the batch shape


# MATLAB's bicubic imresize

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
    Two matrix products (one per axis; they commute), in float64 (float32 on MPS): at test-set sizes faster than
    gathering the taps."""
    dtype = torch.float32 if img.device.type == 'mps' else torch.float64

    def matrix(length):  # (length * scale, length)
        return imresize_matrix(length, math.ceil(length * scale), scale, antialias).to(img.device, dtype)

    out = matrix(img.shape[-2]) @ img.to(dtype) @ matrix(img.shape[-1]).T  # (..., H', W')
    return out.to(img.dtype if img.dtype.is_floating_point else torch.float32)

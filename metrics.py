"""
The evaluation protocol: PSNR and SSIM as MATLAB computes them, the Y channel, and MATLAB's bicubic imresize, in
torch so they run batched on any device; and evaluate_image, which measures an SR image under a named protocol.

Why protocols matter: the same SR image scores 0.1-0.3 dB apart depending on how the LR was made (Pillow vs MATLAB
bicubic), which channel is measured (RGB vs Y), the border, 8-bit rounding of SR, and the SSIM window (7x7 uniform
vs 11x11 Gaussian). eval.py and the trainers' validation measure through evaluate_image alike.
"""

import math

import torch

from utils import convert_image

EVAL_PROTOCOLS = {
    'paper': 'Y (BT.601, 16-235, rounded to 8 bits as MATLAB rgb2ycbcr; single-channel files measured on their '
             'gray values), a border of `scale` px removed, SR clamped and rounded to 8 bits, SSIM 11x11 Gaussian '
             'sigma 1.5 (MATLAB ssim_index)',
    'tutorial': "sgrvinod's eval.py: Y (BT.601, 16-235, float), a 4-px border removed whatever the scale, float SR "
                '(not clamped or rounded), scikit-image PSNR and SSIM defaults (7x7 uniform window)',
}


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
        # (sums of shifted copies: several times faster on the CPU than a float64 conv2d with the 11x11 window)
        width, height = z.shape[-1] - window_size + 1, z.shape[-2] - window_size + 1
        rows = sum(g[k] * z[..., k:k + width] for k in range(window_size))
        return sum(g[k] * rows[..., k:k + height, :] for k in range(window_size))

    mu_x, mu_y, mean_xx, mean_yy, mean_xy = window_mean(torch.stack([x, y, x * x, y * y, x * y]))
    sigma_xx = mean_xx - mu_x ** 2
    sigma_yy = mean_yy - mu_y ** 2
    sigma_xy = mean_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sigma_xx + sigma_yy + c2))
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
    Two matrix products (one per axis; they commute), in float64 (float32 on MPS): for test-set sizes much faster
    than gathering the taps."""
    dtype = torch.float32 if img.device.type == 'mps' else torch.float64

    def matrix(length):  # (length * scale, length)
        return imresize_matrix(length, math.ceil(length * scale), scale, antialias).to(img.device, dtype)

    out = matrix(img.shape[-2]) @ img.to(dtype) @ matrix(img.shape[-1]).T  # (..., H', W')
    return out.to(img.dtype if img.dtype.is_floating_point else torch.float32)


def y_channel_8bit(imgs, gray=False):
    """What MATLAB's rgb2ycbcr gives for a uint8 image: (3, H, W) or (N, 3, H, W) in [-1, 1] -> clamped and rounded
    to 8 bits (as when saved) -> BT.601 Y in [16, 235], rounded -> float64 (H, W) or (N, H, W).
    gray: the image came from a single-channel file: its gray values themselves, 0-255 (luma on the full range)."""
    imgs = convert_image(imgs.double(), '[-1, 1]', '[0, 255]').clamp(0, 255).round()  # an 8-bit image
    y = convert_image(imgs, '[0, 255]', 'y-channel')  # in [16, 235]
    if gray:
        y = (y - 16) * (255 / 219)  # the weights sum to 219: R = G = B = v gives v
    return y.round()


def evaluate_image(sr_imgs, hr_imgs, scaling_factor, protocol='paper', gray=False):
    """PSNR (dB) and SSIM of SR images against their HR images under an evaluation protocol (EVAL_PROTOCOLS).

    sr_imgs, hr_imgs: (3, H, W) or (N, 3, H, W) in [-1, 1] (SR straight from the model; values outside the range
    are clamped by 'paper', kept by 'tutorial'). gray: the HR file was single-channel ('paper' then measures the
    gray values themselves, 0-255, as MATLAB scripts do when they skip rgb2ycbcr).
    Returns (psnr, ssim): float64 tensors of the batch shape (0-dim for one image)."""
    if protocol == 'paper':
        s = scaling_factor
        sr_y = y_channel_8bit(sr_imgs, gray)[..., s:-s, s:-s]  # (..., H - 2s, W - 2s)
        hr_y = y_channel_8bit(hr_imgs, gray)[..., s:-s, s:-s]
        return calculate_psnr(sr_y, hr_y), calculate_ssim(sr_y, hr_y)
    if protocol == 'tutorial':
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
        sr_y = convert_image(sr_imgs.float(), '[-1, 1]', 'y-channel')[..., 4:-4, 4:-4].cpu().numpy()
        hr_y = convert_image(hr_imgs.float(), '[-1, 1]', 'y-channel')[..., 4:-4, 4:-4].cpu().numpy()
        batch_shape = sr_y.shape[:-2]
        sr_y, hr_y = sr_y.reshape(-1, *sr_y.shape[-2:]), hr_y.reshape(-1, *hr_y.shape[-2:])
        psnr = [peak_signal_noise_ratio(hr, sr, data_range=255.) for hr, sr in zip(hr_y, sr_y)]
        ssim = [structural_similarity(hr, sr, data_range=255.) for hr, sr in zip(hr_y, sr_y)]
        return (torch.tensor(psnr, dtype=torch.float64).reshape(batch_shape),
                torch.tensor(ssim, dtype=torch.float64).reshape(batch_shape))
    raise ValueError(f'protocol must be one of {sorted(EVAL_PROTOCOLS)}, not {protocol!r}')

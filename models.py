"""
The networks of Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network" (CVPR 2017): SRResNet, the SRGAN Generator and Discriminator, and the truncated VGG19 used for the
perceptual (content) loss.

Class names, constructor parameters and state_dict keys are those of the original tutorial
(sgrvinod/a-PyTorch-Tutorial-to-Super-Resolution), so weights trained with it load with strict=True.

Value ranges (the habit of this repo: every tensor's range is written next to it):
    SRResNet / Generator   in: (N, 3, h, w) LR, ImageNet-normalised  out: (N, 3, h*s, w*s) SR images in [-1, 1]
    Discriminator          in: (N, 3, H, W) images in [-1, 1]        out: (N,) logits
    TruncatedVGG19         in: (N, 3, H, W) ImageNet-normalised     out: (N, C, H/2^(i-1), W/2^(i-1)) features
"""

import functools
import math
import urllib.error

import torch
from torch import nn
import torch.nn.functional as F
import torchvision

# Where an offline user gets the VGG19 weights from (torchvision's URL for VGG19_Weights.IMAGENET1K_V1).
VGG19_WEIGHTS_URL = torchvision.models.VGG19_Weights.IMAGENET1K_V1.url


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, same function) that trains faster on CPUs with one slope for all channels, as
    SRResNet has it: PyTorch's PReLU backward is slow there (~20x a LeakyReLU's in bf16 and channels_last; it was
    ~15% of an SRResNet training step), so this computes the same thing with LeakyReLU's kernels."""

    def forward(self, x):
        if self.num_parameters == 1 and x.device.type == 'cpu' and not torch.compiler.is_compiling():
            if torch.is_autocast_enabled('cpu'):  # as F.prelu under autocast: computed in the autocast dtype
                x = x.to(torch.get_autocast_dtype('cpu'))
            return _SingleSlopePReLU.apply(x, self.weight)
        return super().forward(x)  # per-channel slopes, GPUs (reading the slope would sync), torch.compile


class _SingleSlopePReLU(torch.autograd.Function):
    """y = x if x > 0 else a x, with one slope a (weight, shape (1,)):  dy/dx = 1 if x > 0 else a, and
    dL/da = sum(dL/dy * min(x, 0)). The slope is read as a number for LeakyReLU's kernels (free on a CPU)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.slope, ctx.weight_dtype = weight.to(x.dtype).item(), weight.dtype  # the slope rounded as F.prelu does
        ctx.save_for_backward(x)
        return F.leaky_relu(x, ctx.slope)  # x's dtype and memory format, autocast or not

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.leaky_relu_backward(grad, x, ctx.slope, False)
        if ctx.needs_input_grad[1]:  # summed in x's dtype, as PyTorch's PReLU does under autocast
            grad_weight = x.clamp(max=0).mul_(grad).sum().to(ctx.weight_dtype).reshape(1)  # one temporary, not two
        return grad_x, grad_weight


class ConvolutionalBlock(nn.Module):
    """Convolution, then optional BatchNorm, then optional activation ('prelu', 'leakyrelu' or 'tanh')."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, batch_norm=False, activation=None):
        super().__init__()
        if activation is not None:
            activation = activation.lower()
            if activation not in {'prelu', 'leakyrelu', 'tanh'}:
                raise ValueError(f"activation must be None, 'prelu', 'leakyrelu' or 'tanh', not {activation!r}")

        # 'same' padding for odd kernels: the block changes the size only through its stride
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation == 'prelu':
            layers.append(PReLU())  # one learned slope for all channels, as in the paper
        elif activation == 'leakyrelu':
            layers.append(nn.LeakyReLU(0.2))
        elif activation == 'tanh':
            layers.append(nn.Tanh())
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):  # (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)
        return self.conv_block(x)


class SubPixelConvolutionalBlock(nn.Module):
    """Upscale by `scaling_factor`: a convolution makes s^2 times the channels, PixelShuffle moves them into
    space (Shi et al. 2016), then PReLU. Cheaper than a transposed convolution and free of its checkerboard."""

    def __init__(self, kernel_size=3, n_channels=64, scaling_factor=2):
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels * scaling_factor ** 2, kernel_size, padding=kernel_size // 2)
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor=scaling_factor)
        self.prelu = PReLU()

    def forward(self, x):  # (N, n_channels, h, w) -> (N, n_channels, h * s, w * s)
        x = self.conv(x)  # (N, n_channels * s^2, h, w)
        x = self.pixel_shuffle(x)  # (N, n_channels, h * s, w * s)
        return self.prelu(x)


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN with an identity skip (He et al. 2016), the body of SRResNet."""

    def __init__(self, kernel_size=3, n_channels=64):
        super().__init__()
        self.conv_block1 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation='prelu')
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation=None)

    def forward(self, x):  # (N, n_channels, h, w) -> same
        return x + self.conv_block2(self.conv_block1(x))


class SRResNet(nn.Module):
    """9x9 conv + PReLU, 16 residual blocks, 3x3 conv + BN, long skip, log2(s) sub-pixel x2 blocks, 9x9 conv + tanh."""

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4):
        super().__init__()
        if scaling_factor not in {2, 4, 8}:
            raise ValueError(f'scaling_factor must be 2, 4 or 8 (made of x2 sub-pixel blocks), not {scaling_factor!r}')
        scaling_factor = int(scaling_factor)

        self.conv_block1 = ConvolutionalBlock(3, n_channels, large_kernel_size, batch_norm=False, activation='prelu')
        self.residual_blocks = nn.Sequential(*[ResidualBlock(small_kernel_size, n_channels) for _ in range(n_blocks)])
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, small_kernel_size, batch_norm=True,
                                              activation=None)
        self.subpixel_convolutional_blocks = nn.Sequential(*[
            SubPixelConvolutionalBlock(small_kernel_size, n_channels, scaling_factor=2)
            for _ in range(int(math.log2(scaling_factor)))])
        self.conv_block3 = ConvolutionalBlock(n_channels, 3, large_kernel_size, batch_norm=False, activation='tanh')

    def forward(self, lr_imgs):
        """lr_imgs: (N, 3, h, w), ImageNet-normalised -> sr_imgs: (N, 3, h * s, w * s) in [-1, 1].
        (The tutorial feeds ImageNet-normalised LR images; we keep that so its checkpoints work unchanged.)"""
        output = self.conv_block1(lr_imgs)  # (N, 64, h, w)
        residual = output
        output = self.residual_blocks(output)  # (N, 64, h, w)
        output = self.conv_block2(output) + residual  # (N, 64, h, w)
        *blocks, last = self.subpixel_convolutional_blocks
        for block in blocks:
            output = block(output)  # (N, 64, h * s / 2, w * s / 2) after the last of them
        if not (isinstance(last.pixel_shuffle, nn.PixelShuffle) and last.prelu.num_parameters == 1
                and len(self.conv_block3.conv_block) == 2):  # per-channel slopes, or already rewritten
            return self.conv_block3(last(output))  # (N, 3, h * s, w * s), in [-1, 1]
        # The same function as conv_block3(last(output)), ~1.2x faster to train: the 9x9 convolution moved before
        # the last pixel shuffle (see conv_before_pixel_shuffle), its weight derived from the stored one on
        # every call, so the gradient reaches conv_block3's parameters and the state_dict is the tutorial's.
        r, (conv, tanh) = last.pixel_shuffle.upscale_factor, self.conv_block3.conv_block
        output = last.prelu(last.conv(output))  # (N, 64 r^2, h * s / r, w * s / r)
        weight, bias = conv_before_pixel_shuffle(conv.weight, conv.bias, r)
        output = F.conv2d(output, weight, bias, padding=weight.shape[-1] // 2)  # (N, 3 r^2, h * s / r, w * s / r)
        return tanh(F.pixel_shuffle(output, r))  # (N, 3, h * s, w * s), in [-1, 1]


def conv_before_pixel_shuffle(weight, bias, r):
    """The convolution conv' with  conv(PixelShuffle_r(y)) = PixelShuffle_r(conv'(y))  for a k x k, stride-1,
    'same'-padded conv (weight (C_out, C_in, k, k), k odd): -> (weight' (C_out r^2, C_in r^2, k', k'), bias'),
    to be applied with padding k' // 2. Differentiable: gradients of conv' flow back to weight and bias.

    Output pixel (r i + a, r j + b) reads high-res pixels (r i + a + dy, r j + b + dx), which are pixel
    (i + (a + dy) // r, j + (b + dx) // r) of channel (c r^2 + ((a + dy) % r) r + (b + dx) % r) of y. So conv' has
    r^2 times the channels in and out and a kernel reaching ceil(k // 2 / r) pixels each way (9x9 at x2: 64 -> 3
    channels become 256 -> 12, 5x5). The work is about the same, but 3 output channels at full size use the vector
    units poorly and 12 at half size use them well. Exact up to float rounding. (SRResNet's single-slope PReLU
    acts the same before or after the shuffle, which is what lets SRResNet use this on its tail.)"""
    out_channels, in_channels, k, _ = weight.shape
    index = _conv_before_pixel_shuffle_index(k, r, weight.device)  # (r^2, r^2, k'^2) into the k^2 taps + a zero
    taps = F.pad(weight.flatten(2), (0, 1))[:, :, index]  # (C_out, C_in, r^2 (a, b), r^2 (u, v), k'^2)
    side = math.isqrt(index.shape[-1])  # k'
    weight = taps.transpose(1, 2).reshape(out_channels * r * r, in_channels * r * r, side, side)
    return weight, bias.repeat_interleave(r * r)


@functools.lru_cache(maxsize=None)
def _conv_before_pixel_shuffle_index(k, r, device):
    """index[a r + b, u r + v, py k' + px]: the tap (dy + k // 2) k + (dx + k // 2) of the k x k kernel that
    conv' applies at offset (py, px) from output channel offset (a, b) to input channel offset (u, v); k^2
    (the zero after the last tap) where none does. Cached, so built as a normal tensor even when the first call
    comes under inference_mode (an inference tensor could not be saved for a later training step's backward)."""
    with torch.inference_mode(False):
        return _build_conv_before_pixel_shuffle_index(k, r).to(device)


def _build_conv_before_pixel_shuffle_index(k, r):
    half = k // 2
    reach = -(-half // r)  # ceil(half / r): low-res pixels the kernel reaches each way
    offsets = torch.arange(-reach, reach + 1) * r  # (k',)
    a, u = torch.arange(r).view(r, 1), torch.arange(r).view(1, r)
    d = (offsets.view(1, 1, -1) + (u - a).unsqueeze(-1))  # (r (a), r (u), k'): dy = py r + u - a
    valid = d.abs() <= half
    dy = d.view(r, 1, r, 1, -1, 1)  # (a, b, u, v, py, px)
    dx = d.view(1, r, 1, r, 1, -1)
    inside = valid.view(r, 1, r, 1, -1, 1) & valid.view(1, r, 1, r, 1, -1)
    index = torch.where(inside, (dy + half) * k + dx + half, k * k)
    return index.reshape(r * r, r * r, -1)


class Generator(nn.Module):
    """The SRGAN generator: the SRResNet architecture (state_dict keys prefixed with 'net.')."""

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4):
        super().__init__()
        self.net = SRResNet(large_kernel_size, small_kernel_size, n_channels, n_blocks, scaling_factor)

    def initialize_with_srresnet(self, srresnet_checkpoint):
        """Start from trained SRResNet weights (the paper initialises SRGAN this way to avoid local optima).
        `srresnet_checkpoint`: a checkpoint path written by train_srresnet.py, or an SRResNet state_dict."""
        if isinstance(srresnet_checkpoint, dict):
            state_dict = srresnet_checkpoint
        else:
            from utils import load_checkpoint, generator_state_dict  # utils imports this module
            state_dict = generator_state_dict(load_checkpoint(srresnet_checkpoint))
        self.net.load_state_dict(state_dict)

    def forward(self, lr_imgs):  # (N, 3, h, w) ImageNet-normalised -> (N, 3, h * s, w * s) in [-1, 1]
        return self.net(lr_imgs)


class Discriminator(nn.Module):
    """Eight 3x3 conv blocks (LeakyReLU 0.2; BN from the second on; stride 2 every other block; 64 -> 512
    channels), then two dense layers with one logit out. Adaptive pooling to 6x6 lets it take any input size:
    at 96x96 the pool is the identity, as in the paper."""

    def __init__(self, kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024):
        super().__init__()
        in_channels = 3
        conv_blocks = []
        for i in range(n_blocks):
            # channels double at every stride-1 block after the first; stride-2 blocks halve the size
            out_channels = (n_channels if i == 0 else in_channels * 2) if i % 2 == 0 else in_channels
            conv_blocks.append(ConvolutionalBlock(in_channels, out_channels, kernel_size,
                                                  stride=1 if i % 2 == 0 else 2, batch_norm=i != 0,
                                                  activation='leakyrelu'))
            in_channels = out_channels
        self.conv_blocks = nn.Sequential(*conv_blocks)
        self.adaptive_pool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc1 = nn.Linear(out_channels * 6 * 6, fc_size)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(fc_size, 1)  # the tutorial hard-coded 1024 here, ignoring fc_size

    def forward(self, imgs):
        """imgs: (N, 3, H, W) in [-1, 1], H, W >= 96 -> (N,) logits (> 0 means 'real')."""
        output = self.conv_blocks(imgs)  # (N, 512, H / 16, W / 16) at the defaults
        output = self.adaptive_pool(output)  # (N, 512, 6, 6)
        output = self.leaky_relu(self.fc1(output.flatten(1)))  # (N, fc_size)
        return self.fc2(output).squeeze(1)  # (N,)


class VGGWeightsUnavailable(RuntimeError):
    """The ImageNet VGG19 weights could not be obtained (offline, or a bad local file)."""


def _vgg_layer_index(i, j):
    """Index in vgg19.features of the activation after the j-th convolution before the i-th max-pool."""
    maxpool_counter, conv_counter, valid = 0, 0, []
    with torch.device('meta'):
        features = torchvision.models.vgg19().features
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            conv_counter += 1
        elif isinstance(layer, nn.MaxPool2d):
            maxpool_counter += 1
            conv_counter = 0
        elif isinstance(layer, nn.ReLU):
            if (maxpool_counter + 1, conv_counter) == (i, j):
                return index
            valid.append(f'({maxpool_counter + 1}, {conv_counter})')
    raise ValueError(f'VGG19 has no φ({i},{j}); valid (i, j): {", ".join(valid)}')


class TruncatedVGG19(nn.Module):
    """VGG19 up to φ(i, j): the feature map after the j-th convolution (and its ReLU) before the i-th max-pool.
    φ(5, 4) is the paper's 'VGG54' content loss, φ(2, 2) its 'VGG22'.

    weights: 'imagenet' - torchvision's VGG19_Weights.IMAGENET1K_V1 (downloaded once into the torch hub cache);
             a path   - a local copy of that file (vgg19-dcbb9e9d.pth), for offline machines;
             None     - random weights. Only for tests: an untrained VGG is no perceptual loss.
    The network is frozen: its parameters never require grad and it stays in eval mode under .train().
    """

    def __init__(self, i=5, j=4, weights='imagenet'):
        super().__init__()
        truncate_at = _vgg_layer_index(i, j)
        with torch.device('meta'):  # the layout only: skips initialising the 120M-parameter classifier
            layers = torchvision.models.vgg19().features[:truncate_at + 1]
        self.truncated_vgg19 = layers.to_empty(device='cpu')
        if weights is None:
            for layer in self.truncated_vgg19:
                if isinstance(layer, nn.Conv2d):  # torchvision's own initialisation of VGG
                    nn.init.kaiming_normal_(layer.weight, mode='fan_out', nonlinearity='relu')
                    nn.init.zeros_(layer.bias)
        else:
            features = _load_vgg19_features(weights)
            features = {k: v for k, v in features.items() if int(k.split('.')[0]) <= truncate_at}
            try:
                self.truncated_vgg19.load_state_dict(features)
            except RuntimeError as e:  # wrong keys or shapes
                raise VGGWeightsUnavailable(f'{weights} is not a VGG19 weights file ({str(e).splitlines()[0]})') from None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # BN-free, but keep eval semantics whatever the parent does

    def forward(self, x):  # (N, 3, H, W) ImageNet-normalised -> (N, C, H', W')
        return self.truncated_vgg19(x)


def _load_vgg19_features(weights):
    """The state_dict of vgg19.features (keys '0.weight', ...) from 'imagenet' or a local file."""
    how_to = (f'download {VGG19_WEIGHTS_URL} on a machine with internet and pass its path '
              f'(--vgg-weights PATH), or put it in {torch.hub.get_dir()}/checkpoints/')
    if weights == 'imagenet':
        try:
            state_dict = torchvision.models.VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            raise VGGWeightsUnavailable(f'could not get the VGG19 ImageNet weights ({e}); {how_to}') from None
    else:
        try:
            state_dict = torch.load(weights, map_location='cpu', weights_only=True)
        except Exception as e:
            raise VGGWeightsUnavailable(f'could not read VGG19 weights from {weights} ({e}); {how_to}') from None
    # accept torchvision's whole-VGG19 file ('features.0.weight', 'classifier.0.weight', ...) or vgg19.features'
    features = {k.removeprefix('features.'): v for k, v in state_dict.items()
                if k.startswith('features.') or k.split('.')[0].isdigit()}
    if not features:
        raise VGGWeightsUnavailable(f'{weights} holds no VGG19 feature weights; {how_to}')
    return features

"""
Speed rewrites: the same functions as models.py computes, faster. Not in the paper; models.py reads as the paper
and knows nothing of this file. Each rewrite is switched on by one call where a model is set up:

    speedups.for_training(model)          # in place, before training (training.py); state_dict keys unchanged
    fast = speedups.for_inference(model)  # a rewritten copy for inference (inference.py); `model` is untouched
    folded = speedups.fold_batchnorm(model)  # BatchNorm folded alone, a copy (deploy.py exports it to ONNX)

What they do, and why they are exact (tests/test_speedups.py checks each against the plain model):
- single-slope PReLU on the CPU through LeakyReLU's kernels (SingleSlopePReLU): PyTorch's PReLU backward is slow
  there, and SRResNet's PReLUs have one slope each;
- the last 9x9 convolution moved before the last pixel shuffle (conv_before_pixel_shuffle): 3 output channels
  at full size use the vector units poorly, 12 at half size use them well;
- (inference) every BatchNorm folded into the convolution before it: in eval mode BN is a fixed per-channel
  affine map, so conv + BN is one conv; and channels_last (NHWC), what oneDNN and cuDNN convolutions prefer;
- (inference) PReLUs and residual additions computed in place (InferencePReLU, InplaceResidualBlock): each reads a
  fresh intermediate that nothing else reads, so the result is the same and a full-size pass of memory is saved;
- (inference, CPU) the tail's convolution padded with zero filters to 16 outputs (12 used), two whole AVX2
  vectors, which oneDNN runs faster; the zero filters change nothing (TailBeforeShuffle.fixed).
"""

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models import ConvolutionalBlock, ResidualBlock, SRResNet


def for_training(model):
    """Rewrite `model` (an SRResNet, a Generator, or any module holding them) in place for faster training:
    single-slope PReLUs computed with LeakyReLU's kernels, and SRResNet's last convolution moved before the last
    pixel shuffle (its weight derived from the stored one on every call, so it trains the stored weight). The
    parameters are the same objects under the same state_dict keys. Returns `model`."""
    _use_single_slope_prelu(model)
    for srresnet in [m for m in model.modules() if isinstance(m, SRResNet)]:
        _move_tail_before_shuffle(srresnet)
    return model


@torch.no_grad()
def for_inference(model):
    """A copy of `model` (SRResNet) rewritten for inference: eval mode, BatchNorm folded into the convolutions,
    the last convolution moved before the last pixel shuffle (computed once), single-slope PReLUs and residual
    additions computed in place, channels_last.
    Weights stay fp32: autocast casts them per tile, which costs nothing measurable."""
    model = fold_batchnorm(model)
    for_training(model)
    _compute_in_place(model)
    device = next(model.parameters()).device
    if isinstance(model.conv_block3, TailBeforeShuffle):
        model.conv_block3 = model.conv_block3.fixed(pad_to=8 if device.type == 'cpu' else 1)
    if device.type != 'mps':
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def fold_batchnorm(model):
    """A copy of `model` (SRResNet) in eval mode with every BatchNorm folded into the convolution before it (in eval
    mode BN is a fixed per-channel affine map, so conv + BN is one conv); the plain modules otherwise, as models.py
    has them (deploy.py exports this)."""
    model = copy.deepcopy(model).eval()
    for block in model.modules():
        layers = block.conv_block if isinstance(block, ConvolutionalBlock) else []  # conv [, BN] [, activation]
        if len(layers) > 1 and isinstance(layers[1], nn.BatchNorm2d):
            layers[0] = fuse_conv_bn_eval(layers[0], layers[1])
            layers[1] = nn.Identity()
    return model


# ----------------------------------------------------------------------------------------------------------------
# Single-slope PReLU

class SingleSlopePReLU(nn.PReLU):
    """nn.PReLU (same parameter, same function) that trains faster on CPUs with one slope for all channels, as
    SRResNet has it: PyTorch's PReLU backward is slow there (far slower than LeakyReLU's in bf16 and channels_last),
    so this computes the same thing with LeakyReLU's kernels."""

    def forward(self, x):
        if self.num_parameters == 1 and x.device.type == 'cpu' and not torch.compiler.is_compiling():
            if torch.is_autocast_enabled('cpu'):  # as F.prelu under autocast: computed in the autocast dtype
                x = x.to(torch.get_autocast_dtype('cpu'))
            return _SingleSlopePReLUFunction.apply(x, self.weight)
        return super().forward(x)  # per-channel slopes, GPUs (reading the slope would sync), torch.compile


class _SingleSlopePReLUFunction(torch.autograd.Function):
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


def _use_single_slope_prelu(model):
    """Every nn.PReLU of `model` with one slope becomes a SingleSlopePReLU holding the same weight Parameter."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.PReLU and child.num_parameters == 1:
                fast = SingleSlopePReLU()
                fast.weight = child.weight  # the same Parameter: optimizers and state_dicts see no change
                setattr(parent, name, fast)


# ----------------------------------------------------------------------------------------------------------------
# The last convolution before the last pixel shuffle

def conv_before_pixel_shuffle(weight, bias, r):
    """The convolution conv' with  conv(PixelShuffle_r(y)) = PixelShuffle_r(conv'(y))  for a k x k, stride-1,
    'same'-padded conv (weight (C_out, C_in, k, k), k odd): -> (weight' (C_out r^2, C_in r^2, k', k'), bias'),
    to be applied with padding k' // 2. Differentiable: gradients of conv' flow back to weight and bias.

    Output pixel (r i + a, r j + b) reads high-res pixels (r i + a + dy, r j + b + dx), which are pixel
    (i + (a + dy) // r, j + (b + dx) // r) of channel (c r^2 + ((a + dy) % r) r + (b + dx) % r) of y. So conv' has
    r^2 times the channels in and out and a kernel reaching ceil(k // 2 / r) pixels each way (9x9 at x2: 64 -> 3
    channels become 256 -> 12, 5x5). The work is about the same, but 3 output channels at full size use the vector
    units poorly and 12 at half size use them well. Exact up to float rounding."""
    out_channels, in_channels, k, _ = weight.shape
    index_of = _conv_before_pixel_shuffle_index
    if torch.compiler.is_compiling():  # torch.compile traces the function itself (it warns about caches)
        index_of = index_of.__wrapped__
    index = index_of(k, r, weight.device)  # (r^2, r^2, k'^2) into the k^2 taps + a zero
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
        return index.reshape(r * r, r * r, -1).to(device)


class SubPixelBlockWithoutShuffle(nn.Module):
    """SRResNet's last sub-pixel block, its pixel shuffle left to the TailBeforeShuffle after it: PReLU(conv(x)).
    Its single-slope PReLU acts the same before or after the shuffle. Same children, same state_dict keys."""

    def __init__(self, block):
        super().__init__()
        self.conv, self.pixel_shuffle, self.prelu = block.conv, block.pixel_shuffle, block.prelu

    def forward(self, x):  # (N, C, h, w) -> (N, C r^2, h, w)
        return self.prelu(self.conv(x))


class TailBeforeShuffle(nn.Module):
    """SRResNet's conv_block3 (9x9 conv, tanh) applied before the last pixel shuffle: tanh(PixelShuffle(conv'(y)))
    with conv' derived from the stored 9x9 weight on every call, so the gradient reaches the stored weight.
    The same child (conv_block), the same state_dict keys."""

    def __init__(self, block, r):
        super().__init__()
        self.conv_block, self.r = block.conv_block, r

    def forward(self, x):  # (N, C r^2, h, w) -> (N, 3, h r, w r), in [-1, 1]
        conv, activation = self.conv_block
        weight, bias = conv_before_pixel_shuffle(conv.weight, conv.bias, self.r)  # (3 r^2, C r^2, k', k')
        x = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)  # (N, 3 r^2, h, w)
        return activation(F.pixel_shuffle(x, self.r))

    @torch.no_grad()
    def fixed(self, pad_to=1):
        """For inference: conv' computed once, as an nn.Conv2d; -> Sequential(conv', PixelShuffle, activation).
        pad_to: conv' gets zero filters up to a multiple of this many outputs (whole vectors, faster on a CPU),
        which FirstChannels drops again; 1: none."""
        conv, activation = self.conv_block
        weight, bias = conv_before_pixel_shuffle(conv.weight, conv.bias, self.r)  # (3 r^2, C r^2, k', k')
        used = weight.shape[0]
        padding = -used % pad_to
        weight, bias = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, padding)), F.pad(bias, (0, padding))
        folded = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], padding=weight.shape[-1] // 2)
        folded = folded.to(weight.device)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
        narrow = [FirstChannels(used)] if padding else []
        return nn.Sequential(folded, *narrow, nn.PixelShuffle(self.r), activation)


class FirstChannels(nn.Module):
    """x[:, :n]: the outputs of a convolution padded with zero filters, without the padding (a view)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):  # (N, C, h, w) -> (N, n, h, w)
        return x[:, :self.n]


def _move_tail_before_shuffle(model):
    """SRResNet's tail  conv_block3(last sub-pixel block(y))  rewritten as the same function with the 9x9
    convolution before the last pixel shuffle; left as it is where that is not exact (a per-channel PReLU does not
    commute with the shuffle) or already done."""
    last = model.subpixel_convolutional_blocks[-1]
    if (isinstance(last, SubPixelBlockWithoutShuffle) or last.prelu.num_parameters != 1
            or len(model.conv_block3.conv_block) != 2):
        return
    model.subpixel_convolutional_blocks[-1] = SubPixelBlockWithoutShuffle(last)
    model.conv_block3 = TailBeforeShuffle(model.conv_block3, last.pixel_shuffle.upscale_factor)


# ----------------------------------------------------------------------------------------------------------------
# In place, for inference

class InferencePReLU(nn.Module):
    """A single-slope PReLU for inference: the slope read once as a number (no device sync per call) and applied
    in place with LeakyReLU's kernel when no gradient is wanted. In place is safe in SRResNet: every PReLU there
    reads the fresh output of a convolution or a pixel shuffle, which nothing else reads."""

    def __init__(self, prelu):
        super().__init__()
        self.weight = prelu.weight  # kept under its key; the rewrite is for fixed weights
        self.slope = prelu.weight.item()

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):  # as F.prelu under autocast: in the autocast dtype
            x = x.to(torch.get_autocast_dtype(x.device.type))
        slope = torch.tensor(self.slope, dtype=x.dtype).item()  # rounded to x's dtype, as F.prelu does
        if x.requires_grad:
            return F.leaky_relu(x, slope)
        return F.leaky_relu_(x, slope)


class InplaceResidualBlock(nn.Module):
    """models.ResidualBlock (the same children, the same state_dict keys) whose skip addition is done in place,
    into the fresh output of its second convolution: x + block(x) as block(x) += x, one full-size tensor fewer."""

    def __init__(self, block):
        super().__init__()
        self.conv_block1, self.conv_block2 = block.conv_block1, block.conv_block2

    def forward(self, x):  # (N, C, h, w) -> same
        output = self.conv_block2(self.conv_block1(x))
        return x + output if output.requires_grad else output.add_(x)


def _compute_in_place(model):
    """SRResNet's single-slope PReLUs become InferencePReLUs and its residual blocks InplaceResidualBlocks."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PReLU) and child.num_parameters == 1:
                setattr(parent, name, InferencePReLU(child))
            elif isinstance(child, ResidualBlock):
                setattr(parent, name, InplaceResidualBlock(child))

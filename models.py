"""
The networks of Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network" (CVPR 2017): SRResNet, the SRGAN Generator and Discriminator, and the truncated VGG19 used for the
perceptual (content) loss. This file is the paper, layer by layer; the speed rewrites that compute the same
functions faster live in speedups.py.

Class names, constructor parameters and state_dict keys are those of the original tutorial
(sgrvinod/a-PyTorch-Tutorial-to-Super-Resolution), so weights trained with it load with strict=True.

Value ranges (the habit of this repo: every tensor's range is written next to it):
    SRResNet / Generator   in: (N, 3, h, w) LR, ImageNet-normalised  out: (N, 3, h*s, w*s) SR images in [-1, 1]
    Discriminator          in: (N, 3, H, W) images in [-1, 1]        out: (N,) logits
    TruncatedVGG19         in: (N, 3, H, W) ImageNet-normalised     out: (N, C, H/2^(i-1), W/2^(i-1)) features
"""

import math
import urllib.error

import torch
from torch import nn

from checkpoints import generator_of, load_checkpoint

# Where an offline user gets the VGG19 weights from: torchvision's URL for VGG19_Weights.IMAGENET1K_V1 (a test
# checks it against torchvision's; written out so that importing this module does not import torchvision.models).
VGG19_WEIGHTS_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'


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
            layers.append(nn.PReLU())  # one learned slope for all channels, as in the paper
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
        self.prelu = nn.PReLU()

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

    @property
    def scaling_factor(self):
        return 2 ** len(self.subpixel_convolutional_blocks)  # one x2 sub-pixel block per doubling

    def forward(self, lr_imgs):
        """lr_imgs: (N, 3, h, w), ImageNet-normalised -> sr_imgs: (N, 3, h * s, w * s) in [-1, 1].
        (The tutorial feeds ImageNet-normalised LR images; we keep that so its checkpoints work unchanged.)"""
        output = self.conv_block1(lr_imgs)  # (N, 64, h, w)
        residual = output  # (N, 64, h, w)
        output = self.residual_blocks(output)  # (N, 64, h, w)
        output = self.conv_block2(output)  # (N, 64, h, w)
        output = output + residual  # (N, 64, h, w)
        output = self.subpixel_convolutional_blocks(output)  # (N, 64, h * s, w * s)
        sr_imgs = self.conv_block3(output)  # (N, 3, h * s, w * s), in [-1, 1]
        return sr_imgs


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
            _, state_dict = generator_of(load_checkpoint(srresnet_checkpoint), srresnet_checkpoint)
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


def _vgg19_features_layout():
    """torchvision's vgg19().features (imported here: only the VGG loss needs torchvision.models, ~1 s to import)."""
    import torchvision
    return torchvision.models.vgg19().features


def _vgg_layer_index(i, j):
    """Index in vgg19.features of the activation after the j-th convolution before the i-th max-pool."""
    maxpool_counter, conv_counter, valid = 0, 0, []
    with torch.device('meta'):
        features = _vgg19_features_layout()
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
            layers = _vgg19_features_layout()[:truncate_at + 1]
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
        import torchvision  # only the VGG loss needs torchvision.models (~1 s to import)
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

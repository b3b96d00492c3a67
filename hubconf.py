"""
torch.hub entry points: the shipped SRResNets (weights/srresnet_x2.pt, _x4.pt, _x8.pt, and _x4_real.pt for
compressed photos and video frames: real=True) in one line.

    import torch
    model = torch.hub.load('path/to/this/checkout', 'srresnet', scale=4, source='local')  # offline
    upscale = torch.hub.load('path/to/this/checkout', 'upscaler', scale=4, source='local')
    big = upscale(Image.open('photo.png'))   # a PIL image 4x larger

With the repository on GitHub, `torch.hub.load('<owner>/<repo>', 'srresnet', scale=4)` does the same after
downloading it once.
"""

import inference
import models
import utils

dependencies = ['torch', 'torchvision', 'PIL', 'numpy']  # what torch.hub checks before importing this file


def srresnet(scale=4, pretrained=True, device='cpu', real=False):
    """The paper's SRResNet for x2, x4 or x8, in eval mode on `device`: the shipped weights (real=True: the x4
    trained on degraded LR, for JPEG photos and video frames), or random ones (pretrained=False, to train). It takes
    (N, 3, h, w) ImageNet-normalised LR images and returns (N, 3, h * s, w * s) in [-1, 1], as the tutorial's SRResNet
    does (utils.convert_image converts both ways)."""
    _check_scale(scale, real)
    if not pretrained:
        return models.SRResNet(scaling_factor=scale).to(device).eval()
    return inference.load_generator(inference.shipped_model(scale, real), device)


def upscaler(scale=4, device='cpu', tile=inference.DEFAULT_TILE, real=False):
    """A function PIL image -> PIL image `scale` times larger, through the shipped SRResNet of that scale (real=True:
    the one for compressed photos and video frames), tiled
    (`tile` LR pixels a side; None for the whole image at once) so any size fits in memory. 8-bit RGB and grayscale
    in and out; other modes are converted to RGB (super_resolve.py keeps alpha, 16 bits and colour profiles)."""
    _check_scale(scale, real)
    tile, overlap = inference.tiling(tile or 0)
    model = inference.load_upscaler(inference.shipped_model(scale, real), device, tile=tile, tile_overlap=overlap)

    def upscale(img):
        mode = 'L' if img.mode in ('L', '1') else 'RGB'
        lr_img = utils.convert_image(img.convert('RGB'), 'pil', 'imagenet-norm')  # (3, h, w)
        sr_img = utils.convert_image(model.upscale(lr_img), '[-1, 1]', 'pil')  # (3, h s, w s) in [-1, 1] -> PIL RGB
        return sr_img.convert(mode) if mode == 'L' else sr_img

    upscale.scaling_factor = scale
    return upscale


def _check_scale(scale, real=False):
    scales = inference.REAL_SCALES if real else inference.SCALES
    if isinstance(scale, bool) or scale not in scales:
        raise utils.UserError(f'scale={scale!r}: the shipped {"real-input " if real else ""}SRResNets upscale by '
                              f'{", ".join(map(str, scales))} (an int)')

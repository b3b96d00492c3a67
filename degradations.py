"""
Real photos and video frames are not the paper's clean bicubic LR: they were blurred by a lens, resized on their way,
noisy from a sensor and saved as JPEG. A model trained on clean LR sharpens those defects along with the detail. As
BSRGAN (Zhang et al. 2021) and Real-ESRGAN (Wang et al. 2021) do, a model for real inputs is trained on LR images
degraded that way, at random (train_srresnet.py / train_srgan.py --degrade); eval.py --degrade measures any model on
test images degraded by the same code. Not in the paper.

A degradation is written as stages, e.g. 'jpeg:75' (every image saved as JPEG at quality 75) or
'blur:0.2-0.8@0.2,jpeg:30-95@0.8' (a blur of sigma drawn from 0.2-0.8 on a fifth of the images, then JPEG at a
quality drawn from 30-95 on four fifths). 'real' is the preset the shipped weights/srresnet_x4_real.pt trained with.

    degrade = Degradations('real', seed=0)
    lr_imgs = degrade(lr_imgs, key=iteration)  # (N, 3, h, w) in [0, 1] -> the same, degraded, 8-bit values

The draws depend only on (seed, key), so a resumed run degrades its batches as an uninterrupted one, and eval.py
degrades each test image the same way every time.
"""

import argparse
import dataclasses
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from utils import convert_image

# what each stage's numbers mean, and the values they may take
STAGES = {
    'blur': ('a Gaussian blur, sigma in LR pixels', 0.0, 5.0),
    'resize': ('a resize down by this factor and back up, as an image resized on its way loses detail', 0.25, 1.0),
    'noise': ('Gaussian noise, sigma in 8-bit levels (0-255), independent per colour channel', 0.0, 50.0),
    'poisson': ("a sensor's shot noise, counting this many photons at white (fewer: noisier)", 1.0, 1e5),
    'jpeg': ('JPEG at this quality (1-100), always last, as an image is saved', 1.0, 100.0),
}
EXAMPLES = {'blur': 'blur:0.2-0.6@0.1', 'resize': 'resize:0.7-1@0.1', 'noise': 'noise:1-4@0.1',
            'poisson': 'poisson:1000-5000@0.05', 'jpeg': 'jpeg:45-90@0.8'}  # shown when a stage is mistyped
# the preset of --degrade real: mostly JPEG, at the qualities of web images and video frames; now and then a
# little blur, a resize, noise; about one image in six stays clean, so that clean inputs stay well served.
# (The shipped model's first 4,750 iterations used 'blur:0.2-0.6@0.1,resize:0.7-1@0.1,noise:1-4@0.1,
# poisson:1000-5000@0.05,jpeg:30-90@0.7'; JPEG on more images, from quality 45, did better at q50-q90 and on clean LR:
# weights/srresnet_x4_real.md.)
PRESETS = {'none': '', 'real': 'blur:0.2-0.6@0.05,resize:0.7-1@0.05,noise:1-4@0.05,jpeg:45-90@0.8'}


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # a key of STAGES
    low: float  # the value is drawn uniformly from [low, high] for each image
    high: float
    p: float = 1.0  # the chance that an image goes through this stage


def parse_degrade(spec):
    """'none', 'real' or 'name:low[-high][@p],...' -> a tuple of Stage (empty: none); a ValueError says what is
    wrong in one line."""
    spec = PRESETS.get(spec, spec)
    stages = []
    for part in filter(None, (p.strip() for p in spec.split(','))):
        name, _, values = part.partition(':')
        if name not in STAGES:
            raise ValueError(f'{part!r}: unknown stage {name!r} (one of {", ".join(STAGES)}; or none, or real)')
        values, _, p = values.partition('@')
        low, dash, high = values.partition('-')
        try:
            stage = Stage(name, float(low), float(high if dash else low), float(p or 1))
        except ValueError:
            raise ValueError(f'{part!r}: write {name}:VALUE or {name}:LOW-HIGH, and @P for a chance, e.g. '
                             f'{EXAMPLES[name]}') from None
        minimum, maximum = STAGES[name][1:]
        if not minimum <= stage.low <= stage.high <= maximum or not 0 <= stage.p <= 1:
            raise ValueError(f'{part!r}: {name} takes {minimum:g} <= LOW <= HIGH <= {maximum:g}, and 0 <= P <= 1')
        if name in {s.name for s in stages}:
            raise ValueError(f'{part!r}: {name} is given twice')
        stages.append(stage)
    return tuple(stages)


def degrades(spec):
    """Whether `spec` changes an image at all: not 'none', '', nor only stages of chance 0."""
    return bool(Degradations(spec))


def degrade_flag(text):
    """argparse's type for --degrade: the text as given, once parse_degrade accepts it."""
    try:
        parse_degrade(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


DEGRADE_HELP = ("none (the paper's clean bicubic LR), real (" + PRESETS['real'] + '), or stages NAME:LOW-HIGH@P '
                'joined by commas, each applied to an image with chance P (1 when left out) at a value drawn from '
                'LOW-HIGH (or NAME:VALUE): ' + '; '.join(f'{name}: {what}' for name, (what, _, _) in STAGES.items()))


class Degradations:
    """Degrade batches of LR images as `spec` says (see parse_degrade), drawn from (seed, key). The stages other
    than JPEG run in an order drawn per batch; JPEG comes last. Blur, resize and Gaussian noise run on the images'
    device; shot noise and JPEG (Pillow's) on the CPU."""

    def __init__(self, spec, seed=0):
        self.spec, self.stages, self.seed = spec, parse_degrade(spec), seed

    def __bool__(self):  # whether it changes an image at all (degrades)
        return any(stage.p > 0 for stage in self.stages)

    def __call__(self, lr_imgs, key):
        """(N, 3, h, w) in [0, 1] -> the same shape, degraded, rounded to 8-bit values. key: an int >= 0 that names
        the batch (the training iteration, a test image's index)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        n = lr_imgs.shape[0]
        shuffled = [s for s in self.stages if s.name != 'jpeg']
        order = [shuffled[i] for i in torch.randperm(len(shuffled), generator=generator)]
        for stage in order + [s for s in self.stages if s.name == 'jpeg']:
            applied = torch.rand(n, generator=generator) < stage.p  # (N,), every draw made, so that the
            values = stage.low + (stage.high - stage.low) * torch.rand(n, generator=generator)  # next stay put
            lr_imgs = APPLY[stage.name](lr_imgs, values, applied, generator)
        return lr_imgs.clamp(0, 1).mul(255).round().div(255)  # (N, 3, h, w) in [0, 1], 8-bit values

    def uint8(self, lr_img, key):
        """One LR image, (3, h, w) uint8 (eval.py's) -> the same, degraded."""
        degraded = self(lr_img[None].float().div(255), key)[0]
        return degraded.mul(255).round().to(torch.uint8)


def blur(imgs, sigmas, applied, generator):
    """A Gaussian blur of its own sigma (LR pixels) on each applied image; separable, edges replicated."""
    sigmas = torch.where(applied, sigmas, 0.0)
    if not applied.any() or sigmas.max() == 0:
        return imgs
    n, c = imgs.shape[:2]
    radius = int(torch.ceil(3 * sigmas.max()))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-x ** 2 / (2 * sigmas.clamp(min=1e-3)[:, None] ** 2))  # (N, 2r + 1); sigma 0: a delta
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(c, 0).to(imgs)  # (N * C, 2r + 1)
    out = F.pad(imgs.reshape(1, n * c, *imgs.shape[2:]), (radius,) * 4, mode='replicate')
    out = F.conv2d(out, kernels[:, None, None, :], groups=n * c)  # along rows
    out = F.conv2d(out, kernels[:, None, :, None], groups=n * c)  # along columns
    return out.reshape(imgs.shape)


def resize(imgs, factors, applied, generator):
    """Each applied image down by its factor (bicubic, antialiased, or an area average: drawn) and back up (bicubic):
    the same size, less detail."""
    modes = torch.rand(len(imgs), generator=generator) < 0.5
    out = imgs.clone()
    height, width = imgs.shape[-2:]
    for i in applied.nonzero()[:, 0].tolist():
        size = (max(1, round(height * factors[i].item())), max(1, round(width * factors[i].item())))
        small = (F.interpolate(imgs[i:i + 1], size=size, mode='bicubic', antialias=True) if modes[i] else
                 F.interpolate(imgs[i:i + 1], size=size, mode='area'))
        out[i] = F.interpolate(small, size=(height, width), mode='bicubic')[0]
    return out


def noise(imgs, sigmas, applied, generator):
    """Gaussian noise of its own sigma (8-bit levels) on each applied image."""
    scale = torch.where(applied, sigmas / 255, 0.0)[:, None, None, None]  # (N, 1, 1, 1)
    return imgs + (torch.randn(imgs.shape, generator=generator) * scale).to(imgs)


def poisson(imgs, peaks, applied, generator):
    """Shot noise: each pixel a count of photons, Poisson-distributed, `peak` of them at white."""
    peaks = peaks[:, None, None, None]  # (N, 1, 1, 1)
    counts = torch.poisson(imgs.detach().float().cpu().clamp(0, 1) * peaks, generator=generator)
    noisy = (counts / peaks).to(imgs)
    return torch.where(applied.to(imgs.device)[:, None, None, None], noisy, imgs)


def jpeg(imgs, qualities, applied, generator):
    """Each applied image saved as JPEG at its quality (rounded) by Pillow, with its defaults (4:2:0 chroma, as most
    photos on the web), and read back."""
    out = imgs.clone()
    for i in applied.nonzero()[:, 0].tolist():
        img = imgs[i].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (h, w, 3)
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, 'JPEG', quality=round(qualities[i].item()))
        out[i] = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).to(imgs).div(255)
    return out


APPLY = {'blur': blur, 'resize': resize, 'noise': noise, 'poisson': poisson, 'jpeg': jpeg}


class DegradedLR(Dataset):
    """A test SRDataset ('imagenet-norm' LR, '[-1, 1]' HR) whose LR images are degraded, image i by key i: what a
    run trained with --degrade validates on."""

    def __init__(self, dataset, degradations):
        self.dataset, self.degradations = dataset, degradations

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        lr_img, hr_img = self.dataset[i]  # (3, h, w) ImageNet-normalised, (3, h * s, w * s) in [-1, 1]
        lr_img = self.degradations(convert_image(lr_img, 'imagenet-norm', '[0, 1]')[None], i)[0]
        return convert_image(lr_img, '[0, 1]', 'imagenet-norm'), hr_img

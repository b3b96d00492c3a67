"""
Which x4 for compressed inputs: bicubic and each model on LR frames that went through a video codec (or any
eval.py --degrade spec), scored against their HR frames, with a crop of one frame to look at.

    python benchmarks/real_inputs.py weights/srresnet_x4.pt weights/srresnet_x4_real.pt             # a video clip
    python benchmarks/real_inputs.py weights/srresnet_x4.pt weights/srresnet_x4_real.pt --crf 23 --sheet crop.png
    python benchmarks/real_inputs.py weights/srresnet_x4.pt weights/srresnet_x4_real.pt --frames 1 \\
        --image ../shared/data/Set14/baboon.png --degrade jpeg:75 --sheet crop.png   # one JPEG photo

The clip: a pan across one HR photo (--image; by default Set14's monarch from ../shared, else scikit-image's
astronaut), --frames frames at 24 fps, a --size window moving --step HR pixels a frame. Each window becomes its LR
as eval.py's paper protocol makes a test LR (MATLAB's bicubic, x4); the LR frames are encoded with libx264 at
--crf (23: x264's default; 28: a small streaming file) in yuv420p, as a phone or a website does, and decoded again
(--degrade SPEC instead: degradations.py's stages, frame i by key i, as eval.py --degrade). Bicubic and each model
upscale the decoded frames; the PSNR / SSIM of each frame (Y, border 4: eval.py's paper protocol) is averaged over
the clip, for the clean LR frames too. --sheet: the most detailed --crop x --crop square of the middle frame, from
bicubic, the first two models and the HR, as visualize_sr's 2x2 grid (nearest-neighbour x2, to see the pixels), each
labelled with the PSNR of that whole frame.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import inference  # noqa: E402
import metrics  # noqa: E402
import report  # noqa: E402
from degradations import Degradations, degrade_flag  # noqa: E402
from images import load_image  # noqa: E402
from super_resolve import draw_grid  # noqa: E402
from utils import convert_image  # noqa: E402

SCALE = 4
FPS = 24
SHARED_PHOTO = REPO.parent / 'shared' / 'data' / 'Set14' / 'monarch.png'


def hr_photo(path):
    """--image, else Set14's monarch from ../shared, else scikit-image's astronaut -> PIL RGB."""
    if path is not None:
        return load_image(path)
    if SHARED_PHOTO.is_file():
        return load_image(SHARED_PHOTO)
    from skimage import data
    return Image.fromarray(data.astronaut())


def pan(photo, n_frames, step, size):
    """n_frames windows of size (w, h) HR pixels across the photo, moving `step` pixels right a frame (and down, in
    proportion, when the photo is taller than the window) -> [(3, h, w) uint8], their sides multiples of the scale."""
    w, h = size
    if photo.width < w or photo.height < h:
        raise SystemExit(f'error: the photo ({photo.width}x{photo.height}) is smaller than --size {w}x{h}')
    travel = max(1, (n_frames - 1) * step)
    frames = []
    for i in range(n_frames):
        left = min(i * step, photo.width - w)
        top = round((photo.height - h) * min(i * step, travel) / travel) if n_frames > 1 else (photo.height - h) // 2
        frames.append(metrics.to_uint8_tensor(photo.crop((left, top, left + w, top + h))))
    return frames


def through_codec(lr_frames, crf):
    """LR frames [(3, h, w) uint8] -> the same frames encoded with libx264 at `crf` in yuv420p, then decoded."""
    import av
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'lr.mp4')
        with av.open(path, 'w') as target:
            stream = target.add_stream('libx264', rate=FPS)
            stream.height, stream.width = lr_frames[0].shape[1:]
            stream.pix_fmt, stream.options = 'yuv420p', {'crf': str(crf)}
            for lr_img in lr_frames:
                frame = av.VideoFrame.from_ndarray(lr_img.permute(1, 2, 0).contiguous().numpy(), format='rgb24')
                target.mux(stream.encode(frame))
            target.mux(stream.encode(None))
        with av.open(path) as source:
            return [torch.from_numpy(frame.to_ndarray(format='rgb24')).permute(2, 0, 1)
                    for frame in source.decode(video=0)]


@torch.inference_mode()
def upscale(upscaler, lr_frames):
    """LR frames [(3, h, w) uint8] -> SR frames [(3, h s, w s) in [-1, 1]]; upscaler None: bicubic (the kernel of
    eval.py's paper protocol, as its bicubic row)."""
    if upscaler is None:
        return [metrics.bicubic_upscale(lr_img, SCALE, 'matlab').float() for lr_img in lr_frames]
    return [upscaler.upscale(convert_image(lr_img.float(), '[0, 255]', 'imagenet-norm')) for lr_img in lr_frames]


def scores(sr_frames, hr_frames):
    """Mean PSNR and SSIM over the frames, eval.py's paper protocol."""
    hr = convert_image(torch.stack(hr_frames).float(), '[0, 255]', '[-1, 1]')
    psnr, ssim = metrics.evaluate_image(torch.stack(sr_frames), hr, SCALE)
    return float(psnr.mean()), float(ssim.mean())


def crop_sheet(panels, hr_img, crop, path):
    """{label: (3, H, W) in [-1, 1]} and the HR (3, H, W) uint8 -> the grid of the most detailed crop x crop
    square, each panel enlarged x2 with nearest neighbours and labelled with its frame's PSNR; saved to path."""
    left, top = report.most_detailed_region(hr_img, crop)
    pils = {f'{label}: {scores([sr_img], [hr_img])[0]:.2f} dB': convert_image(sr_img.clamp(-1, 1), '[-1, 1]', 'pil')
            for label, sr_img in panels.items()}
    pils['Original HR'] = Image.fromarray(hr_img.permute(1, 2, 0).numpy())
    pils = {label: img.crop((left, top, left + crop, top + crop)).resize((2 * crop, 2 * crop), Image.NEAREST)
            for label, img in pils.items()}
    draw_grid(pils, 2 * crop, 2 * crop).save(path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('models', nargs='+', help='x4 checkpoints (or .onnx exports) to compare with bicubic')
    parser.add_argument('--image', default=None, help='the HR photo the clip pans across [default: Set14 monarch]')
    parser.add_argument('--frames', type=int, default=48, help='frames in the clip (1: a still)')
    parser.add_argument('--step', type=int, default=4, help='HR pixels the window moves a frame')
    parser.add_argument('--size', type=int, nargs=2, default=(480, 320), metavar=('W', 'H'),
                        help='the window, in HR pixels (multiples of 8: yuv420p needs even LR sides)')
    parser.add_argument('--crf', type=int, default=28, help="libx264's constant rate factor for the LR clip")
    parser.add_argument('--degrade', type=degrade_flag, default=None, metavar='SPEC',
                        help='degrade the LR frames with this eval.py --degrade spec instead of the codec')
    parser.add_argument('--sheet', default=None, help="save the middle frame's crop grid here (.png)")
    parser.add_argument('--crop', type=int, default=96, help='side of the crop, HR pixels')
    args = parser.parse_args(argv)
    if any(side % (2 * SCALE) for side in args.size):
        parser.error(f'--size {args.size[0]} {args.size[1]}: both sides must be multiples of {2 * SCALE}')
    return args


def main(argv=None):
    args = parse_args(argv)
    hr_frames = pan(hr_photo(args.image), args.frames, args.step, args.size)
    lr_frames = [metrics.make_lr(Image.fromarray(hr.permute(1, 2, 0).numpy()), SCALE, 'matlab') for hr in hr_frames]
    if args.degrade is not None:
        degrade, compressed = Degradations(args.degrade, seed=0), args.degrade
        lr_seen = [degrade.uint8(lr_img, key) for key, lr_img in enumerate(lr_frames)]
    else:
        lr_seen, compressed = through_codec(lr_frames, args.crf), f'libx264 CRF {args.crf}'
    upscalers = {'Bicubic': None} | {Path(m).name: inference.load_upscaler(m, precision='fp32') for m in args.models}
    for name, upscaler in upscalers.items():
        if upscaler is not None and upscaler.scaling_factor != SCALE:
            raise SystemExit(f'error: {name} upscales x{upscaler.scaling_factor}; this compares x{SCALE} models')
    print(f'{len(hr_frames)} frame(s) of {args.size[0]}x{args.size[1]} HR, LR {args.size[0] // SCALE}x'
          f'{args.size[1] // SCALE}; PSNR (dB) / SSIM, Y channel, border {SCALE}, mean over the frames\n')
    print('| LR | ' + ' | '.join(upscalers) + ' |')
    print('|---|' + '---|' * len(upscalers))
    for label, lr in (('clean', lr_frames), (compressed, lr_seen)):
        sr = {name: upscale(upscaler, lr) for name, upscaler in upscalers.items()}
        cells = [scores(frames, hr_frames) for frames in sr.values()]
        print(f'| {label} | ' + ' | '.join(f'{p:.2f} / {s:.4f}' for p, s in cells) + ' |')
    if args.sheet:
        middle = len(hr_frames) // 2
        panels = {f'{name} ({compressed})': frames[middle] for name, frames in list(sr.items())[:3]}
        crop_sheet(panels, hr_frames[middle], args.crop, args.sheet)
        print(f'\nthe crop of frame {middle}: {args.sheet}')


if __name__ == '__main__':
    main()

"""
The training-progress animation: a run's validation sample sheets (samples/iter_*.png, one per --val-every) played
in order, each frame labelled with its iteration and validation PSNR, so that one sees the images honed and the
details emerge. The trainers make it at the end of a run; for any run folder, at any time:

    python train_srresnet.py --animate runs/srresnet                  # -> runs/srresnet/progress.webp
    python train_srgan.py --animate runs/srgan --animate-to srgan.gif  # GIF, or .mp4 (through PyAV)

Kept small enough for a README (a few MB at most): at most MAX_FRAMES frames (evenly spaced, the first and the
last always in), sheets larger than MAX_SIDE scaled down, lossy WebP at quality 80 (GIF: one 256-colour palette per
frame; MP4: H.264 at CRF 23), the last frame held longer.
"""

import glob
import os
import re
from fractions import Fraction
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from outputs import atomic_path
from utils import ImageLoadError, UserError, load_image

MAX_FRAMES = 40  # a run validated more often is sampled evenly
MAX_SIDE = 640  # px, the longer side of a frame
FRAME_MS, LAST_FRAME_MS = 600, 2400  # how long each frame shows; the last one, longer
FORMATS = ('.webp', '.gif', '.mp4')


class Animation(NamedTuple):
    path: str
    frames: int
    skipped: list  # the sheets left out, unreadable (a file cut short): their ImageLoadError messages


def sample_sheets(run_dir):
    """-> [(iteration, path)] of the run's sample sheets, by iteration."""
    sheets = []
    for path in glob.glob(os.path.join(run_dir, 'samples', 'iter_*.png')):
        match = re.fullmatch(r'iter_(\d+)\.png', os.path.basename(path))
        if match:
            sheets.append((int(match.group(1)), path))
    return sorted(sheets)


def evenly(items, n):
    """At most n of `items`, evenly spaced, the first and the last always among them."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def labelled_frame(sheet, text, max_side=MAX_SIDE):
    """A sample sheet (PIL) scaled to fit max_side, under a bar with `text` in it -> PIL RGB, even sides (H.264)."""
    scale = min(1.0, max_side / max(sheet.size))
    if scale < 1:
        sheet = sheet.resize((round(sheet.width * scale), round(sheet.height * scale)), Image.LANCZOS)
    font = ImageFont.load_default(size=max(12, sheet.width // 28))
    left, top, right, bottom = ImageDraw.Draw(sheet).textbbox((0, 0), text, font=font)
    bar = (bottom - top) + 2 * (bottom - top) // 2
    width, height = sheet.width + sheet.width % 2, sheet.height + bar + (sheet.height + bar) % 2
    frame = Image.new('RGB', (width, height), 'white')
    frame.paste(sheet.convert('RGB'), (0, bar))
    ImageDraw.Draw(frame).text(((width - (right - left)) // 2 - left, (bar - (bottom - top)) // 2 - top), text,
                               fill='black', font=font)
    return frame


def make_animation(run_dir, psnrs, out_path=None):
    """Assemble the sample sheets of `run_dir` into an animation at out_path (default run_dir/progress.webp; the
    suffix picks .webp, .gif or .mp4: the caller plans it, see training.animate_run), written atomically. psnrs:
    {iteration: (validation set, PSNR)} from the log, for the labels. A sheet that cannot be read is left out.
    -> Animation, or None when the run has fewer than two sheets; a UserError when fewer than two can be read."""
    out_path = out_path or os.path.join(run_dir, 'progress.webp')
    ext = os.path.splitext(out_path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f'{out_path}: an animation is {", ".join(FORMATS)}; name the file so')
    sheets = evenly(sample_sheets(run_dir), MAX_FRAMES)
    if len(sheets) < 2:
        return None
    frames, skipped = [], []
    for iteration, path in sheets:
        try:
            sheet = load_image(path)  # PIL RGB; a file cut short is an ImageLoadError
        except ImageLoadError as e:
            skipped.append(str(e))
            continue
        val_set, psnr = psnrs.get(iteration, (None, None))
        label = f'iteration {iteration:,}' + (f'   {val_set} PSNR {psnr:.2f} dB' if psnr is not None else '')
        frames.append(labelled_frame(sheet, label))
    if len(frames) < 2:
        raise UserError(f'{run_dir}/samples: {len(skipped)} of its {len(sheets)} sample sheets cannot be read (the '
                        f'first: {skipped[0]}), too few left to animate')
    size = frames[-1].size  # sheets of one run share a size; a resumed run with another --val-set might not
    frames = [frame if frame.size == size else frame.resize(size, Image.LANCZOS) for frame in frames]
    with atomic_path(out_path) as tmp_path:
        (save_mp4 if ext == '.mp4' else save_pillow)(frames, tmp_path)
    return Animation(out_path, len(frames), skipped)


def save_pillow(frames, path):
    """Frames -> an animated WebP or GIF (by the suffix of `path`) that loops."""
    durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
    if path.lower().endswith('.gif'):
        frames = [frame.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for frame in frames]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
    else:
        frames[0].save(path, format='WEBP', save_all=True, append_images=frames[1:], duration=durations, loop=0,
                       quality=80, method=4)


def save_mp4(frames, path):
    """Frames -> an H.264 MP4 (PyAV), each frame FRAME_MS long, the last LAST_FRAME_MS."""
    import av  # only MP4 needs it
    time_base = Fraction(1, 1000)
    with av.open(path, 'w', format='mp4') as container:
        stream = container.add_stream('libx264' if 'libx264' in av.codecs_available else 'mpeg4', rate=1000 // FRAME_MS)
        stream.width, stream.height, stream.pix_fmt = *frames[0].size, 'yuv420p'
        stream.codec_context.time_base = time_base
        if stream.codec_context.name == 'libx264':
            stream.codec_context.options = {'crf': '23'}
        for i, frame in enumerate(frames + [frames[-1]]):  # the last one again: it shows until LAST_FRAME_MS
            video_frame = av.VideoFrame.from_ndarray(np.asarray(frame), format='rgb24')
            video_frame.pts = i * FRAME_MS if i < len(frames) else (len(frames) - 1) * FRAME_MS + LAST_FRAME_MS
            video_frame.time_base = time_base
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))

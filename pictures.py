"""
Pictures of a training run, all made from what the run writes to its --output-dir:

    sample sheets   samples/iter_*.png at each validation: LR-bicubic / SR / HR centre crops (save_sample_sheet)
    loss curves     loss_curves.png: one panel per value of log.jsonl (read_log, the one reader of training logs)
    the animation   progress.webp: the sample sheets played in order, each frame labelled with its iteration and
                    validation PSNR, so that one sees the images honed and the details emerge (animate_run)

The trainers make the curves and the animation at the end of a sitting; for any run folder, at any time:

    python train_srresnet.py --animate runs/srresnet                  # -> runs/srresnet/progress.webp
    python train_srgan.py --animate runs/srgan --animate-to srgan.gif  # GIF, or .mp4 (through PyAV)

The animation is kept small enough for a README (a few MB at most): at most MAX_FRAMES frames (evenly spaced, the
first and the last always in), sheets larger than MAX_SIDE scaled down, lossy WebP at quality 80 (GIF: one
256-colour palette per frame; MP4: H.264 at CRF 23), the last frame held longer.
"""

import glob
import json
import os
import re
import sys
from fractions import Fraction
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from outputs import OutputPlan, atomic_path
from images import load_image
from utils import ImageLoadError, UserError, convert_image

LOG_FILE = 'log.jsonl'  # a training run's log, in its --output-dir
MAX_FRAMES = 40  # a run validated more often is sampled evenly
MAX_SIDE = 640  # px, the longer side of a frame
FRAME_MS, LAST_FRAME_MS = 600, 2400  # how long each frame shows; the last one, longer
FORMATS = ('.webp', '.gif', '.mp4')


# ----------------------------------------------------------------------------------------------------------------
# Sample sheets

def sheet_row(lr_img, sr_img, hr_img, s, crop=128):
    """Centre crops (PIL) of the bicubic upscaling of the LR image, the SR image and the HR image."""
    height, width = hr_img.shape[-2:]
    size = min(crop, height, width) // s * s
    top, left = (height - size) // 2 // s * s, (width - size) // 2 // s * s
    lr = convert_image(lr_img[:, top // s:(top + size) // s, left // s:(left + size) // s], 'imagenet-norm', 'pil')
    bicubic = lr.resize((size, size), Image.BICUBIC)
    sr = convert_image(sr_img[:, top:top + size, left:left + size], '[-1, 1]', 'pil')
    hr = convert_image(hr_img[:, top:top + size, left:left + size], '[-1, 1]', 'pil')
    return bicubic, sr, hr


def save_sample_sheet(rows, path, gap=4, header=16):
    """rows of (bicubic, SR, HR) PIL crops (sheet_row) -> one PNG at `path`, the columns titled."""
    size = max(img.width for row in rows for img in row)
    sheet = Image.new('RGB', (3 * size + 2 * gap, header + len(rows) * (size + gap) - gap), 'white')
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(('LR, bicubic', 'SR', 'HR')):
        draw.text((column * (size + gap) + 2, 2), title, fill='black')
    for r, row in enumerate(rows):
        for column, img in enumerate(row):
            sheet.paste(img, (column * (size + gap), header + r * (size + gap)))
    with atomic_path(path) as tmp_path:
        sheet.save(tmp_path, format='PNG')


# ----------------------------------------------------------------------------------------------------------------
# The log and its curves

def read_log(path):
    """The rows of a log.jsonl, the one reader of training logs: each row a JSON object with an integer 'iteration'
    and numbers for the rest. Other lines are skipped, with a note of how many (one line, naming the first); a last
    line cut short by a kill while it was written is skipped without one (a resumed run drops it anyway). A UserError
    when the file cannot be read."""
    try:
        with open(path, 'rb') as f:
            *lines, last = f.read().split(b'\n')  # last: b'' after a final newline, else a line cut short
    except OSError as e:
        raise UserError(f'cannot read the training log {path}: {e.strerror or e}') from None
    rows, bad = [], []
    for line_number, line in enumerate(lines, 1):
        row = _log_row(line)
        if row is not None:
            rows.append(row)
        elif line.strip():
            bad.append(line_number)
    last_row = _log_row(last)
    if last_row is not None:  # a whole row that lacks only its newline
        rows.append(last_row)
    if bad:
        print(f'note: {path}: {len(bad)} line{"s" * (len(bad) > 1)} skipped, not log rows (a JSON object with an '
              f'integer "iteration" and numbers), the first: line {bad[0]}', file=sys.stderr)
    return rows


def _log_row(line):
    """A line of log.jsonl -> its row, or None when it is not one."""
    try:
        row = json.loads(line)
    except ValueError:  # not JSON, not UTF-8, empty
        return None
    if not isinstance(row, dict) or type(row.get('iteration')) is not int:
        return None
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in row.values()):
        return None
    return row


def plot_loss_curves(log_path, png_path):
    """One panel per logged value (losses, D outputs, validation PSNR) against the iteration. Needs matplotlib;
    returns False without it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = read_log(log_path)
    names = [name for name in dict.fromkeys(k for row in rows for k in row)
             if name not in {'iteration', 'lr', 'data_ms', 'step_ms'}]
    if not names:
        return False
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.2 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        points = [(row['iteration'], row[name]) for row in rows if name in row]
        ax.plot(*zip(*points), marker='.' if len(points) < 50 else None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel('iteration')
    fig.tight_layout()
    try:
        with atomic_path(png_path) as tmp_path:
            fig.savefig(tmp_path, dpi=100, format='png')
    finally:
        plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------------------
# The animation

def animate_run(run_dir, out_path=None, overwrite=False):
    """The training-progress animation of `run_dir` (make_animation), labelled with the validation PSNRs
    of its log, at out_path (default: the run's own RUN_DIR/progress.webp, replaced; another existing file only with
    overwrite); says where it went in one line. A UserError (one line) for a folder that is not a run, an output
    the plan refuses, or sheets none of which can be read."""
    samples = os.path.join(run_dir, 'samples')
    if not os.path.isdir(samples):
        raise UserError(f'--animate {run_dir}: no samples/ folder there; pass the --output-dir of a training run (it '
                        f'writes samples/iter_*.png at each validation)')
    log, own_path = os.path.join(run_dir, LOG_FILE), os.path.join(run_dir, 'progress.webp')
    own = out_path is None or os.path.abspath(out_path) == os.path.abspath(own_path)
    plan = OutputPlan(reads=[log], read_folders=[samples], overwrite=overwrite)
    out_path = plan.file(out_path or own_path, '--animate' if own else '--animate-to', formats=FORMATS,
                         if_exists='replace' if own else None)
    psnrs = {}
    for row in read_log(log) if os.path.isfile(log) else []:
        for key, value in row.items():
            if key.startswith('val_psnr_'):
                psnrs[row['iteration']] = (key.removeprefix('val_psnr_'), value)
    made = make_animation(run_dir, psnrs, os.fspath(out_path))
    if made is None:
        print(f'no animation: {run_dir}/samples has fewer than two sample sheets (one per --val-every)')
        return None
    if made.skipped:
        print(f'note: {len(made.skipped)} sample sheet{"s" * (len(made.skipped) > 1)} left out, unreadable; the '
              f'first: {made.skipped[0]}', file=sys.stderr)
    print(f'animation: {made.path} ({made.frames} frames, {os.path.getsize(made.path) / 1e6:.2f} MB)')
    return made.path


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

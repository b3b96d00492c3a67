"""pictures.py's animation and --animate: a run's sample sheets as a labelled, looping animation (WebP, GIF, MP4)."""

import json

import numpy as np
import pytest
from PIL import Image

import pictures
import train_srgan
import train_srresnet
from outputs import OutputError
from utils import UserError


def fake_run(folder, iterations, size=(120, 100)):
    """A run folder as the trainers leave it: samples/iter_*.png (each a different flat grey) and log.jsonl."""
    (folder / 'samples').mkdir(parents=True)
    with open(folder / 'log.jsonl', 'w') as log:
        for i, iteration in enumerate(iterations):
            grey = 40 + 200 * i // max(1, len(iterations) - 1)
            Image.new('RGB', size, (grey,) * 3).save(folder / 'samples' / f'iter_{iteration:07d}.png')
            log.write(json.dumps({'iteration': iteration, 'loss': 0.1}) + '\n')
            log.write(json.dumps({'iteration': iteration, 'val_psnr_Set5': 20 + i, 'val_ssim_Set5': 0.5}) + '\n')
    return folder


def frames_of(path):
    with Image.open(path) as img:
        frames = []
        for i in range(img.n_frames):
            img.seek(i)
            frames.append((np.asarray(img.convert('RGB')).astype(int), img.info.get('duration')))
        return frames


def test_animate_labels_each_sheet_in_order_and_holds_the_last(tmp_path, capsys):
    run = fake_run(tmp_path / 'run', [500, 1000, 1500])
    train_srresnet.main(['--animate', str(run)])
    assert f'animation: {run}/progress.webp (3 frames, ' in capsys.readouterr().out
    frames = frames_of(run / 'progress.webp')
    assert len(frames) == 3
    for i, (pixels, duration) in enumerate(frames):
        assert pixels.shape[1] == 120 and pixels.shape[0] > 100  # the sheet under a label bar, its width kept
        bar, sheet = pixels[:pixels.shape[0] - 100], pixels[-95:]
        assert bar.min() < 100 and bar.max() > 200  # dark text on white
        assert abs(sheet.mean() - (40 + 100 * i)) < 4  # the sheets in iteration order (lossy WebP)
        assert duration == (pictures.LAST_FRAME_MS if i == 2 else pictures.FRAME_MS)
    labels = [pictures.labelled_frame(Image.new('RGB', (120, 100)), text)
              for text in ('iteration 500   Set5 PSNR 20.00 dB', 'iteration 1,000   Set5 PSNR 21.00 dB')]
    assert not np.array_equal(*(np.asarray(label)[:-100] for label in labels))  # the label says which frame


@pytest.mark.parametrize('name', ['progress.gif', 'progress.mp4'])
def test_gif_and_mp4(tmp_path, name):
    run = fake_run(tmp_path / 'run', [10, 20, 30, 40])
    train_srgan.main(['--animate', str(run), '--animate-to', str(tmp_path / name)])
    if name.endswith('.gif'):
        frames = frames_of(tmp_path / name)
        assert len(frames) == 4 and frames[-1][1] == pictures.LAST_FRAME_MS
    else:
        av = pytest.importorskip('av')
        with av.open(str(tmp_path / name)) as container:
            frames = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
        assert len(frames) == 5  # the last one repeated, to hold it
        assert [abs(f[-90:].mean() - g) < 6 for f, g in zip(frames, (40, 106, 173, 240))] == [True] * 4


def test_a_long_run_is_sampled_evenly_and_kept_small(tmp_path):
    run = fake_run(tmp_path / 'run', list(range(100, 10_100, 100)), size=(1200, 900))  # 100 sheets, large
    path, n_frames, skipped = pictures.make_animation(str(run), {})
    assert n_frames == pictures.MAX_FRAMES and skipped == []
    with Image.open(path) as img:
        assert max(img.size) <= pictures.MAX_SIDE + 80 and img.size[0] % 2 == 0 and img.size[1] % 2 == 0
    assert pictures.evenly(list(range(100)), 40)[::39] == [0, 99]  # the first and the last always in


def test_what_cannot_be_animated_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match=r'^--animate .*nowhere: no samples/ folder there'):
        train_srresnet.main(['--animate', str(tmp_path / 'nowhere')])
    run = fake_run(tmp_path / 'run', [100])
    train_srresnet.main(['--animate', str(run)])
    assert 'fewer than two sample sheets' in capsys.readouterr().out and not (run / 'progress.webp').exists()
    run = fake_run(tmp_path / 'run2', [100, 200])
    with pytest.raises(OutputError, match=r'^--animate-to .*progress.avi: cannot write .avi here; name it \*.webp or '
                                          r'\*.gif or \*.mp4'):
        train_srresnet.main(['--animate', str(run), '--animate-to', str(tmp_path / 'progress.avi')])

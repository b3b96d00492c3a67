"""Smoke tests of the benchmarks: each documented command at its smallest settings, so a benchmark that no longer
runs against the code fails CI. (Their numbers are measured by hand; timing belongs in no test.)"""

import re

import pytest
from PIL import Image

from conftest import REPO, run_process, save_srresnet


# The multiply-adds of the default SRResNet step for one 24x24 LR image, layer by layer (in_channels x out_channels x
# kernel area x pixels), as speedups.for_training runs it: the last 9x9 convolution on 3 channels at 96x96 becomes
# a 5x5 one from the 256 channels before the last pixel shuffle to 12 at 48x48
SRRESNET_MACS = (3 * 64 * 81 * 24 ** 2                # the first 9x9 convolution
                 + 33 * 64 * 64 * 9 * 24 ** 2         # 16 residual blocks x 2, and the one after them
                 + 64 * 256 * 9 * (24 ** 2 + 48 ** 2)  # the two sub-pixel convolutions (x2 each)
                 + 256 * 12 * 25 * 48 ** 2)           # the last convolution
# a training step: 2 FLOPs a multiply-add, the backward twice the forward but the first layer's (no input gradient)
SRRESNET_GFLOP_PER_IMAGE = (3 * 2 * SRRESNET_MACS - 2 * 3 * 64 * 81 * 24 ** 2) / 1e9  # 7.85


@pytest.fixture(scope='module')
def tiny_x4(tmp_path_factory):
    """An untrained SRResNet x4 of 8 channels and 1 block."""
    return save_srresnet(tmp_path_factory.mktemp('model') / 'x4.pt', n_channels=8, n_blocks=1, scaling_factor=4)


def run_benchmark(*args):
    """The documented command, as a user runs it: `python benchmarks/NAME.py ARGS` -> its stdout."""
    return run_process(*args, timeout=600).stdout


def table_rows(text, first_cell):
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith(f'| {first_cell}')]


def test_train_step_benchmark_runs_both_steps():
    out = run_benchmark('benchmarks/train_step.py', '--batch-size', 2, '--repeats', 1, '--steps', 1, '--warmup', 0,
                        '--peak')
    peak = float(re.search(r'matrix product in torch\.\w+ at (\d+\.\d+) TFLOP/s', out).group(1))
    for name in ('SRResNet', 'SRGAN (G + D + VGG54)'):
        (row, peak_row) = table_rows(out, name)
        plain_ms, default_ms, speed_up = float(row[1]), float(row[2]), float(row[3].removesuffix('x'))
        assert plain_ms > 0 and default_ms > 0
        assert speed_up == pytest.approx(plain_ms / default_ms, abs=0.02)  # the ms are printed rounded
        gflop, eager_ms, tflops, percent = float(peak_row[1]), float(peak_row[2]), float(peak_row[3]), peak_row[4]
        assert eager_ms == pytest.approx(default_ms, abs=0.51)
        assert tflops == pytest.approx(gflop / eager_ms, rel=0.05, abs=0.002)  # GFLOP / ms = TFLOP/s
        assert float(percent.removesuffix('%')) == pytest.approx(100 * tflops / peak, rel=0.05, abs=1)
    srresnet_gflop = float(table_rows(out, 'SRResNet')[1][1])  # batch 2
    assert srresnet_gflop == pytest.approx(SRRESNET_GFLOP_PER_IMAGE * 2, rel=0.001)


def test_inference_benchmark_runs_every_path_on_the_shipped_model():
    out = run_benchmark('benchmarks/inference.py', '--size', 32, '--tile', 24, '--repeats', 1, '--memory',
                        '--memory-size', 64, '--onnx')
    assert 'checkpoint' in out.splitlines()[0] and 'weights/srresnet_x4.pt' in out  # the shipped weights load
    rows = [row for row in table_rows(out, '') if row[0] not in {'path', '---'} and not row[0].startswith('-')]
    names = [row[0] for row in rows]
    assert names[0] == 'tutorial forward (no_grad, NCHW)' and names[-3] == 'DEFAULT (super_resolve.py)'
    assert [row[:2] for row in rows[-2:]] == [['onnxruntime (super_resolve.py --model X.onnx)', precision]
                                              for precision in ('fp32', 'fp16')]
    assert 'speedups.for_inference' in names and 'autocast + channels_last' in names
    psnrs = [float(row[9]) for row in rows]
    assert all(20 < psnr < 40 for psnr in psnrs)  # every path super-resolves (Set5 baby or the astronaut)
    assert all(abs(psnr - psnrs[0]) < 0.05 for psnr in psnrs)  # and computes the tutorial's function
    assert re.search(r'64x64 -> 256x256 PNG, default settings: peak RSS \d+\.\d+ GB', out)


def test_inference_benchmark_times_the_whole_process_against_the_tutorials_forward():
    """--whole-process, with this checkout as the --before one too: every round times each CLI and the forward."""
    out = run_benchmark('benchmarks/inference.py', '--whole-process', '--whole-process-size', 32, '--repeats', 2,
                        '--before', REPO)
    assert '32x32 -> 128x128 PNG, 2 rounds' in out
    (cli,) = table_rows(out, 'python super_resolve.py photo.png -o out.png (whole process)')
    (before,) = table_rows(out, f'the same, {REPO} (whole process)')
    (tutorial,) = table_rows(out, "the tutorial's fp32 forward alone")
    (tail,) = table_rows(out, 'of which its last 9x9 convolution')
    runs = [[float(t) for t in row[2].split()] for row in (cli, before, tutorial, tail)]
    assert all(len(r) == 2 and all(t > 0 for t in r) for r in runs)
    assert 0 < float(tail[1]) < float(tutorial[1])
    ratios = re.findall(r"the whole process is [\d.]+x as fast as the tutorial's forward alone \(tutorial / whole "
                        r'process, median of the rounds: ([\d. ]+)\)', out)
    assert len(ratios) == 2
    for found, cli_runs in zip(ratios, runs[:2]):
        assert [float(r) for r in found.split()] == pytest.approx([t / c for c, t in zip(cli_runs, runs[2])],
                                                                  abs=0.01)


def test_train_step_quality_benchmark(shared_data):
    out = run_benchmark('benchmarks/train_step.py', '--quality', 2, '--batch-size', 2, '--train-folders',
                        shared_data / 'Set14', '--set5', shared_data / 'Set5')
    psnrs = [float(x) for x in re.findall(r'Set5 PSNR (\d+\.\d+) dB', out)]
    assert len(psnrs) == 2 and all(10 < psnr < 35 for psnr in psnrs)
    assert 'difference:' in out


def test_train_step_end_to_end_benchmark_times_the_script_beside_the_step(demo_data):
    out = run_benchmark('benchmarks/train_step.py', '--end-to-end', 3, '--log-every', 1, '--models', 'srresnet',
                        '--batch-size', 2, '--repeats', 1, '--steps', 1, '--warmup', 0, '--train-folders',
                        demo_data / 'none')
    (row,) = table_rows(out, 'train_srresnet.py')
    end_to_end, data_wait, step, ratio = map(float, row[1:])
    assert 0 <= data_wait < end_to_end and step > 0
    assert ratio == pytest.approx(end_to_end / step, rel=0.2)  # the ms are printed rounded


@pytest.mark.parametrize('lr_flags, compressed', [(['--crf', '45'], 'libx264 CRF 45'), (['--degrade', 'jpeg:20'],
                                                                                          'jpeg:20')])
def test_real_inputs_benchmark_scores_the_compressed_frames_below_the_clean(tiny_x4, tmp_path, lr_flags, compressed):
    """A strong codec (or JPEG) costs bicubic PSNR on every frame; the table has a row for each LR, a column for
    each model, and the crop sheet is visualize_sr's 2x2 grid of the x2-enlarged crop."""
    out = run_benchmark('benchmarks/real_inputs.py', tiny_x4, '--frames', 3, '--size', 96, 64, '--crop', 32,
                        '--sheet', tmp_path / 'crop.png', *lr_flags)
    clean, = table_rows(out, 'clean')
    degraded, = table_rows(out, compressed)
    assert len(clean) == len(degraded) == 3  # LR, bicubic, the model
    psnr = {row[0]: [float(cell.split(' / ')[0]) for cell in row[1:]] for row in (clean, degraded)}
    assert psnr['clean'][0] > psnr[compressed][0] + 1
    assert '3 frame(s) of 96x64 HR, LR 24x16' in out
    margin = round(1.75 * max(12, round(0.045 * 64)))
    assert Image.open(tmp_path / 'crop.png').size == (2 * 64 + 3 * margin, 2 * 64 + 3 * margin)

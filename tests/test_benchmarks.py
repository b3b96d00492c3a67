"""Smoke tests of the benchmarks: each documented command at its smallest settings, so a benchmark that no longer
runs against the code fails CI. (Their numbers are measured by hand; timing belongs in no test.)"""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


def run_benchmark(*args):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS='2'))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(text, first_cell):
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith(f'| {first_cell}')]


def test_train_step_benchmark_runs_both_steps():
    out = run_benchmark('benchmarks/train_step.py', '--batch-size', 2, '--repeats', 1, '--steps', 1, '--warmup', 0)
    for name in ('SRResNet', 'SRGAN (G + D + VGG54)'):
        (row,) = table_rows(out, name)
        plain_ms, default_ms, speed_up = float(row[1]), float(row[2]), float(row[3].removesuffix('x'))
        assert plain_ms > 0 and default_ms > 0
        assert speed_up == pytest.approx(plain_ms / default_ms, abs=0.02)  # the ms are printed rounded


def test_inference_benchmark_runs_every_path_on_the_shipped_model():
    out = run_benchmark('benchmarks/inference.py', '--size', 32, '--tile', 24, '--repeats', 1, '--memory',
                        '--memory-size', 64)
    assert 'checkpoint' in out.splitlines()[0] and 'weights/srresnet_x4.pt' in out  # the shipped weights load
    rows = [row for row in table_rows(out, '') if row[0] not in {'path', '---'} and not row[0].startswith('-')]
    names = [row[0] for row in rows]
    assert names[0] == 'tutorial forward (no_grad, NCHW)' and names[-1] == 'DEFAULT (super_resolve.py)'
    assert 'speedups.for_inference' in names and 'autocast + channels_last' in names
    psnrs = [float(row[9]) for row in rows]
    assert all(20 < psnr < 40 for psnr in psnrs)  # every path super-resolves (Set5 baby or the astronaut)
    assert all(abs(psnr - psnrs[0]) < 0.05 for psnr in psnrs)  # and computes the tutorial's function
    assert re.search(r'64x64 -> 256x256 PNG, default settings: peak RSS \d+\.\d+ GB', out)


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

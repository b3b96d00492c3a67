"""What the test files share: where the repo and the real test images are, tiny models and pictures, the flags of a
training run of seconds, and the two ways to run a script: in this process (`cli`, as `python script ...` would run,
without the ~7 s a new process spends importing torch) or in a new one (`run_process` / `start_process`, where the
process itself is the point: signals, resource limits, torchrun, a fresh interpreter, the README's commands)."""

import contextlib
import gc
import io
import os
import resource
import runpy
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Real images beside the checkout (../shared/data); users won't have them, so tests that need them skip.
SHARED_DATA = REPO.parent / 'shared' / 'data'

# Under pytest -n N, each worker computes with its share of the cores: more threads than cores spend their time
# spinning, waiting for one (a script run in a new process keeps two threads: start_process)
if 'PYTEST_XDIST_WORKER_COUNT' in os.environ:
    torch.set_num_threads(max(1, os.cpu_count() // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))

SMALL = ['--batch-size', '2', '--crop-size', '48', '--workers', '0', '--log-every', '1']  # short runs, each step logged
TINY = ['--n-blocks', '1', '--n-channels', '8']  # an SRResNet of 0.01M parameters
QUICK_X2 = ['--scaling-factor', '2', '--crop-size', '24', '--batch-size', '2', '--workers', '0', '--log-every', '1',
            '--compile', 'off']  # the smallest training step, for either trainer


# ---------------------------------------------------------------------------------------------------------------
# Data

@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    """The demo lists (scikit-image's photos), written once per test module."""
    from create_data_lists import create_demo_lists
    folder = tmp_path_factory.mktemp('data')
    with contextlib.redirect_stdout(io.StringIO()):
        create_demo_lists(str(folder))
    return folder


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / 'Set5').is_dir():
        pytest.skip('../shared/data is not present')
    return SHARED_DATA


def photo(path, size=(24, 20), seed=0):
    """A picture of random pixels, size = (width, height), at `path` (any format Pillow writes) -> path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def smooth_photo(width, height, seed=0):
    """A smooth colour image with some texture, as photos have: np.uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 7.0), 128 + 100 * np.cos(y / 5.0), 128 + 60 * np.sin((x + y) / 9.0)], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def write_png_16(path, pixels):
    """(H, W, 3 or 4) uint16 -> a 48/64-bit PNG, written by hand (Pillow 13 cannot write one)."""
    import struct
    import zlib

    height, width, channels = pixels.shape
    rows = pixels.astype('>u2').reshape(height, -1).view(np.uint8)  # big-endian samples, row by row
    raw = b''.join(b'\x00' + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    ihdr = struct.pack('>IIBBBBB', width, height, 16, 2 if channels == 3 else 6, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(raw))
                     + chunk(b'IEND', b''))


def make_video(path, n_frames=8, size=(32, 24), fps=12, sample_rate=16000):
    """A tiny h264/mpeg4 + AAC clip written with PyAV itself (skips the test without PyAV)."""
    av = pytest.importorskip('av')
    with av.open(str(path), 'w') as container:
        video = container.add_stream('libx264' if 'libx264' in av.codecs_available else 'mpeg4', rate=fps)
        video.width, video.height, video.pix_fmt = *size, 'yuv420p'
        audio = container.add_stream('aac', rate=sample_rate)
        audio.layout = 'mono'
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(smooth_photo(*size, seed=i), format='rgb24')
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        t = np.arange(sample_rate * n_frames // fps) / sample_rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, n) mono, fltp
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format='fltp',
                                               layout='mono')
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


# ---------------------------------------------------------------------------------------------------------------
# Models

def save_srresnet(path, seed=0, **config):
    """An untrained SRResNet(**config) in the repo's checkpoint format at `path` -> path."""
    from checkpoints import save_checkpoint
    from models import SRResNet
    torch.manual_seed(seed)
    save_checkpoint({'kind': 'srresnet', 'model_config': config, 'model': SRResNet(**config).state_dict()}, path)
    return path


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """An untrained SRResNet x2 of 8 channels and 1 block: runs on a tiny image in milliseconds."""
    return save_srresnet(tmp_path_factory.mktemp('model') / 'tiny.pt', n_channels=8, n_blocks=1, scaling_factor=2)


def tutorial_srresnet_keys(n_blocks=16, n_subpixel=2):
    """The original tutorial's SRResNet state_dict layout, written out by hand: {key: shape}."""
    keys = {'conv_block1.conv_block.0.weight': (64, 3, 9, 9), 'conv_block1.conv_block.0.bias': (64,),
            'conv_block1.conv_block.1.weight': (1,)}
    bn = {'weight': (64,), 'bias': (64,), 'running_mean': (64,), 'running_var': (64,), 'num_batches_tracked': ()}
    for b in range(n_blocks):
        for c in (1, 2):
            keys[f'residual_blocks.{b}.conv_block{c}.conv_block.0.weight'] = (64, 64, 3, 3)
            keys[f'residual_blocks.{b}.conv_block{c}.conv_block.0.bias'] = (64,)
            keys.update({f'residual_blocks.{b}.conv_block{c}.conv_block.1.{k}': s for k, s in bn.items()})
        keys[f'residual_blocks.{b}.conv_block1.conv_block.2.weight'] = (1,)  # PReLU
    keys['conv_block2.conv_block.0.weight'] = (64, 64, 3, 3)
    keys['conv_block2.conv_block.0.bias'] = (64,)
    keys.update({f'conv_block2.conv_block.1.{k}': s for k, s in bn.items()})
    for b in range(n_subpixel):
        keys[f'subpixel_convolutional_blocks.{b}.conv.weight'] = (256, 64, 3, 3)
        keys[f'subpixel_convolutional_blocks.{b}.conv.bias'] = (256,)
        keys[f'subpixel_convolutional_blocks.{b}.prelu.weight'] = (1,)
    keys['conv_block3.conv_block.0.weight'] = (3, 64, 9, 9)
    keys['conv_block3.conv_block.0.bias'] = (3,)
    return keys


class SmallMemory(torch.nn.Module):
    """`model` on a device that runs out of memory as CUDA does on inputs of more than `max_pixels` pixels."""

    def __init__(self, model, max_pixels):
        super().__init__()
        self.model, self.max_pixels = model, max_pixels

    def forward(self, x):
        if x.shape[-1] * x.shape[-2] > self.max_pixels:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
        return self.model(x)


# ---------------------------------------------------------------------------------------------------------------
# Running a script

def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def cli(script, *args, check=True, cwd=REPO):
    """`python script args` run in this process, from `cwd` -> SimpleNamespace(returncode, stdout, stderr), as the
    interpreter gives them: the script runs as __main__ (so through utils.run_main), its warnings are printed, and a
    SystemExit with a message prints it and gives status 1. Any other exception (a traceback) fails the test; so does
    an exit status but 0 when `check`."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, returncode = sys.argv, 0
    environ, collecting, threads = dict(os.environ), gc.isenabled(), torch.get_num_threads()
    sys.argv = [script, *map(str, args)]
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter('default')  # the interpreter's: each warning once per place
            warnings.showwarning = _print_warning  # to this stderr, not to pytest's record
            try:
                runpy.run_path(str(REPO / script), run_name='__main__')
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    returncode = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    returncode = 1
    finally:  # what the process would have taken with it: its argv, environment, garbage collector, threads
        sys.argv = old_argv
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)
        if collecting:
            gc.enable()
        torch.set_num_threads(threads)
    if check and returncode != 0:
        raise AssertionError(f'{script} failed ({returncode}):\n{err.getvalue()[-3000:]}')
    return SimpleNamespace(returncode=returncode, stdout=out.getvalue(), stderr=err.getvalue())


def start_process(*args, cwd=REPO, env=None, file_size_limit=None, program=sys.executable, **popen_kwargs):
    """`python ARGS` (or `program ARGS`) in a new process from `cwd`, with two threads and text pipes -> its Popen.
    env: variables to set in this process's environment (None: to remove); file_size_limit: bytes any one file may
    grow to (a write past it fails with EFBIG, as on a full disk: Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    popen_kwargs.setdefault('stdout', subprocess.PIPE)
    popen_kwargs.setdefault('stderr', subprocess.PIPE)
    env = {**os.environ, 'OMP_NUM_THREADS': '2', **(env or {})}
    env = {name: value for name, value in env.items() if value is not None}
    return subprocess.Popen([program, *map(str, args)], cwd=cwd, env=env, text=True,
                            preexec_fn=limit if file_size_limit else None, **popen_kwargs)


def run_process(*args, check=True, timeout=300, **kwargs):
    """start_process(*args, **kwargs) to its end -> SimpleNamespace(returncode, stdout, stderr); check: fail the test
    unless the exit status is 0, with the end of its stderr."""
    process = start_process(*args, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # timed out: not left running
            process.kill()
            process.wait()
    if check and process.returncode != 0:
        raise AssertionError(f'{args[0]} failed ({process.returncode}):\n{stderr[-3000:]}')
    return SimpleNamespace(returncode=process.returncode, stdout=stdout, stderr=stderr)


def last_line(result):
    """The last line a run wrote to stderr: its `error:` line when it failed as a user's mistake."""
    return result.stderr.strip().splitlines()[-1]


def train_rows(output_dir):
    """The training rows of a run's log (validation rows have no lr); [] before the log is there."""
    from pictures import read_log
    path = Path(output_dir) / 'log.jsonl'
    return [row for row in read_log(path) if 'lr' in row] if path.is_file() else []

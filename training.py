"""
The training machinery that train_srresnet.py and train_srgan.py share, read top to bottom as a run goes:

    the flags both trainers take (training_argument_parser), with the paper's defaults
    setting up a run (setup_run -> Run): device, precision, DDP, seeds, the checkpoint to resume from
    the run's state (TrainingState) and the one place it is written and restored (save_run, restore_run)
    the data stream (make_train_loader), the moving average of the weights (--ema-decay)
    the loop (train_loop): log, validate, checkpoint, stop cleanly on SIGINT/SIGTERM or when --time-budget is spent

Each script keeps what makes it itself: its models, its optimizers and its train_step.
"""

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import speedups
from checkpoints import (CheckpointError, PickledCheckpointError, generator_state_dict, load_checkpoint,
                         save_checkpoint)
from datasets import (TEST_LIST_SUFFIX, TRAIN_LIST, DataListError, ImageCache, InfiniteSampler, SRDataset,
                      TrainingCrops, check_listed_files, decoded_size, read_image_list, test_set_names)
from animation import FORMATS as ANIMATION_FORMATS, make_animation
from inference import Upscaler
from metrics import evaluate_image
from outputs import OutputPlan, WriteError, atomic_path
from utils import (UserError, autocast_dtype, convert_image, downsample_batch, number, pick_device, seed_everything,
                   transpose_batch)

CHECKPOINT_FILE, BEST_CHECKPOINT_FILE, LOG_FILE = 'last.pt', 'best.pt', 'log.jsonl'
COMPILE_MIN_ITERATIONS = 5000  # --compile auto: compiling (~1 min on a CPU) pays for itself long before this
CACHE_FILE = 'train_images.cache'  # the decoded training images (datasets.ImageCache), beside train_images.json
CACHE_RAM_FRACTION = 0.5  # --image-cache auto decodes once when the decoded images take at most this share of RAM
DURATION_UNITS = {'d': 86400, 'h': 3600, 'm': 60, 's': 1}  # --time-budget 1h30m
LONG_RUN = 3600  # seconds: the estimate of a longer run suggests --time-budget
ESTIMATE_AFTER = 4  # steps before the estimate of the run's length: the first (warm-up, not counted) and 3 timed
DETERMINISTIC_COST = 'no cost measurable on a 2-core CPU; a GPU may lose cuDNN\'s fastest convolutions'  # README

# flags that may differ when resuming; a run continued with another value of one of these is noted as such
NOTED_ON_RESUME = ('batch_size', 'crop_size', 'seed', 'lr', 'beta1', 'lr_decay_at', 'blur_sigma', 'augment',
                   'no_amp', 'ema_decay')


# ----------------------------------------------------------------------------------------------------------------
# Flags

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help as the reference card: the description (a module docstring) as written, and '(default: ...)' after
    every flag that takes a value; not after on/off switches or None defaults, whose help says what they mean."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def training_argument_parser(description, output_dir, iterations, lr_decay_at):
    """The flags both training scripts share, with the paper's defaults; each script adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add = parser.add_argument
    add('--data-folder', default='./data', help='where train_images.json and the test lists are')
    add('--output-dir', default=output_dir,
        help="checkpoints, log, samples and plots go here: a folder per run, outside the listed images' folders")
    add('--iterations', type=number(int, minimum=1), default=iterations, help='training iterations (optimizer steps)')
    add('--batch-size', type=number(int, minimum=1), default=16, help='HR crops per step, per process (DDP: x N)')
    add('--lr', type=number(float, above=0), default=1e-4, help='Adam learning rate; may be changed when resuming')
    add('--lr-decay-at', type=number(int, minimum=0), default=lr_decay_at,
        help='multiply the lr by 0.1 from this iteration on' + ('' if lr_decay_at else ' (default: never, as the '
                                                                                     'paper)')
             + '; may be changed when resuming')
    add('--beta1', type=number(float, minimum=0, below=1), default=0.9,
        help="Adam's beta1; may be changed when resuming")
    add('--crop-size', type=number(int, minimum=8), default=96, help='side of the HR training crops')
    add('--scaling-factor', type=int, default=4, choices=[2, 4, 8], help='upscaling factor')
    add('--blur-sigma', type=number(float, minimum=0), default=0.0,
        help='Gaussian blur (sigma in HR pixels) before bicubic downsampling; 0: none, as the paper')
    add('--pillow-lr', action='store_true',
        help="make each LR with Pillow, one sample at a time (SRDataset, the reference; slower): by default the LR of "
             "a whole batch is made on the training device, within rounding of Pillow's (57.7 dB from it at x4)")
    add('--augment', action='store_true',
        help='flip and rotate the training crops by multiples of 90 degrees (not in the paper)')
    add('--image-cache', choices=['auto', 'on', 'off'], default='auto',
        help=f'decode the training images once into a memory-mapped file ({CACHE_FILE} beside the lists) that every '
             f'worker and DDP rank shares; auto: when, decoded, they take at most {CACHE_RAM_FRACTION * 100:.0f}%% '
             f"of this machine's memory (291 images: yes; the paper's 350k ImageNet photos: no, they are decoded from "
             f'disk in workers)')
    add('--cache-images', dest='image_cache', action='store_const', const='on', help='the same as --image-cache on')
    add('--workers', type=number(int, minimum=0), default=None,
        help='DataLoader worker processes (0: load in the training process). Default: none when the images are '
             'cached (a crop is a copy); else the cores left after the compute threads (the CPU: PyTorch\'s '
             f'{torch.get_num_threads()} threads; a GPU: 1), at most 8: {default_workers(torch.device("cpu"))} '
             f'here on the CPU, {default_workers(torch.device("cuda"))} with a GPU')
    add('--ema-decay', type=number(float, minimum=0, below=1), default=0.0,
        help='also keep an exponential moving average of the (generator) weights and BatchNorm statistics with '
             'this decay per iteration (e.g. 0.999); validation, best.pt, eval.py, super_resolve.py and '
             'train_srgan.py then use the average; 0: none, as the paper')
    add('--checkpoint-every', type=number(int, minimum=1), default=1000, help=f'write {CHECKPOINT_FILE} this often')
    add('--val-every', type=number(int, minimum=1), default=5000,
        help=f'validate (PSNR/SSIM, sample sheet, {BEST_CHECKPOINT_FILE}) this often')
    add('--val-set', default='auto',
        help="test list for validation: a name (Set5 -> Set5_test_images.json), 'none', or 'auto': Set5 if "
             "listed, else demo, else the first list found")
    add('--log-every', type=number(int, minimum=1), default=10, help='log averaged values this often')
    add_sitting_flags(add)
    add('--device', default='auto', help='auto (CUDA, else MPS, else CPU), or e.g. cuda:1, cpu')
    add('--no-amp', action='store_true',
        help='train in fp32 (default: bf16 autocast where supported, else fp16 + GradScaler on GPUs)')
    add('--compile', choices=['auto', 'on', 'off'], nargs='?', const='on', default='auto',
        help=f'torch.compile the models (a minute or more to start, then faster steps); auto: on when at least '
             f'{COMPILE_MIN_ITERATIONS} iterations are left to run and a compiler is there (a C++ compiler for the '
             f'CPU, Triton for CUDA), saying so; its cache is kept in --output-dir, so a resumed run starts fast')
    add('--sync-bn', action='store_true', help='DDP: BatchNorm statistics over all GPUs')
    add_animation_flags(add)
    return parser


def add_sitting_flags(add):
    """How a run is continued, by the clock or not, and reproduced."""
    add('--resume', default=None, metavar='PATH|auto',
        help=f'continue a run from a checkpoint; auto: {CHECKPOINT_FILE} in --output-dir if present')
    add('--time-budget', type=duration, default=None, metavar='TIME',
        help=f'stop cleanly once this much time has passed (90s, 10m, 2h, 1h30m; a number: seconds), with '
             f'{CHECKPOINT_FILE} saved and exit status 0; the same command with --resume auto goes on, the budget '
             f'counted afresh for that sitting')
    add('--seed', type=number(int, minimum=0, below=2 ** 31), default=0, help='seeds weights, data order and crops')
    add('--deterministic', action='store_true',
        help=f'two runs with the same flags and --seed give bit-identical checkpoints on one machine (at the same '
             f'number of threads): deterministic kernels only, cuDNN included and not benchmarked; '
             f'{DETERMINISTIC_COST}')


def add_animation_flags(add):
    """--animate and its output: training scripts also make a run's progress animation, training nothing."""
    add('--animate', metavar='RUN_DIR', help="train nothing: animate a run's sample sheets (made at every run's end)")
    add('--animate-to', metavar='PATH', help='--animate to PATH: .webp (default RUN_DIR/progress.webp), .gif, .mp4')
    add('--overwrite', action='store_true',
        help="--animate-to: replace an existing file (the run's own RUN_DIR/progress.webp is always replaced)")


def duration(text):
    """An argparse type: a length of time, '90s', '10m', '2h', '1h30m' or a number of seconds -> seconds (> 0)."""
    compact, amount = text.strip().lower(), r'\d+(?:\.\d+)?'
    seconds = 0.0
    if re.fullmatch(amount, compact):
        seconds = float(compact)
    elif re.fullmatch(f'({amount}[dhms])+', compact):
        seconds = sum(float(value) * DURATION_UNITS[unit] for value, unit in re.findall(f'({amount})([dhms])', compact))
    if not 0 < seconds < float('inf'):
        raise argparse.ArgumentTypeError(f'{text!r} is not a length of time > 0 such as 90s, 10m, 2h, 1h30m or a '
                                         f'number of seconds')
    return seconds


def format_duration(seconds):
    """Seconds in words, to the two largest units: '20 d 3 h', '17 min 24 s', '2 h', '0 s'."""
    seconds = max(0, round(seconds))
    units = ((86400, 'd'), (3600, 'h'), (60, 'min'), (1, 's'))
    for i, (size, name) in enumerate(units):
        if seconds >= size or size == 1:
            text = f'{seconds // size} {name}'
            if size > 1 and (rest := seconds % size // units[i + 1][0]):
                text += f' {rest} {units[i + 1][1]}'
            return text


# ----------------------------------------------------------------------------------------------------------------
# The run

class SittingClock:
    """The time of one sitting (this process's part of a run, from setup_run on; a resumed run is a new sitting):
    how long a step takes, and whether --time-budget leaves time for another."""
    now = staticmethod(time.monotonic)  # tests put a fake clock here

    def __init__(self, budget=None):
        self.budget = budget  # seconds, or None: no budget
        self.start = self.last_end = self.now()
        self.steps, self.first_end = 0, None

    def step_done(self, device):
        if device.type == 'cuda' and self.steps < ESTIMATE_AFTER:  # steps run ahead of the CPU: time them whole
            torch.cuda.synchronize(device)
        self.last_end = self.now()
        self.steps += 1
        if self.steps == 1:
            self.first_end = self.last_end

    def seconds_per_iteration(self):
        """Over this sitting's steps after the first (whose time includes the warm-up); None before the second.
        Validation and checkpoints included, in proportion."""
        return (self.last_end - self.first_end) / (self.steps - 1) if self.steps > 1 else None

    def left(self):
        return self.budget - (self.last_end - self.start)

    def budget_spent(self):
        """Whether another step would overrun --time-budget (until the second step is timed: whether it is over)."""
        return self.budget is not None and self.left() < (self.seconds_per_iteration() or 0)


@dataclasses.dataclass
class Run:
    """Where and how this process trains: set up once by setup_run, read by everything after it."""
    args: argparse.Namespace  # the flags
    kind: str  # 'srresnet' or 'srgan'
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32
    rank: int = 0  # DDP: this process's rank, and the number of processes
    world_size: int = 1
    checkpoint: dict | None = None  # the checkpoint being resumed; None: a new run
    val_set: str | None = None  # the test list validated on (choose_val_set); None: no validation
    clock: SittingClock = dataclasses.field(default_factory=SittingClock)  # this sitting's time and --time-budget

    @property
    def is_main(self):  # rank 0 logs, validates and saves
        return self.rank == 0

    @property
    def start_iteration(self):
        return self.checkpoint['iteration'] if self.checkpoint else 0

    @property
    def nothing_to_do(self):
        """A resumed run already at --iterations: the scripts return without building anything."""
        return self.start_iteration >= self.args.iterations

    @property
    def memory_format(self):
        return torch.preserve_format if self.device.type == 'mps' else torch.channels_last

    def lr_at(self, iteration):
        """The lr of step `iteration` (counted from 0): --lr, x 0.1 from --lr-decay-at on. Computed from the flags,
        never stored, so a resumed run follows the flags it is given."""
        decay_at = self.args.lr_decay_at
        return self.args.lr * (0.1 if decay_at is not None and iteration >= decay_at else 1.0)

    def describe(self):
        precision = str(self.amp_dtype).removeprefix('torch.') + ' autocast' if self.amp_dtype else 'fp32'
        threads = torch.get_num_threads()
        deterministic = f', deterministic ({threads} thread{"s" * (threads > 1)})' if self.args.deterministic else ''
        return (f'{self.device}, {precision}, {self.world_size} process(es), effective batch '
                f'{self.args.batch_size * self.world_size}{deterministic}')


def setup_run(args, kind):
    """Check the flags and where the run writes, start DDP when run under torchrun, pick the device and mixed
    precision, seed, and read the checkpoint to resume from. -> Run (see Run.nothing_to_do)."""
    clock = SittingClock(args.time_budget)  # the checks and the start-up count against the budget too
    if args.deterministic:
        make_deterministic()  # before anything starts CUDA
    OutputPlan().folder(args.output_dir, '--output-dir')  # a file there, a name too long: said before anything else
    if args.crop_size % args.scaling_factor:
        raise UserError(f'--crop-size {args.crop_size} must be divisible by --scaling-factor {args.scaling_factor}')
    val_set = choose_val_set(args.data_folder, args.val_set)
    OutputPlan(read_folders=check_data_lists(args.data_folder, val_set)).folder(args.output_dir, '--output-dir')

    device = pick_device(args.device)
    rank, world_size = 0, 1
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:  # launched by torchrun
        rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        if device.type == 'cuda':
            device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if args.sync_bn and world_size > 1 and device.type != 'cuda':
        raise UserError('--sync-bn needs CUDA GPUs (PyTorch has no SyncBatchNorm on the CPU)')
    if device.type == 'cuda':  # fixed input sizes: let cuDNN time its convolutions and keep the fastest (whose sums
        torch.backends.cudnn.benchmark = not args.deterministic  # may differ bit-wise from one run to the next)
    seed_everything(args.seed + rank)
    amp_dtype = None if args.no_amp else autocast_dtype(device)
    run = Run(args, kind, device, amp_dtype, rank, world_size, val_set=val_set, clock=clock)
    run.checkpoint = _checkpoint_to_resume(run)
    if run.nothing_to_do:
        return run
    args.compile = choose_compile(run)
    if run.is_main:
        _remove_partial_checkpoints(args.output_dir)
    return run


def make_deterministic():
    """--deterministic: the same flags and seed give the same bits on one machine. A run already does the same work in
    the same order; what differs between two runs are the kernels whose threads race to add into the same numbers:
    on the CPU, the gradient of an indexing (speedups' tail weight), added by two threads at once in whatever order
    they come; on CUDA, atomic adds, and the convolution algorithms cuDNN picks by timing them. The deterministic
    kernels add in a fixed order. The thread count stays as it is: each count splits the sums its own way,
    reproducibly (one thread would be as reproducible, and slower)."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # cuBLAS reads it when it starts: before CUDA does
    # warn_only: a CUDA op without a deterministic kernel warns instead of stopping the run; SRGAN's discriminator
    # has one, adaptive pooling's backward, whose adds do not collide at the paper's 96x96 crops (6x6 -> 6x6)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True


def check_data_lists(data_folder, val_set):
    """Read the training list and the validation list (their structure; the validation images are checked now, on
    every DDP rank, not at the first validation; the training images when the data stream starts, make_train_loader).
    -> the folders of the images they name: a run writes none of its files (sample sheets are images) inside them,
    where the next create_data_lists.py would list them as data."""
    train_paths = read_image_list(os.path.join(data_folder, TRAIN_LIST))
    val_paths = []
    if val_set is not None:
        val_list = os.path.join(data_folder, f'{val_set}{TEST_LIST_SUFFIX}')
        val_paths = read_image_list(val_list)
        check_listed_files(val_list, val_paths)
    return sorted({os.path.dirname(os.path.abspath(path)) for path in train_paths + val_paths})


def choose_compile(run):
    """--compile auto|on|off -> whether to torch.compile (see the flag's help); a note says why when auto decides.
    Compiling keeps its cache in --output-dir/compile_cache, where a resumed run finds it."""
    args = run.args
    if args.compile in (True, False):  # already decided (a Run set up again)
        return args.compile
    compiler = {'cpu': any(shutil.which(c) for c in (os.environ.get('CXX', 'g++'), 'c++', 'clang++')),
                'cuda': importlib.util.find_spec('triton') is not None}.get(run.device.type, False)
    needed = {'cpu': 'a C++ compiler (g++, c++ or clang++ on the PATH, or $CXX)', 'cuda': 'the triton package'}
    if args.compile == 'on' and not compiler and run.device.type in needed:  # else it fails after a minute of work
        raise UserError(f'--compile on: no compiler for {run.device.type} here (it needs {needed[run.device.type]}); '
                        f'install it, or pass --compile off')
    left = args.iterations - run.start_iteration
    compile_ = args.compile == 'on' or (args.compile == 'auto' and compiler and left >= COMPILE_MIN_ITERATIONS)
    if args.compile == 'auto' and run.is_main:
        why = (f'{left} iterations to run' if compiler else f'no compiler for {run.device.type} here')
        print(f'--compile auto: {"on" if compile_ else "off"} ({why}; on from {COMPILE_MIN_ITERATIONS} with a '
              f'compiler)')
    if compile_:
        os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR', os.path.join(os.path.abspath(args.output_dir),
                                                                      'compile_cache'))
    return compile_


def _remove_partial_checkpoints(output_dir):
    """Checkpoints half-written by a run that was killed while saving (see outputs.atomic_path): this folder holds one
    run, and this process is now the only one writing to it."""
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith(('.last.partial', '.best.partial')) and name.endswith('.pt'):
            os.remove(os.path.join(output_dir, name))


def _checkpoint_to_resume(run):
    """--resume PATH|auto -> the checkpoint dict, or None for a new run; a note of the flags that changed."""
    args, path = run.args, run.args.resume
    last_path, best_path = (os.path.join(args.output_dir, name) for name in (CHECKPOINT_FILE, BEST_CHECKPOINT_FILE))
    if args.resume == 'auto':
        path = last_path if os.path.isfile(last_path) else None
    elif args.resume is None and os.path.isfile(last_path):
        raise UserError(f'{args.output_dir} already holds a run ({last_path}); continue it with --resume auto, or '
                        f'choose another --output-dir')
    if path is None and os.path.isfile(best_path):  # a new run would write over it
        raise UserError(f'{args.output_dir} holds {best_path} but no {CHECKPOINT_FILE}; continue from it with '
                        f'--resume {best_path}, or choose another --output-dir')
    if path is None:
        if args.resume == 'auto' and run.is_main:
            print(f'--resume auto: no {last_path} yet, starting a new run')
        return None
    try:
        checkpoint = load_checkpoint(path)
    except PickledCheckpointError:
        raise UserError(f"{path} is an original-tutorial checkpoint (pickled model objects), which cannot be "
                        f"resumed: start a new run, or start train_srgan.py from it after `python checkpoints.py "
                        f"convert {path} converted.pt` (--srresnet-checkpoint converted.pt)") from None
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if checkpoint.get('kind') != run.kind:
        raise UserError(f'{path} is not a {run.kind} training checkpoint written by train_{run.kind}.py, so it '
                        f'cannot be resumed (found kind {checkpoint.get("kind")!r})')
    if 'rng' not in checkpoint or 'iteration' not in checkpoint:
        raise UserError(f'{path} holds a {run.kind} model alone (exported or converted: no optimizer or training '
                        f'state), so it cannot be resumed; start a new run from a training last.pt')
    config = checkpoint['config']
    if config.get('scaling_factor', args.scaling_factor) != args.scaling_factor:
        raise UserError(f'{path} trains x{config["scaling_factor"]}, not --scaling-factor {args.scaling_factor}; '
                        f'resume with --scaling-factor {config["scaling_factor"]}')
    if checkpoint['iteration'] >= args.iterations:  # a finished run: not an error (see Run.nothing_to_do)
        if run.is_main:
            print(f'{path} is at iteration {checkpoint["iteration"]}, --iterations is {args.iterations}: nothing to '
                  f'do (raise --iterations to train on)')
        return checkpoint
    if run.is_main:
        print(f'resuming from {path} at iteration {checkpoint["iteration"]}')
        changed = [f'--{k.replace("_", "-")} {getattr(args, k)} (was {config[k]})' for k in NOTED_ON_RESUME
                   if k in config and config[k] != getattr(args, k)]
        if changed:
            print(f'note: {", ".join(changed)}: applied from here on, so the run will not continue as it would '
                  f'have')
    return checkpoint


def prepare_model(model, run):
    """Speed rewrites (speedups.for_training), SyncBatchNorm, the device in channels_last, torch.compile and DDP
    as asked. -> (model, wrapped): save and validate `model`, train through `wrapped`."""
    speedups.for_training(model)
    if run.args.sync_bn and run.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(run.device, memory_format=run.memory_format)
    wrapped = torch.compile(model) if run.args.compile else model
    if run.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    return model, wrapped


def make_optimizer(model, run):
    """Adam with the run's beta1 (fused kernels where PyTorch has them); the loop sets its lr every step."""
    return torch.optim.Adam(model.parameters(), lr=run.args.lr, betas=(run.args.beta1, 0.999),
                            fused=run.device.type in {'cuda', 'cpu'})


def make_grad_scaler(run):
    """A GradScaler that is active only for fp16 autocast (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)


# ----------------------------------------------------------------------------------------------------------------
# The state of a run: what a checkpoint holds, written and restored in one place each

@dataclasses.dataclass
class TrainingState:
    """Everything that changes as a run trains. models and optimizers are named as their checkpoint entries:
    {'model': srresnet} and {'optimizer': adam} (train_srresnet.py); {'generator': ..., 'discriminator': ...} and
    {'optimizer_g': ..., 'optimizer_d': ...} (train_srgan.py)."""
    model_config: dict  # the generator's architecture (SRResNet's constructor arguments)
    models: dict
    optimizers: dict
    scaler: torch.amp.GradScaler
    ema: nn.Module | None = None  # --ema-decay: the moving average of the generator (rank 0 only)
    iteration: int = 0  # optimizer steps done
    best_psnr: float = float('-inf')  # the best validation PSNR so far (best.pt's)


def save_run(path, run, state):
    """Write the run's state to `path` (atomically): with restore_run, the one definition of a checkpoint.
    Besides the state: the RNG states, the flags ('config'), and the samples seen (the data stream's position)."""
    checkpoint = {'kind': run.kind, 'model_config': state.model_config,
                  **{name: model.state_dict() for name, model in state.models.items()},
                  **{name: optimizer.state_dict() for name, optimizer in state.optimizers.items()},
                  'scaler': state.scaler.state_dict(), 'iteration': state.iteration, 'best_psnr': state.best_psnr,
                  'rng': rng_state(), 'config': vars(run.args),
                  'samples_seen': state.iteration * run.args.batch_size * run.world_size}
    if state.ema is not None:
        checkpoint['ema'] = state.ema.state_dict()  # SRResNet layout
    save_checkpoint(checkpoint, path)


def restore_run(run, state):
    """Restore the state that save_run wrote into run.checkpoint, as the flags now ask: the weights, the
    optimizers (their lr and beta1 from the flags), the GradScaler, the moving average (started from the weights
    if the checkpoint has none), the iteration, the best PSNR, and the RNG states. Older checkpoints' scheduler
    entries are not needed: the lr is computed from the flags (Run.lr_at)."""
    checkpoint = run.checkpoint
    for name, model in state.models.items():
        model.load_state_dict(checkpoint[name])
    for name, optimizer in state.optimizers.items():
        optimizer.load_state_dict(checkpoint[name])
        for group in optimizer.param_groups:
            group['betas'] = (run.args.beta1, group['betas'][1])
    if checkpoint.get('scaler') and state.scaler.is_enabled():
        state.scaler.load_state_dict(checkpoint['scaler'])
    if state.ema is not None:  # the checkpoint's average, or one that starts here from the trained weights
        state.ema.load_state_dict(checkpoint['ema'] if 'ema' in checkpoint else
                                  generator_state_dict(checkpoint, average=False))
    state.iteration, state.best_psnr = checkpoint['iteration'], checkpoint['best_psnr']
    set_rng_state(checkpoint['rng'])


def rng_state():
    """The RNG states of python, numpy and torch (CPU and CUDA), in types torch.load(weights_only=True) accepts."""
    numpy_state = np.random.get_state(legacy=False)
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': {'bit_generator': numpy_state['bit_generator'],
                       'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                       'pos': numpy_state['state']['pos'], 'has_gauss': numpy_state['has_gauss'],
                       'gauss': numpy_state['gauss']}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    python_state = state['python']
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state({'bit_generator': n['bit_generator'], 'has_gauss': n['has_gauss'], 'gauss': n['gauss'],
                         'state': {'key': n['key'].numpy().astype(np.uint32), 'pos': n['pos']}})
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


# ----------------------------------------------------------------------------------------------------------------
# The data stream, and the moving average of the weights

def make_train_loader(run):
    """The run's endless stream of training data, from where the resumed run stopped (datasets.InfiniteSampler).
    -> (an iterator of loader items, to_batch: an item -> (lr_imgs, hr_imgs) on the device: (N, 3, crop/s, crop/s)
    ImageNet-normalised and (N, 3, crop, crop) in [-1, 1]). Says in one line which way the data comes, and why:

    the default: uint8 HR crops (datasets.TrainingCrops) cut from the images decoded once into a memory-mapped cache
    when they fit (see choose_image_cache; else decoded from disk in DataLoader workers), moved to the device, where
    the flips/rotations (--augment) and one antialiased bicubic resize of the whole batch make the LR;
    --blur-sigma (Pillow's Gaussian blur, then its bicubic) and --pillow-lr: SRDataset's Pillow path per sample.
    Every listed image is checked first (datasets.check_listed_files; the cache decodes them all), so a missing or
    unreadable one is one line now, not a traceback later."""
    args = run.args
    dataset = SRDataset(args.data_folder, 'train', args.crop_size, args.scaling_factor, 'imagenet-norm', '[-1, 1]',
                        blur_sigma=args.blur_sigma, augment=args.augment)
    check_listed_files(dataset.list_path, dataset.images)
    cache, why = choose_image_cache(run, dataset.list_path, dataset.images)
    workers = default_workers(run.device) if args.workers is None else args.workers
    if args.blur_sigma > 0 or args.pillow_lr:
        reason = '--blur-sigma' if args.blur_sigma > 0 else '--pillow-lr'
        dataset.cache, to_batch, how = cache, lambda item: item, f'the LR made by Pillow per sample ({reason})'
    else:
        dataset, to_batch = TrainingCrops(cache or dataset.images, args.crop_size, args.augment), crops_to_batch(run)
        workers, how = 0 if cache is not None and args.workers is None else workers, f'the LR made on {run.device}'
    if run.is_main:  # above the progress bar
        tqdm.write(f'training data: {len(dataset)} images, {why}; {how}, {workers} DataLoader worker(s)')
    sampler = InfiniteSampler(len(dataset), seed=args.seed, start=run.start_iteration * args.batch_size,
                              rank=run.rank, world_size=run.world_size)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=run.device.type == 'cuda', drop_last=True, persistent_workers=workers > 0,
                        worker_init_fn=_ignore_stop_signals)
    return iter(loader), to_batch


def choose_image_cache(run, list_path, paths):
    """--image-cache auto|on|off -> (datasets.ImageCache or None, why, in a few words). auto: decode once when the
    decoded images take at most CACHE_RAM_FRACTION of this machine's memory. The cache is written beside the lists
    (train_images.cache, made again when an image's content changes), else in --output-dir; under DDP rank 0 makes
    it. `paths`: the images of the list at list_path."""
    args = run.args
    if args.image_cache == 'off':
        return None, 'decoded from disk for every crop (--image-cache off)'
    budget = CACHE_RAM_FRACTION * physical_memory()
    size = decoded_size(paths, budget if args.image_cache == 'auto' else float('inf'))
    if size is None:
        return None, (f'decoded from disk for every crop (decoded, they would take more than {budget / 2 ** 30:.1f} '
                      f'GB, {CACHE_RAM_FRACTION:.0%} of this machine\'s memory; --image-cache on decodes them once)')
    if run.world_size > 1 and not run.is_main:
        torch.distributed.barrier()  # rank 0 decodes, the others map its file
    for folder in (args.data_folder, args.output_dir):
        try:
            cache = ImageCache.build(paths, os.path.join(folder, CACHE_FILE), list_path)
            break
        except WriteError as e:  # a read-only data folder, a full disk
            cache, why = None, f'decoded from disk for every crop (the cache could not be written: {e})'
    if run.world_size > 1 and run.is_main:
        torch.distributed.barrier()
    if cache is None:
        return None, why
    return cache, f'decoded once into {cache.path} ({size / 2 ** 30:.2f} GB, memory-mapped)'


def physical_memory():
    """This machine's RAM in bytes (8 GB where the OS does not say)."""
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def default_workers(device):
    """DataLoader workers where they help: the cores left after the compute threads (PyTorch's threads when
    training on the CPU; one thread drives a GPU), at most 8. On a 2-core CPU: none."""
    compute_threads = torch.get_num_threads() if device.type == 'cpu' else 1
    return max(0, min(8, (os.cpu_count() or 1) - compute_threads))


def crops_to_batch(run):
    """-> a function: the loader's (uint8 HR crops (N, crop, crop, 3), flip/rotation codes (N,)) -> (lr_imgs,
    hr_imgs) made on the run's device: one transfer of uint8, then the augmentation and the LR in batch."""
    def to_batch(item):
        hr_crops, codes = item
        hr_imgs = hr_crops.to(run.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, c, c)
        if run.args.augment:
            hr_imgs = transpose_batch(hr_imgs, codes)
        lr_imgs = downsample_batch(hr_imgs, run.args.scaling_factor)  # (N, 3, c / s, c / s) in [0, 1], 8-bit values
        return convert_image(lr_imgs, '[0, 1]', 'imagenet-norm'), convert_image(hr_imgs, '[0, 1]', '[-1, 1]')
    return to_batch


def _ignore_stop_signals(worker_id):
    # Ctrl-C reaches the whole process group, and schedulers (SLURM, docker stop) send SIGTERM to every process:
    # stopping is the training process's to handle (it finishes the step, saves, then shuts the workers down)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_ema(model):
    """The moving average of `model` that --ema-decay asks for, starting from its current weights.

    Why an average of the weights: at a constant lr each step moves the weights by a noisy gradient, and the model's
    quality from one checkpoint to the next jitters with it; the average over the last ~1/(1 - decay) iterations
    keeps what the steps share. Its BatchNorm statistics are averaged alike, over as many batches (BatchNorm's own
    momentum of 0.1 averages the last ~10). Not in the paper: off by default."""
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """One step of an exponential moving average: ema <- decay * ema + (1 - decay) * model, for the weights and
    the floating-point buffers (BatchNorm's running statistics); integer buffers (BatchNorm's batch count) are
    copied."""
    for averaged, current in zip(ema_model.state_dict().values(), model.state_dict().values()):
        if averaged.is_floating_point():
            averaged.lerp_(current, 1 - decay)
        else:
            averaged.copy_(current)


def freeze_batchnorm(model):
    """Put every BatchNorm layer of a training model in eval mode: it normalises with its running statistics and
    no longer updates them (its weight and bias still train)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


# ----------------------------------------------------------------------------------------------------------------
# The loop

def train_loop(run, state, train_step, sr_model):
    """Train from the resumed iteration (restore_run) to --iterations: each step sets the lr (Run.lr_at), runs
    train_step(lr_imgs, hr_imgs) -> {name: 0-dim tensor}, and updates the moving average of `sr_model` (the
    SRResNet being trained, or the Generator's) with --ema-decay. Logs the values averaged over --log-every
    iterations, validates every --val-every (best.pt by PSNR), writes last.pt every --checkpoint-every, at the end,
    on SIGINT/SIGTERM (then a UserError: the run is not done) and when --time-budget is spent (then it returns as
    at the end: the sitting did what was asked), and stops with an error on a non-finite value before anything is
    saved. Under DDP only rank 0 logs, validates and saves."""
    args = run.args
    if args.ema_decay and run.is_main:
        state.ema = make_ema(sr_model)
    batches = stop = monitor = stopping = None
    try:
        # the listed images are checked before the run writes anything; this starts the workers (their crops depend
        # on the sampler's seeds alone)
        batches, to_batch = make_train_loader(run)
        monitor = Monitor(run, state)
        if run.checkpoint is not None:
            restore_run(run, state)  # the RNGs included, as they were when the checkpoint was written
        stop = StopSignals()
        while state.iteration < args.iterations:
            start = time.perf_counter()
            lr_imgs, hr_imgs = next_batch(batches, to_batch, run)
            monitor.data_time += time.perf_counter() - start
            lr = run.lr_at(state.iteration)
            for optimizer in state.optimizers.values():
                for group in optimizer.param_groups:
                    group['lr'] = lr

            values = train_step(lr_imgs, hr_imgs)
            if state.ema is not None:
                update_ema(state.ema, sr_model, args.ema_decay)
            state.iteration += 1
            run.clock.step_done(run.device)

            stopping = stop.requested(run)
            monitor.after_step(values, lr, (sr_model, lr_imgs), stopping)
            if stopping:
                break
    except WriteError as e:  # a full disk: the checkpoint before it is whole (atomic writes)
        raise UserError(f'{e}; {last_good_state(args.output_dir)}. Free some space (or choose another --output-dir) '
                        f'and continue with --resume auto') from None
    finally:
        # the workers ignore SIGTERM (see _ignore_stop_signals), so one left running when an error ends the program
        # would hang it at exit, where multiprocessing terminates and joins them: shut them down here
        shutdown_workers = getattr(batches, '_shutdown_workers', None)  # DataLoader's own (its __del__ calls it)
        if shutdown_workers is not None:
            shutdown_workers()
        if stop is not None:
            stop.restore()
        if monitor is not None:
            monitor.close()
    if run.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # stopped by a signal: a scheduler or an `&&` chain must not take it as done (a spent budget is what was asked)
    if state.iteration < args.iterations and stopping != 'budget':
        raise UserError(f'stopped by {stop.signal_name or "a signal to another process"} at iteration '
                        f'{state.iteration}; continue with --resume auto',
                        exit_code=128 + stop.signal_number if stop.signal_number else 1)


def next_batch(batches, to_batch, run):
    """The next (lr_imgs, hr_imgs) on the device in the run's memory format (see make_train_loader); a training image
    that cannot be used (named in the message, also when a DataLoader worker found it) is one UserError line."""
    try:
        lr_imgs, hr_imgs = to_batch(next(batches))
    except UserError as e:  # ImageLoadError, DataListError
        text = str(e).strip()
        if 'Original Traceback' in text:  # a worker's: '...Original Traceback ...\nutils.ImageLoadError: <message>'
            text = text.splitlines()[-1].split(': ', 1)[-1]
        raise UserError(text) from None
    lr_imgs = lr_imgs.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
    hr_imgs = hr_imgs.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
    return lr_imgs, hr_imgs


class Monitor:
    """What the loop does between steps: average and log the values, validate, write checkpoints, show progress.
    Only rank 0 writes; every rank averages (the means are all-reduced under DDP)."""

    def __init__(self, run, state):
        args = run.args
        self.run, self.state = run, state
        self.val_set = run.val_set
        self.val_dataset = None
        if self.val_set is not None and run.is_main:
            self.val_dataset = SRDataset(args.data_folder, 'test', args.crop_size, args.scaling_factor,
                                         'imagenet-norm', '[-1, 1]', test_data_name=self.val_set,
                                         blur_sigma=args.blur_sigma)
        self.log = TrainingLog(args.output_dir, run.start_iteration) if run.is_main else None
        self.bar = tqdm(total=args.iterations, initial=run.start_iteration, disable=not run.is_main,
                        dynamic_ncols=True, desc=os.path.basename(os.path.normpath(args.output_dir)))
        self.sums, self.count, self.data_time, self.interval_start = {}, 0, 0.0, time.perf_counter()
        self.postfix = {}  # what the progress bar shows after its counts: the time left, the last logged values
        self.finished = False  # the last iteration is done and saved
        self.budget_spent = False  # --time-budget stopped the run at a saved checkpoint

    def after_step(self, values, lr, model_and_batch, stopping):
        """model_and_batch: the SRResNet being trained (a Generator's .net) and the step's LR batch."""
        args, iteration = self.run.args, self.state.iteration
        sr_model, lr_imgs = model_and_batch
        self.show_time()
        self.bar.update(1)
        self.count += 1
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        finished = iteration == args.iterations
        validating = self.val_set is not None and (iteration % args.val_every == 0 or finished)  # all ranks alike
        saving = iteration % args.checkpoint_every == 0 or finished or stopping
        if iteration % args.log_every == 0 or validating or saving:
            self.write_row(lr)
        if (validating or saving) and self.run.is_main:
            self.check_weights(sr_model, lr_imgs)
        if validating and self.run.is_main:
            self.validate(sr_model if self.state.ema is None else self.state.ema)
        if saving and self.run.is_main:
            save_run(os.path.join(args.output_dir, CHECKPOINT_FILE), self.run, self.state)
            self.finished, self.budget_spent = finished, stopping == 'budget' and not finished
        if self.count == 0:  # just logged: time the next interval from here, validation and saving excluded
            self.interval_start = time.perf_counter()

    def write_row(self, lr):
        """Log the means since the last row, with the lr and data vs step time per iteration; stop on a
        non-finite value before anything is saved."""
        run, iteration = self.run, self.state.iteration
        means = torch.stack(list(self.sums.values())) / self.count
        if run.world_size > 1:
            torch.distributed.all_reduce(means)
            means /= run.world_size
        means = dict(zip(self.sums, means.tolist()))
        bad = [name for name, value in means.items() if not math.isfinite(value)]
        if bad:
            self.diverged(f'non-finite {", ".join(bad)}')
        elapsed = time.perf_counter() - self.interval_start
        row = {'iteration': iteration, 'lr': lr, **means, 'data_ms': 1000 * self.data_time / self.count,
               'step_ms': 1000 * (elapsed - self.data_time) / self.count}
        if self.log is not None:
            self.log.write(row)
        self.postfix.update({k: f'{v:.4g}' for k, v in row.items() if k not in {'iteration', 'lr'}})
        self.bar.set_postfix(self.postfix, refresh=False)
        self.sums, self.count, self.data_time = {}, 0, 0.0

    def show_time(self):
        """--time-budget's time left on the progress bar, and once the first steps are timed, the one line that
        estimates how long the run will take here (estimate_line)."""
        run, clock = self.run, self.run.clock
        if clock.budget is not None:
            self.postfix['budget left'] = format_duration(clock.left())
            self.bar.set_postfix(self.postfix, refresh=False)
        if clock.steps != ESTIMATE_AFTER or not run.is_main:
            return
        per_iteration, stop_at = clock.seconds_per_iteration(), None
        if clock.budget is not None and per_iteration > 0:
            stop_at = self.state.iteration + max(0, int(clock.left() / per_iteration))
        self.bar.write(estimate_line(per_iteration, run.args.iterations, run.start_iteration, run.device.type,
                                     stop_at))

    def check_weights(self, sr_model, lr_imgs):
        """Weights wrecked by a diverging step (whose loss, computed before it, was still finite) must never reach a
        checkpoint: they must be finite, and compute a finite output from the last batch, as the next step would."""
        for name, model in self.state.models.items():
            if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
                self.diverged(f'non-finite {name} weights')
        if not gives_finite_output(sr_model, self.state.models.get('discriminator'), lr_imgs, self.run.amp_dtype):
            self.diverged('weights that compute a non-finite output')

    def diverged(self, what):
        raise UserError(f'{what} at iteration {self.state.iteration}; the training diverged and stopped without '
                        f'saving: {last_good_state(self.run.args.output_dir)}. Try a lower --lr, or --no-amp')

    def validate(self, model):
        """PSNR/SSIM on the validation set, a sample sheet, and best.pt when the PSNR is the best so far."""
        args, iteration = self.run.args, self.state.iteration
        sheet = os.path.join(args.output_dir, 'samples', f'iter_{iteration:07d}.png')
        psnr, ssim = validate(model, self.val_dataset, self.run.amp_dtype, sheet)
        self.log.write({'iteration': iteration, f'val_psnr_{self.val_set}': psnr, f'val_ssim_{self.val_set}': ssim})
        self.bar.write(f'iteration {iteration}: {self.val_set} PSNR {psnr:.2f} dB, SSIM {ssim:.4f}')
        if psnr > self.state.best_psnr:
            self.state.best_psnr = psnr
            save_run(os.path.join(args.output_dir, BEST_CHECKPOINT_FILE), self.run, self.state)

    def close(self):
        self.bar.close()
        if self.log is None:
            return
        self.log.close()
        args, iteration = self.run.args, self.state.iteration
        if self.finished or self.budget_spent:  # a sitting that ended as asked: the pictures of the run so far
            self.draw_run()
        if self.finished:
            print(f'done: {iteration} iterations, {args.output_dir}/{CHECKPOINT_FILE}')
        elif self.budget_spent:
            print(f'time budget spent ({format_duration(args.time_budget)} this sitting): iteration {iteration:,} of '
                  f'{args.iterations:,} saved in {args.output_dir}/{CHECKPOINT_FILE}; the same command with --resume '
                  f'auto goes on')

    def draw_run(self):
        """The loss curves and the progress animation; a note when they cannot be written (the run is saved)."""
        output_dir = self.run.args.output_dir
        try:
            if plot_loss_curves(os.path.join(output_dir, LOG_FILE), os.path.join(output_dir, 'loss_curves.png')):
                print(f'loss curves: {output_dir}/loss_curves.png')
        except UserError as e:  # a full disk: the run itself is saved; say so, and go on
            print(f'note: {e}', file=sys.stderr)
        try:
            if os.path.isdir(os.path.join(output_dir, 'samples')):  # none without validation (--val-set none)
                animate_run(output_dir)
        except UserError as e:  # as above, or sample sheets cut short: a note, the run is saved
            print(f'note: {e}', file=sys.stderr)


def estimate_line(seconds_per_iteration, iterations, start_iteration=0, device_type='cpu', stop_at=None):
    """The line that tells a user, from the pace of a run's first steps, how long its --iterations will take here,
    so that a month-long run on a CPU is known in seconds: with the iteration a --time-budget stops this sitting at
    (stop_at, when before the end), or a hint when the run is long."""
    left = iterations - start_iteration
    total = seconds_per_iteration * left
    what = f'the {left:,} iterations left of {iterations:,}' if start_iteration else f'{iterations:,} iterations'
    line = f'estimate: {seconds_per_iteration:.3g} s/iteration here -> {what} would take {format_duration(total)}'
    if stop_at is not None and stop_at < iterations:
        return line + f'; --time-budget stops this sitting at about iteration {stop_at:,}'
    if total > LONG_RUN:
        line += ' (use --time-budget, or a GPU)' if device_type == 'cpu' else ' (use --time-budget)'
    return line


def last_good_state(output_dir):
    """Which checkpoint holds the run's last good state, in words."""
    last = os.path.join(output_dir, CHECKPOINT_FILE)
    if not os.path.isfile(last):
        return f'no {CHECKPOINT_FILE} was saved yet'
    return f'{last} (iteration {load_checkpoint(last)["iteration"]}) is the last good state'


@torch.no_grad()
def gives_finite_output(sr_model, discriminator, lr_imgs, amp_dtype):
    """Whether the SRResNet (in its current mode) makes a finite SR batch from lr_imgs, and the discriminator (None
    for none) a finite output from that. Runs copies, so BatchNorm's running statistics are left as they are."""
    models = [copy.deepcopy(model) for model in (sr_model, discriminator) if model is not None]
    for module in (m for model in models for m in model.modules() if isinstance(m, nn.SyncBatchNorm)):
        module.eval()  # in training mode it would wait for the other DDP ranks, which do not run this
    with torch.autocast(lr_imgs.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = [models[0](lr_imgs)]  # (N, 3, H, W) in [-1, 1] when sound
        if len(models) > 1:
            outputs.append(models[1](outputs[0]))
    return all(torch.isfinite(output).all() for output in outputs)


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM ask the loop to finish its step, save and exit; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signal_name = self.signal_number = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name, self.signal_number = signal.Signals(signum).name, signum
        print(f'\n{self.signal_name}: finishing this step, then saving {CHECKPOINT_FILE} '
              f'(Ctrl-C again to stop without saving)', file=sys.stderr, flush=True)

    def requested(self, run):
        """Why to stop after this step: 'signal' once any process got one, else 'budget' once any process's
        --time-budget is spent (run.clock), else None. The same on every process (one all-reduce for both), so DDP
        ranks stop at the same iteration."""
        flags = [float(self.signal_name is not None), float(run.clock.budget_spent())]
        if run.world_size > 1:
            flags = torch.tensor(flags, device=run.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            flags = flags.tolist()
        return 'signal' if flags[0] else 'budget' if flags[1] else None

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------------------------
# Validation, the log, and pictures of the run

def choose_val_set(data_folder, val_set):
    """--val-set -> the name of a test list in data_folder, or None (no validation)."""
    if val_set == 'none':
        return None
    names = test_set_names(data_folder)
    if val_set == 'auto':
        return next((name for name in ('Set5', 'demo') if name in names), names[0] if names else None)
    if val_set not in names:
        raise DataListError(f'no {val_set}{TEST_LIST_SUFFIX} in {data_folder} (lists there: '
                            f'{", ".join(names) or "none"}); write it with create_data_lists.py --test-folders, or '
                            f'pass --val-set none')
    return val_set


def validate(model, dataset, amp_dtype=None, sheet_path=None, sheet_rows=3):
    """Mean PSNR and SSIM of `model` (an SRResNet; left as it is) over a test SRDataset ('imagenet-norm' LR,
    '[-1, 1]' HR), as eval.py measures them: through the same inference path (inference.Upscaler), under the
    paper's protocol (metrics.evaluate_image). With `sheet_path`, also writes a PNG of LR-bicubic / SR / HR
    centre crops of the first `sheet_rows` images."""
    upscaler = Upscaler.for_model(model, amp_dtype=amp_dtype)
    s = upscaler.scaling_factor
    psnrs, ssims, rows = [], [], []
    for i in range(len(dataset)):
        lr_img, hr_img = dataset[i]  # (3, h, w) ImageNet-normalised, (3, h * s, w * s) in [-1, 1]
        sr_img = upscaler.upscale(lr_img)  # (3, h * s, w * s) in [-1, 1]
        psnr, ssim = evaluate_image(sr_img, hr_img, s, protocol='paper')
        psnrs.append(psnr.item())
        ssims.append(ssim.item())
        if sheet_path is not None and i < sheet_rows:
            rows.append(_sheet_row(lr_img, sr_img, hr_img, s))
    if rows:
        _save_sheet(rows, sheet_path)
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


def _sheet_row(lr_img, sr_img, hr_img, s, crop=128):
    """Centre crops (PIL) of the bicubic upscaling of the LR image, the SR image and the HR image."""
    height, width = hr_img.shape[-2:]
    size = min(crop, height, width) // s * s
    top, left = (height - size) // 2 // s * s, (width - size) // 2 // s * s
    lr = convert_image(lr_img[:, top // s:(top + size) // s, left // s:(left + size) // s], 'imagenet-norm', 'pil')
    bicubic = lr.resize((size, size), Image.BICUBIC)
    sr = convert_image(sr_img[:, top:top + size, left:left + size], '[-1, 1]', 'pil')
    hr = convert_image(hr_img[:, top:top + size, left:left + size], '[-1, 1]', 'pil')
    return bicubic, sr, hr


def _save_sheet(rows, path, gap=4, header=16):
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


class TrainingLog:
    """Every logged value as one JSON line per row in <output_dir>/log.jsonl, and in TensorBoard when the
    tensorboard package is installed. On resume, rows after the checkpoint's iteration (from the interrupted run)
    are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, output_dir, start_iteration):
        self.path = os.path.join(output_dir, LOG_FILE)
        rows = read_log(self.path) if start_iteration > 0 and os.path.isfile(self.path) else []
        with atomic_path(self.path) as tmp_path, open(tmp_path, 'w') as f:
            f.writelines(json.dumps(row) + '\n' for row in rows if row['iteration'] <= start_iteration)
        self.file = open(self.path, 'a')
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(os.path.join(output_dir, 'tensorboard'), purge_step=start_iteration + 1)
        except ImportError:  # tensorboard is optional
            self.tensorboard = None

    def write(self, row):
        try:
            self.file.write(json.dumps(row) + '\n')
            self.file.flush()
        except OSError as e:
            raise WriteError(f'could not write {self.path}: {e.strerror}') from None
        if self.tensorboard is not None:
            for name, value in row.items():
                if name != 'iteration':
                    self.tensorboard.add_scalar(name, value, row['iteration'])

    def close(self):
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


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


def animate_run(run_dir, out_path=None, overwrite=False):
    """The training-progress animation of `run_dir` (animation.make_animation), labelled with the validation PSNRs
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
    out_path = plan.file(out_path or own_path, '--animate' if own else '--animate-to', formats=ANIMATION_FORMATS,
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

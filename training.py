"""
The training machinery that train_srresnet.py and train_srgan.py share, read top to bottom as a run goes:

    the flags both trainers take (training_argument_parser), with the paper's defaults
    setting up a run (setup_run -> Run): device, precision, DDP, seeds, compile, the checkpoint to resume from
    the models made ready to train (prepare_model, make_optimizer), the moving average of the weights (--ema-decay)
    the loop (train_loop): one step after another, with the log, validation and checkpoints on their schedules

Each script keeps what makes it itself: its models, its optimizers and its train_step. What a checkpoint holds and
how a run resumes: checkpoints.py (TrainingState, save_run, restore_run). The training data: datasets.py
(TrainingBatches). What happens between steps: monitor.py. Pictures of a run: pictures.py.
"""

import argparse
import copy
import dataclasses
import importlib.util
import math
import os
import re
import shutil
import time

import torch
from torch import nn

import speedups
from checkpoints import (BEST_CHECKPOINT_FILE, CHECKPOINT_FILE, TrainingState, remove_partial_checkpoints,
                         restore_run, resume_from)
from datasets import (CACHE_FILE, CACHE_RAM_FRACTION, TEST_LIST_SUFFIX, TRAIN_LIST, VAL_SET, DataListError,
                      TrainingBatches, check_listed_files, default_workers, read_image_list, test_set_names)
from degradations import DEGRADE_HELP, degrade_flag, degrades
from monitor import Monitor, SittingClock, StopSignals, last_good_state
from outputs import OutputPlan, WriteError
from utils import UserError, autocast_dtype, number, pick_device, seed_everything

COMPILE_MIN_ITERATIONS = 5000  # --compile auto: compiling pays for itself long before this many steps
DURATION_UNITS = {'d': 86400, 'h': 3600, 'm': 60, 's': 1}  # --time-budget 1h30m
DETERMINISTIC_COST = 'no cost measurable on a 2-core CPU; a GPU may lose cuDNN\'s fastest convolutions'  # README


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
    add_optimizer_flags(add, lr_decay_at)
    add('--crop-size', type=number(int, minimum=8), default=96, help='side of the HR training crops')
    add('--scaling-factor', type=int, default=4, choices=[2, 4, 8], help='upscaling factor')
    add('--blur-sigma', type=number(float, minimum=0), default=0.0,
        help='Gaussian blur (sigma in HR pixels) before bicubic downsampling; 0: none, as the paper')
    add('--degrade', type=degrade_flag, default='none', metavar='SPEC',
        help='degrade the LR of each training pair as real photos are (not in the paper; README, Real photos and '
             'video); validation degrades its LR the same way, each image as eval.py --degrade does: '
             + DEGRADE_HELP.replace('%', '%%') + '; may be changed when resuming')
    add('--pillow-lr', action='store_true',
        help="make each LR with Pillow, one sample at a time (SRDataset's way, the reference; slower): by default the "
             "LR of a whole batch is made on the training device, within rounding of Pillow's")
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
        help="the list validated on, whose PSNR chooses best.pt: a name (val -> val_test_images.json, the training "
             "images create_data_lists.py holds out; Set5 -> Set5_test_images.json), 'none', or 'auto': val if "
             "listed, else Set5 (with a note: a test set then chooses the weights), else demo, else the first list")
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


def add_optimizer_flags(add, lr_decay_at):
    """Adam and its lr schedule."""
    add('--lr', type=number(float, above=0), default=1e-4, help='Adam learning rate; may be changed when resuming')
    add('--lr-decay-at', type=number(int, minimum=0), default=lr_decay_at,
        help='multiply the lr by 0.1 from this iteration on' + ('' if lr_decay_at else ' (default: never, as the '
                                                                                     'paper)')
             + '; may be changed when resuming')
    add('--lr-schedule', choices=['steps', 'cosine'], default='steps',
        help="steps: --lr, x 0.1 from --lr-decay-at on (the paper's); cosine: from --lr down to 0 at --iterations, "
             "on a half cosine (not in the paper; --lr-decay-at is then unused); may be changed when resuming")
    add('--beta1', type=number(float, minimum=0, below=1), default=0.9,
        help="Adam's beta1; may be changed when resuming")


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


# ----------------------------------------------------------------------------------------------------------------
# The run

@dataclasses.dataclass
class Run:
    """Where and how this process trains: set up once by setup_run, read by everything after it."""
    args: argparse.Namespace  # the flags, as parsed
    kind: str  # 'srresnet' or 'srgan'
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32
    rank: int = 0  # DDP: this process's rank, and the number of processes
    world_size: int = 1
    checkpoint: dict | None = None  # the checkpoint being resumed; None: a new run
    val_set: str | None = None  # the test list validated on (choose_val_set); None: no validation
    clock: SittingClock = dataclasses.field(default_factory=SittingClock)  # this sitting's time and --time-budget
    # the flags that 'auto' leaves to the run, as decided: {'compile': bool} (setup_run), {'content_loss': 'vgg54'}
    # (train_srgan.py); checkpoints record them in the run's config in place of 'auto'
    resolved: dict = dataclasses.field(default_factory=dict)

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

    @property
    def config(self):
        """The run's settings, as its checkpoints record them: the flags, with the resolved ones."""
        return {**vars(self.args), **self.resolved}

    def lr_at(self, iteration):
        """The lr of step `iteration` (counted from 0), by --lr-schedule: --lr, x 0.1 from --lr-decay-at on (the
        paper's steps), or a half cosine from --lr to 0 at --iterations. Computed from the flags, never stored, so a
        resumed run follows the flags it is given."""
        args = self.args
        if args.lr_schedule == 'cosine':
            return args.lr * 0.5 * (1 + math.cos(math.pi * iteration / args.iterations))
        decay_at = args.lr_decay_at
        return args.lr * (0.1 if decay_at is not None and iteration >= decay_at else 1.0)

    def new_state(self, model_config, models, optimizers):
        """The checkpoints.TrainingState of these models and optimizers (named as their checkpoint entries), with a
        GradScaler that is active only for fp16 autocast (bf16 and fp32 need none)."""
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        return TrainingState(self.kind, self.config, model_config, models, optimizers, scaler,
                             samples_per_iteration=self.args.batch_size * self.world_size)

    def describe(self):
        precision = str(self.amp_dtype).removeprefix('torch.') + ' autocast' if self.amp_dtype else 'fp32'
        threads = torch.get_num_threads()
        deterministic = f', deterministic ({threads} thread{"s" * (threads > 1)})' if self.args.deterministic else ''
        return (f'{self.device}, {precision}, {self.world_size} process(es), effective batch '
                f'{self.args.batch_size * self.world_size}{deterministic}')


def setup_run(args, kind):
    """Check the flags and where the run writes, start DDP when run under torchrun, pick the device and mixed
    precision, seed, read the checkpoint to resume from, and decide --compile. -> Run (see Run.nothing_to_do)."""
    clock = SittingClock(args.time_budget)  # the checks and the start-up count against the budget too
    if args.deterministic:
        make_deterministic()  # before anything starts CUDA
    OutputPlan().folder(args.output_dir, '--output-dir')  # a file there, a name too long: said before anything else
    if degrades(args.degrade) and (args.pillow_lr or args.blur_sigma > 0):
        raise UserError(f'--degrade works on the LR made on the training device; leave out '
                        f'{"--pillow-lr" if args.pillow_lr else "--blur-sigma"} (--degrade blur:SIGMA blurs the LR)')
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
    run.checkpoint = resume_from(args, kind, run.is_main)
    if run.nothing_to_do:
        return run
    run.resolved['compile'], run.resolved['val_set'] = choose_compile(run), val_set
    if args.val_set == 'auto' and val_set not in (VAL_SET, 'demo', None) and run.is_main:
        print(f'note: --val-set auto: validating on {val_set}, a test set, which then chooses best.pt; hold out '
              f'training images with create_data_lists.py (--val-images) so that test sets are only measured')
    if run.is_main:
        remove_partial_checkpoints(args.output_dir)
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


def choose_val_set(data_folder, val_set):
    """--val-set -> the name of a test list in data_folder, or None (no validation)."""
    if val_set == 'none':
        return None
    names = test_set_names(data_folder)
    if val_set == 'auto':
        return next((name for name in (VAL_SET, 'Set5', 'demo') if name in names), names[0] if names else None)
    if val_set not in names:
        raise DataListError(f'no {val_set}{TEST_LIST_SUFFIX} in {data_folder} (lists there: '
                            f'{", ".join(names) or "none"}); write it with create_data_lists.py --test-folders, or '
                            f'pass --val-set none')
    return val_set


# ----------------------------------------------------------------------------------------------------------------
# The models, made ready to train

def prepare_model(model, run):
    """Speed rewrites (speedups.for_training), SyncBatchNorm, the device in channels_last, torch.compile and DDP
    as asked. -> (model, wrapped): save and validate `model`, train through `wrapped`."""
    speedups.for_training(model)
    if run.args.sync_bn and run.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(run.device, memory_format=run.memory_format)
    wrapped = torch.compile(model) if run.resolved['compile'] else model
    if run.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    return model, wrapped


def make_optimizer(model, run):
    """Adam with the run's beta1 (fused kernels where PyTorch has them); the loop sets its lr every step."""
    return torch.optim.Adam(model.parameters(), lr=run.args.lr, betas=(run.args.beta1, 0.999),
                            fused=run.device.type in {'cuda', 'cpu'})


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
    """Train from the resumed iteration to --iterations: each step sets the lr (Run.lr_at), runs
    train_step(lr_imgs, hr_imgs) -> {name: 0-dim tensor}, and updates the moving average of `sr_model` (the
    SRResNet being trained, or the Generator's) with --ema-decay; then logs every --log-every, validates every
    --val-every (best.pt by PSNR) and writes last.pt every --checkpoint-every, at the end, on SIGINT/SIGTERM and
    when --time-budget is spent. Stops with an error on a non-finite value before anything is saved. Under DDP only
    rank 0 logs, validates and saves."""
    args = run.args
    if args.ema_decay and run.is_main:
        state.ema = make_ema(sr_model)
    batches = monitor = stop = stopping = None
    try:
        batches = TrainingBatches(run)  # checks every listed image and starts the workers, before anything is written
        monitor = Monitor(run, state)
        if run.checkpoint is not None:
            restore_run(run.checkpoint, state, args.beta1)  # the RNG states too, as they were when it was saved
        stop = StopSignals()
        while state.iteration < args.iterations:
            start = time.perf_counter()
            lr_imgs, hr_imgs = next(batches)  # (N, 3, 24, 24) ImageNet-normalised, (N, 3, 96, 96) in [-1, 1]
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

            stopping = stop.requested(run)  # 'signal', 'budget' or None: the same on every DDP rank
            finished = state.iteration == args.iterations
            validating = run.val_set is not None and (state.iteration % args.val_every == 0 or finished)
            saving = state.iteration % args.checkpoint_every == 0 or finished or stopping
            monitor.add(values)
            if state.iteration % args.log_every == 0 or validating or saving:
                monitor.write_row(lr)
            if (validating or saving) and run.is_main:
                monitor.check_weights(sr_model, lr_imgs)  # diverged weights never reach a checkpoint
            if validating and run.is_main:
                monitor.validate(sr_model if state.ema is None else state.ema)
            if saving and run.is_main:
                monitor.save(finished, stopping)
            monitor.next_interval()
            if stopping:
                break
    except WriteError as e:  # a full disk: the checkpoint before it is whole (atomic writes)
        raise UserError(f'{e}; {last_good_state(args.output_dir)}. Free some space (or choose another --output-dir) '
                        f'and continue with --resume auto') from None
    finally:
        for opened in (batches, stop, monitor):
            if opened is not None:
                opened.close()
    end_sitting(run, state, stop, stopping)


def end_sitting(run, state, stop, stopping):
    """After the loop: leave DDP; a run stopped by a signal is an error (exit status 128 + the signal's), so that a
    scheduler or an `&&` chain does not take it as done; a spent --time-budget is what was asked."""
    if run.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if state.iteration < run.args.iterations and stopping != 'budget':
        raise UserError(f'stopped by {stop.signal_name or "a signal to another process"} at iteration '
                        f'{state.iteration}; continue with --resume auto',
                        exit_code=128 + stop.signal_number if stop.signal_number else 1)

"""
What a training run does between its steps, and how it is watched: the log (log.jsonl, and TensorBoard when
installed), the progress bar, validation (PSNR/SSIM as eval.py measures them, a sample sheet, best.pt), the checks
that keep diverged weights out of every checkpoint, this sitting's clock (--time-budget, the estimate of the run's
length), and the stop signals (Ctrl-C, SIGTERM). training.train_loop says when; this module says how.
"""

import copy
import json
import math
import os
import signal
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from checkpoints import BEST_CHECKPOINT_FILE, CHECKPOINT_FILE, load_checkpoint, save_run
from datasets import SRDataset
from degradations import DegradedLR, Degradations, degrades
from inference import Upscaler
from metrics import evaluate_image
from outputs import WriteError, atomic_path
from pictures import LOG_FILE, animate_run, plot_loss_curves, read_log, save_sample_sheet, sheet_row
from utils import UserError

LONG_RUN = 3600  # seconds: the estimate of a longer run suggests --time-budget
ESTIMATE_AFTER = 4  # steps before the estimate of the run's length: the first (warm-up, not counted) and 3 timed


class Monitor:
    """Average and log the step's values, show progress, validate, check the weights before a checkpoint, and at
    the end of a sitting draw the run. Only rank 0 writes; every rank averages (the means are all-reduced under DDP).
    run: a training.Run; state: its checkpoints.TrainingState."""

    def __init__(self, run, state):
        args = run.args
        self.run, self.state = run, state
        self.val_dataset = None
        if run.val_set is not None and run.is_main:
            self.val_dataset = SRDataset(args.data_folder, 'test', args.crop_size, args.scaling_factor,
                                         'imagenet-norm', '[-1, 1]', test_data_name=run.val_set,
                                         blur_sigma=args.blur_sigma)
            if degrades(args.degrade):  # degraded as eval.py --degrade degrades its test images
                self.val_dataset = DegradedLR(self.val_dataset, Degradations(args.degrade))
        self.log = TrainingLog(args.output_dir, run.start_iteration) if run.is_main else None
        self.bar = tqdm(total=args.iterations, initial=run.start_iteration, disable=not run.is_main,
                        dynamic_ncols=True, desc=os.path.basename(os.path.normpath(args.output_dir)))
        self.sums, self.count, self.data_time, self.interval_start = {}, 0, 0.0, time.perf_counter()
        self.postfix = {}  # what the progress bar shows after its counts: the time left, the last logged values
        self.finished = False  # the last iteration is done and saved
        self.budget_spent = False  # --time-budget stopped the run at a saved checkpoint

    def add(self, values):
        """A step's values ({name: 0-dim tensor}) into the means of the next log row; the progress bar on."""
        self.show_time()
        self.bar.update(1)
        self.count += 1
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()

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

    def next_interval(self):
        """Time the next log interval from here (after a row: validation and saving are not counted)."""
        if self.count == 0:
            self.interval_start = time.perf_counter()

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
        run, iteration = self.run, self.state.iteration
        sheet = os.path.join(run.args.output_dir, 'samples', f'iter_{iteration:07d}.png')
        psnr, ssim = validate(model, self.val_dataset, run.amp_dtype, sheet)
        self.log.write({'iteration': iteration, f'val_psnr_{run.val_set}': psnr, f'val_ssim_{run.val_set}': ssim})
        self.bar.write(f'iteration {iteration}: {run.val_set} PSNR {psnr:.2f} dB, SSIM {ssim:.4f}')
        if psnr > self.state.best_psnr:
            self.state.best_psnr = psnr
            save_run(os.path.join(run.args.output_dir, BEST_CHECKPOINT_FILE), self.state)

    def save(self, finished, stopping):
        """last.pt; a run saved at its last iteration, or where --time-budget stopped it, ended as asked."""
        save_run(os.path.join(self.run.args.output_dir, CHECKPOINT_FILE), self.state)
        self.finished, self.budget_spent = finished, stopping == 'budget' and not finished

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
            rows.append(sheet_row(lr_img, sr_img, hr_img, s))
    if rows:
        save_sample_sheet(rows, sheet_path)
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


class TrainingLog:
    """Every logged value as one JSON line per row in <output_dir>/log.jsonl (read back by pictures.read_log), and in
    TensorBoard when the tensorboard package is installed. On resume, rows after the checkpoint's iteration (from the
    interrupted run) are dropped, so the file reads as one uninterrupted run."""

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


# ----------------------------------------------------------------------------------------------------------------
# The sitting's clock, and the stop signals

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

    def close(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

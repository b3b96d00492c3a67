"""
How much faster is this repo's default training step than the original tutorial's plain loop, and is the training
as good?

Speed (one process, the variants interleaved repeat by repeat so that background load hits all alike):

    python benchmarks/train_step.py                        # SRResNet and SRGAN steps, batch 16, 24 -> 96
    python benchmarks/train_step.py --models srresnet --repeats 5
    python benchmarks/train_step.py --compile --peak       # + the compiled step; each as a fraction of the peak
    python benchmarks/train_step.py --batch-size 2 --repeats 1 --steps 1 --warmup 0   # smallest: a smoke test

    plain   the tutorial's loop: the paper's models as models.py has them (nn.PReLU, the 9x9 convolution after the
            pixel shuffle), fp32, NCHW, eager, torch.optim.Adam defaults, losses on the raw outputs
    default train_srresnet.train_step / train_srgan.train_step as the scripts run them: speedups.for_training,
            autocast in utils.autocast_dtype's dtype (bf16 on CPUs with AVX-512 BF16/AMX and on Ampere+ GPUs),
            channels_last, fused Adam
    compiled (--compile) the default step, its models torch.compile'd as the scripts' --compile has them

End to end: the training scripts as a user runs them (default flags, lists of T91 + BSD200 from ../shared, else the
demo photos), per iteration from their own log (data wait + step, after the first log row), beside the bare
default step of the same model on tensors already in memory, timed in this process between the script runs:

    python benchmarks/train_step.py --end-to-end 60             # both trainers, 60 iterations a run, 3 rounds
    python benchmarks/train_step.py --end-to-end 3 --log-every 1 --models srresnet --batch-size 2 --repeats 1 \\
                                    --steps 1 --warmup 0                                     # a smoke test

Quality (same seed, same iterations, default vs default + one flag; Set5 PSNR of both, each evaluated in fp32):

    python benchmarks/train_step.py --quality 200 --train-folders ../shared/data/T91 ../shared/data/BSD200 \\
                                    --set5 ../shared/data/Set5                # vs --no-amp
    python benchmarks/train_step.py --quality 300 --against=--pillow-lr      # the LR made by Pillow per sample
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import speedups  # noqa: E402
import train_srgan  # noqa: E402
import train_srresnet  # noqa: E402
from models import Discriminator, Generator, SRResNet, TruncatedVGG19  # noqa: E402
from utils import autocast_dtype, convert_image, pick_device  # noqa: E402


def plain_srresnet_step(model, optimizer, lr_imgs, hr_imgs):
    """The tutorial's train() body."""
    sr_imgs = model(lr_imgs)
    loss = F.mse_loss(sr_imgs, hr_imgs)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def plain_srgan_step(generator, discriminator, vgg, optimizer_g, optimizer_d, lr_imgs, hr_imgs):
    """The tutorial's SRGAN train() body (VGG features unscaled, as it had them)."""
    sr_imgs = generator(lr_imgs)
    sr_imgs_norm = convert_image(sr_imgs, '[-1, 1]', 'imagenet-norm')
    sr_features = vgg(sr_imgs_norm)
    hr_features = vgg(convert_image(hr_imgs, '[-1, 1]', 'imagenet-norm')).detach()
    sr_logits = discriminator(sr_imgs)
    content_loss = F.mse_loss(sr_features, hr_features)
    adversarial_loss = F.binary_cross_entropy_with_logits(sr_logits, torch.ones_like(sr_logits))
    perceptual_loss = content_loss + 1e-3 * adversarial_loss
    optimizer_g.zero_grad()
    perceptual_loss.backward()
    optimizer_g.step()

    hr_logits = discriminator(hr_imgs)
    sr_logits = discriminator(sr_imgs.detach())
    adversarial_loss = (F.binary_cross_entropy_with_logits(sr_logits, torch.zeros_like(sr_logits))
                        + F.binary_cross_entropy_with_logits(hr_logits, torch.ones_like(hr_logits)))
    optimizer_d.zero_grad()
    adversarial_loss.backward()
    optimizer_d.step()


def make_variants(name, device, batch_size, compile_models):
    """{'plain': step(), 'default': step()} for one model (+ 'compiled': the default step of torch.compile'd models
    when compile_models), each with its own models, optimizers and batch."""
    amp_dtype = autocast_dtype(device)
    variants = {}
    for variant in ('plain', 'default', 'compiled') if compile_models else ('plain', 'default'):
        torch.manual_seed(0)
        memory_format = torch.contiguous_format if variant == 'plain' else torch.channels_last
        lr_imgs = torch.randn(batch_size, 3, 24, 24, device=device).contiguous(memory_format=memory_format)
        hr_imgs = (torch.rand(batch_size, 3, 96, 96, device=device) * 2 - 1).contiguous(memory_format=memory_format)

        def prepare(model):
            model = model.to(device, memory_format=memory_format)
            return torch.compile(model) if variant == 'compiled' else model

        def adam(model):
            if variant == 'plain':
                return torch.optim.Adam(model.parameters(), lr=1e-4)
            return torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type in {'cuda', 'cpu'})

        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        if name == 'srresnet':
            model = SRResNet()
            model = (model if variant == 'plain' else speedups.for_training(model)).to(device, memory_format=memory_format)
            step_model, optimizer = prepare(model), adam(model)
            if variant == 'plain':
                step = (lambda m, o, lr, hr: lambda: plain_srresnet_step(m, o, lr, hr))(step_model, optimizer,
                                                                                       lr_imgs, hr_imgs)
            else:
                step = (lambda *a: lambda: train_srresnet.train_step(*a, amp_dtype))(
                    step_model, train_srresnet.PIXEL_LOSSES['mse'], optimizer, scaler, (lr_imgs, hr_imgs))
        else:
            generator = Generator()
            generator = (generator if variant == 'plain' else speedups.for_training(generator)).to(
                device, memory_format=memory_format)
            discriminator = Discriminator().to(device, memory_format=memory_format)
            vgg = TruncatedVGG19(5, 4, weights=None).to(device, memory_format=memory_format)  # speed only
            optimizer_g, optimizer_d = adam(generator), adam(discriminator)
            if variant == 'plain':
                step = (lambda *a: lambda: plain_srgan_step(*a))(generator, discriminator, vgg, optimizer_g,
                                                                 optimizer_d, lr_imgs, hr_imgs)
            else:
                models = train_srgan.SRGANModels(prepare(generator), discriminator, prepare(discriminator), vgg,
                                                 optimizer_g, optimizer_d, scaler)  # as train_srgan.main has them
                step = (lambda m: lambda: train_srgan.train_step(m, lr_imgs, hr_imgs, amp_dtype, 1e-3))(models)
        variants[variant] = step
    return variants


def time_steps(step, n, device):
    """(wall seconds, CPU seconds of this process) per step. With one thread the CPU time hardly depends on what
    else the machine runs, so it is the steadier measure on a shared machine."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def speed(args):
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp_dtype = autocast_dtype(device)
    print(f'{device}, {torch.get_num_threads()} threads, default autocast dtype: {amp_dtype}, '
          f'batch {args.batch_size}, 24 -> 96, {args.repeats} interleaved repeats of {args.steps} steps; medians')
    print('| step | plain (tutorial) ms | default ms | speed-up | plain CPU ms | default CPU ms | CPU-time ratio |\n'
          '|---|---|---|---|---|---|---|')
    medians = {}
    for name in args.models:
        variants = make_variants(name, device, args.batch_size, args.compile)
        for step in variants.values():  # warm-up: oneDNN / cuDNN kernel choice, compilation
            for _ in range(args.warmup):
                step()
        times = {variant: [] for variant in variants}
        for _ in range(args.repeats):
            for variant, step in variants.items():
                times[variant].append(time_steps(step, args.steps, device))
        medians[name] = {v: [statistics.median(t[i] for t in times[v]) * 1000 for i in (0, 1)] for v in times}
        (plain, plain_cpu), (default, default_cpu) = medians[name]['plain'], medians[name]['default']
        print(f'| {STEP_NAMES[name]} | {plain:.0f} | {default:.0f} | '
              f'{plain / default:.2f}x | {plain_cpu:.0f} | {default_cpu:.0f} | {plain_cpu / default_cpu:.2f}x |',
              flush=True)
        medians[name]['flops'] = step_flops(variants['default'])
    if args.peak or args.compile:
        print_peak_fractions(medians, device, amp_dtype)


STEP_NAMES = {'srresnet': 'SRResNet', 'srgan': 'SRGAN (G + D + VGG54)'}


def step_flops(step):
    """Floating-point operations of one step (convolutions and matrix products, forward and backward), counted by
    PyTorch's FlopCounterMode on the eager step."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_peak(device, dtype, n=4096, repeats=5):
    """FLOP/s of the best of `repeats` n x n matrix products in `dtype` (the machine's practical peak for it)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float('inf')
    for _ in range(repeats + 1):  # the first one warms up
        best = min(best, time_steps(lambda: torch.mm(a, b), 1, device)[0])
    return 2 * n ** 3 / best


def print_peak_fractions(medians, device, amp_dtype):
    """How close each step comes to the machine's measured matrix-product peak in the step's dtype."""
    dtype = amp_dtype or torch.float32
    peak = matmul_peak(device, dtype)
    print(f'\nmeasured peak: a 4096x4096 matrix product in {dtype} at {peak / 1e12:.3f} TFLOP/s; the steps (their '
          f'convolutions and matrix products, forward and backward, counted by torch.utils.flop_counter):')
    compiled = any('compiled' in m for m in medians.values())
    print('| step | GFLOP | eager ms | eager TFLOP/s | eager % of peak |'
          + (' compiled ms | compiled TFLOP/s | compiled % of peak |' if compiled else '')
          + '\n|---|---|---|---|---|' + ('---|---|---|' if compiled else ''))
    for name, m in medians.items():
        row = f'| {STEP_NAMES[name]} | {m["flops"] / 1e9:.1f} |'
        for variant in ('default', 'compiled') if compiled else ('default',):
            rate = m['flops'] / (m[variant][0] / 1000)
            row += f' {m[variant][0]:.0f} | {rate / 1e12:.3f} | {100 * rate / peak:.0f}% |'
        print(row, flush=True)


def end_to_end(args):
    """Per-iteration time of train_srresnet.py / train_srgan.py with their default flags vs the bare default step,
    interleaved round by round; prints end-to-end / step (target on a 2-core CPU: <= 1.05)."""
    device = pick_device(args.device)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'data')
        folders = (['--train-folders', *args.train_folders, '--test-folders', args.set5]
                   if all(os.path.isdir(f) for f in args.train_folders) else [])  # else the demo photos
        subprocess.run([sys.executable, os.path.join(repo, 'create_data_lists.py'), '--output-folder', data,
                        *folders], check=True, stdout=subprocess.DEVNULL)
        print(f'{device}, {torch.get_num_threads()} threads, batch {args.batch_size}, 24 -> 96, {args.end_to_end} '
              f'iterations a run, {args.repeats} rounds; medians')
        print('| script | end to end ms/iteration | data wait ms | bare step ms | end to end / step |\n'
              '|---|---|---|---|---|')
        for name in args.models:
            step = make_variants(name, device, args.batch_size, compile_models=False)['default']
            for _ in range(args.warmup):
                step()
            scripts, steps = [], []
            for round_ in range(args.repeats):
                scripts.append(_script_iteration_ms(name, repo, data, os.path.join(tmp, f'{name}{round_}'), args))
                steps.append(time_steps(step, args.steps, device)[0] * 1000)
            total, wait = (statistics.median(row[i] for row in scripts) for i in (0, 1))
            bare = statistics.median(steps)
            print(f'| train_{name}.py | {total:.0f} | {wait:.1f} | {bare:.0f} | {total / bare:.3f} |', flush=True)


def _script_iteration_ms(name, repo, data, output_dir, args):
    """One run of a training script with its default flags -> (ms per iteration, of which waiting for data), the
    means of its log rows after the first (start-up, first batches) and before the last (the final checkpoint)."""
    flags = ['--srresnet-checkpoint', 'none', '--vgg-weights', 'none'] if name == 'srgan' else []
    subprocess.run([sys.executable, os.path.join(repo, f'train_{name}.py'), '--data-folder', data, '--output-dir',
                    output_dir, '--iterations', str(args.end_to_end), '--batch-size', str(args.batch_size),
                    '--val-set', 'none', '--log-every', str(args.log_every), *flags], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(output_dir, 'log.jsonl')) as f:
        rows = [json.loads(line) for line in f if '"step_ms"' in line][1:-1]
    return (statistics.mean(r['data_ms'] + r['step_ms'] for r in rows), statistics.mean(r['data_ms'] for r in rows))


def quality(args):
    """Train SRResNet twice from the same seed (default, and with --against's flag: --no-amp, --pillow-lr,
    --compile), then Set5 PSNR of both in fp32."""
    from datasets import SRDataset
    from inference import load_generator
    from monitor import validate
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'data')
        subprocess.run([sys.executable, os.path.join(repo, 'create_data_lists.py'), '--output-folder', data,
                        '--train-folders', *args.train_folders, '--test-folders', args.set5], check=True,
                       stdout=subprocess.DEVNULL)
        results = {}
        for variant, flags in (('default', []), (args.against, [args.against])):
            output_dir = os.path.join(tmp, variant.strip('-'))
            start = time.perf_counter()
            subprocess.run([sys.executable, os.path.join(repo, 'train_srresnet.py'), '--data-folder', data,
                            '--output-dir', output_dir, '--iterations', str(args.quality), '--seed', '0',
                            '--batch-size', str(args.batch_size), '--val-set', 'none', *flags], check=True,
                           stderr=subprocess.DEVNULL)
            minutes = (time.perf_counter() - start) / 60
            set5 = SRDataset(data, 'test', 96, 4, 'imagenet-norm', '[-1, 1]', test_data_name='Set5')
            psnr, ssim = validate(load_generator(os.path.join(output_dir, 'last.pt')), set5, amp_dtype=None)
            results[variant] = psnr
            print(f'{variant}: {args.quality} iterations in {minutes:.1f} min, Set5 PSNR {psnr:.3f} dB, '
                  f'SSIM {ssim:.4f}', flush=True)
        a, b = results.values()
        print(f'difference: {abs(a - b):.3f} dB (target: within 0.1 dB)')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['srresnet', 'srgan'], choices=['srresnet', 'srgan'])
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=3, help='interleaved rounds; the median is reported')
    parser.add_argument('--steps', type=int, default=3, help='steps timed per round and variant')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: PyTorch default)')
    parser.add_argument('--compile', action='store_true',
                        help='also time the default step with torch.compile (the models the scripts compile)')
    parser.add_argument('--peak', action='store_true',
                        help="also print each step's FLOP/s as a fraction of a measured matrix-product peak")
    parser.add_argument('--end-to-end', type=int, default=0, metavar='N',
                        help='instead: time the training scripts (N iterations a run) against the bare step')
    parser.add_argument('--log-every', type=int, default=10, help="(--end-to-end) the scripts' --log-every")
    parser.add_argument('--quality', type=int, default=0, metavar='N',
                        help='instead of timing: train N iterations default vs --no-amp and compare Set5 PSNR')
    parser.add_argument('--against', default='--no-amp', choices=['--no-amp', '--pillow-lr', '--compile'],
                        help='(--quality) the flag the second run adds; write it --against=--pillow-lr')
    parser.add_argument('--train-folders', nargs='+', default=['../shared/data/T91', '../shared/data/BSD200'])
    parser.add_argument('--set5', default='../shared/data/Set5')
    args = parser.parse_args()
    if args.quality:
        quality(args)
    elif args.end_to_end:
        end_to_end(args)
    else:
        speed(args)


if __name__ == '__main__':
    main()

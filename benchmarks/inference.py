"""
Inference speed of super_resolve.py's paths (inference.Upscaler) against the original tutorial's plain fp32 forward.

    python benchmarks/inference.py                         # random-init SRResNet, 256x256 LR, CPU (+ GPU if any)
    python benchmarks/inference.py --fit-steps 40          # a quickly fitted SRResNet: PSNR differences mean more
    python benchmarks/inference.py --model weights/srresnet_x4.pt
    python benchmarks/inference.py --memory                # + peak RSS of the CLI upscaling 1000x1000 -> 4000x4000
    python benchmarks/inference.py --onnx --model weights/srresnet_x4.pt   # + the ONNX export run by onnxruntime
    python benchmarks/inference.py --whole-process --repeats 3   # the CLI's whole process on a 512x512 photo
                                                           # against the tutorial's forward of it alone
    git worktree add ../before be5b579                     # + an older checkout's CLI in the same rounds
    python benchmarks/inference.py --whole-process --repeats 3 --before ../before
    python benchmarks/inference.py --size 32 --tile 24 --repeats 1 --memory --memory-size 64 --onnx  # smallest
    python benchmarks/inference.py --whole-process --whole-process-size 32 --repeats 1          # (the same)

Every path super-resolves the same LR image (Set5 baby from ../shared, else scikit-image's astronaut, resized
so the LR is --size pixels a side); the paths run interleaved, --repeats times each after a warm-up, and the
best time is kept (the machine may be shared). Columns: wall seconds per image, images/s, output megapixels/s,
speed-up over the tutorial's forward; CPU seconds per image (all threads; steadier than wall time when other jobs
share the cores, e.g. with --threads 1) and that speed-up; PSNR against the HR (Y channel, as eval.py), its
difference from the tutorial's, and the mean absolute difference of the outputs on the 0-255 scale.

--whole-process times what a user waits for: `python super_resolve.py photo.png -o out.png` from start to exit
(Python and torch start-up, model load, PNG encoding included), the photo being the test image at 512x512, against
the original tutorial's fp32 forward of the same image alone (`model(lr)` under torch.no_grad, NCHW, the whole
image; its process start-up and model load not counted). They run in turn, --repeats rounds (with --before, an
older checkout's CLI in each round too), and each ratio is taken round by round (the median is printed), which
keeps it meaningful when other jobs share the cores.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import deploy  # noqa: E402
import images  # noqa: E402
import inference  # noqa: E402
import metrics  # noqa: E402
import speedups  # noqa: E402
import utils  # noqa: E402
from checkpoints import model_config_from_state_dict, save_checkpoint  # noqa: E402
from inference import DEFAULT_TILE, DEFAULT_TILE_OVERLAP, Upscaler  # noqa: E402
from models import SRResNet  # noqa: E402

SHARED_IMAGE = REPO.parent / 'shared' / 'data' / 'Set5' / 'baby.png'


def hr_image(lr_size, s):
    """A (lr_size * s)-pixel square HR image: Set5 baby when ../shared is there, else scikit-image's astronaut."""
    if SHARED_IMAGE.is_file():
        img, name = images.load_image(SHARED_IMAGE), 'Set5 baby'
    else:
        from skimage import data
        img, name = Image.fromarray(data.astronaut()), 'scikit-image astronaut'
    side = lr_size * s
    if img.size != (side, side):
        img, name = img.resize((side, side), Image.BICUBIC), f'{name} resized to {side}x{side}'
    return img, name


def quick_fit(model, hr_img, steps, s, seed=0):
    """A few Adam steps on random 96x96 crops of the HR image, so outputs look like images (not for quality)."""
    utils.seed_everything(seed)
    transform = utils.ImageTransforms('train', 96, s, 'imagenet-norm', '[-1, 1]')
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp_dtype = utils.autocast_dtype('cpu')
    model.train()
    for step in range(steps):
        lr_imgs, hr_imgs = map(torch.stack, zip(*[transform(hr_img) for _ in range(8)]))  # (8, 3, 24, 24), (8, 3, 96, 96)
        with torch.autocast('cpu', dtype=amp_dtype, enabled=amp_dtype is not None):
            sr_imgs = model(lr_imgs)
        loss = torch.nn.functional.mse_loss(sr_imgs.float(), hr_imgs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f'fitted {steps} steps, last MSE {loss.item():.4f} ([-1, 1] scale)')
    return model.eval()


def paths_for(device, state_dict, config, tile, onnx_paths=None):
    """[(name, precision, tiled, function(lr) -> (3, H, W) in [-1, 1] on the CPU)] for one device. onnx_paths:
    {precision: an .onnx export of the same model}, run by onnxruntime (CPU) as super_resolve.py runs it."""
    s, overlap = config['scaling_factor'], DEFAULT_TILE_OVERLAP
    names = {None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}

    def srresnet():
        model = SRResNet(**config).to(device).eval()
        model.load_state_dict(state_dict)
        return model

    tutorial_model, prepared = srresnet(), speedups.for_inference(srresnet())

    def tutorial(lr):  # the tutorial's visualize_sr: a no_grad fp32 forward of the whole image, NCHW
        with torch.no_grad():
            return tutorial_model(lr.to(device)[None])[0].float().cpu()

    def ours(model, amp_dtype, tile):
        return Upscaler(model, s, tile, overlap, amp_dtype).upscale

    rows = [('tutorial forward (no_grad, NCHW)', 'fp32', 'no', tutorial)]
    dtypes = [None, inference.pick_amp_dtype(device, 'half')]
    if device.type == 'cuda' and torch.float16 not in dtypes:
        dtypes.append(torch.float16)
    for amp_dtype in dtypes:
        if amp_dtype is not None:  # autocast alone: the model as trained, only channels_last
            rows.append(('autocast + channels_last', names[amp_dtype], 'no',
                         ours(srresnet().to(memory_format=torch.channels_last), amp_dtype, None)))
        rows.append(('speedups.for_inference', names[amp_dtype], 'no', ours(prepared, amp_dtype, None)))
        rows.append(('speedups.for_inference', names[amp_dtype], 'yes', ours(prepared, amp_dtype, tile)))
    default_dtype = inference.pick_amp_dtype(device)
    rows.append(('DEFAULT (super_resolve.py)', names[default_dtype], 'auto', ours(prepared, default_dtype, DEFAULT_TILE)))
    if device.type == 'cpu':
        for precision, path in (onnx_paths or {}).items():  # the same threads as torch (OnnxGenerator)
            rows.append(('onnxruntime (super_resolve.py --model X.onnx)', precision, 'auto',
                         ours(deploy.OnnxGenerator(path), None, DEFAULT_TILE)))
    return rows


def run_device(device, model, images, repeats, tile, onnx_paths=None):
    """model: (state_dict, config); images: (lr_img, hr_img)."""
    (state_dict, config), (lr_img, hr_img) = model, images
    hr_y = utils.convert_image(utils.convert_image(hr_img, 'pil', '[-1, 1]'), '[-1, 1]', 'y-channel')[4:-4, 4:-4]
    rows = paths_for(device, state_dict, config, tile, onnx_paths)
    wall, cpu = [[] for _ in rows], [[] for _ in rows]
    outputs = [None] * len(rows)
    for repeat in range(repeats + 1):  # the first round warms up (oneDNN / cuDNN pick their kernels)
        for i, (_, _, _, function) in enumerate(rows):
            if device.type == 'cuda':
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[i] = function(lr_img)
            if device.type == 'cuda':
                torch.cuda.synchronize()
            if repeat > 0:
                wall[i].append(time.perf_counter() - start)
                cpu[i].append(time.process_time() - start_cpu)

    n_pixels = outputs[0].shape[1] * outputs[0].shape[2]
    reference = outputs[0].clamp(-1, 1)
    psnrs = [metrics.calculate_psnr(utils.convert_image(out.clamp(-1, 1), '[-1, 1]', 'y-channel')[4:-4, 4:-4],
                                  hr_y).item() for out in outputs]
    print(f'\n{device.type.upper()}, {torch.get_num_threads()} threads' if device.type == 'cpu' else
          f'\n{torch.cuda.get_device_name(device)}')
    header = ('| path | precision | tiled | s/img | img/s | MP/s | speed-up | CPU s/img | CPU speed-up | PSNR (dB) '
              '| ΔPSNR (dB) | mean abs diff (/255) |')
    print(header)
    print('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for (name, precision, tiled, _), w, c, out, psnr in zip(rows, wall, cpu, outputs, psnrs):
        best, best_cpu = min(w), min(c)
        mad = ((out.clamp(-1, 1) - reference).abs().mean() * 127.5).item()
        print(f'| {name} | {precision} | {tiled} | {best:.3f} | {1 / best:.2f} | {n_pixels / best / 1e6:.2f} '
              f'| {min(wall[0]) / best:.2f}x | {best_cpu:.3f} | {min(cpu[0]) / best_cpu:.2f}x | {psnr:.3f} '
              f'| {psnr - psnrs[0]:+.4f} | {mad:.4f} |')


def whole_process_vs_tutorial(model_path, size, repeats, before=None):
    """The whole `python super_resolve.py photo.png -o out.png` process against the tutorial's fp32 forward of the
    same size x size photo alone, in turn, --repeats rounds; before: another checkout (a folder) whose
    super_resolve.py runs in the same rounds. Prints the medians and the ratios, taken round by round."""
    photo, name = hr_image(size, 1)
    model = inference.load_generator(model_path)  # the plain model, fp32, NCHW: the tutorial's visualize_sr
    lr = utils.convert_image(photo, 'pil', 'imagenet-norm')[None]  # (1, 3, size, size)
    clis = {'python super_resolve.py photo.png -o out.png (whole process)': REPO}
    if before is not None:
        clis[f'the same, {before} (whole process)'] = Path(before)
    times = {what: [] for what in [*clis, "the tutorial's fp32 forward alone (no_grad, NCHW, whole image)",
                                   'of which its last 9x9 convolution (conv_block3)']}
    tails = times['of which its last 9x9 convolution (conv_block3)']  # 64 -> 3 channels at full size
    model.conv_block3.register_forward_pre_hook(lambda *_: tails.append(-time.perf_counter()))
    model.conv_block3.register_forward_hook(lambda *_: tails.append(tails.pop() + time.perf_counter()))
    with tempfile.TemporaryDirectory() as folder:
        photo.save(Path(folder) / 'photo.png')
        for _ in range(repeats):
            for what, checkout in clis.items():
                start = time.perf_counter()
                subprocess.run([sys.executable, str(checkout / 'super_resolve.py'), str(Path(folder) / 'photo.png'),
                                '-o', str(Path(folder) / 'out.png'), '--overwrite', '--model', str(model_path),
                                '--device', 'cpu'], check=True, capture_output=True, cwd=checkout)
                times[what].append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                model(lr)  # (1, 3, 4 size, 4 size)
            times["the tutorial's fp32 forward alone (no_grad, NCHW, whole image)"].append(time.perf_counter() - start)
    s = model.scaling_factor
    print(f'\nWhole process, CPU ({torch.get_num_threads()} threads here): {name}, {size}x{size} -> '
          f'{size * s}x{size * s} PNG, {repeats} rounds')
    print('| what | s (median) | runs (s) |')
    print('|---|---:|---|')
    for what, runs in times.items():
        print(f'| {what} | {statistics.median(runs):.2f} | {" ".join(f"{t:.2f}" for t in runs)} |')
    tutorial = times["the tutorial's fp32 forward alone (no_grad, NCHW, whole image)"]
    for what, checkout in clis.items():
        ratios = [t / c for c, t in zip(times[what], tutorial)]
        print(f"{checkout}: the whole process is {statistics.median(ratios):.2f}x as fast as the tutorial's forward "
              f'alone (tutorial / whole process, median of the rounds: {" ".join(f"{r:.2f}" for r in ratios)})')


def peak_rss_of_cli(model_path, lr_size=1000, extra=()):
    """Peak RSS (GB) and wall time of `python super_resolve.py` upscaling an lr_size^2 image, in a child process."""
    with tempfile.TemporaryDirectory() as folder:
        img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (lr_size, lr_size, 3), dtype=np.uint8))
        img.save(Path(folder) / 'in.png')
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / 'super_resolve.py'), str(Path(folder) / 'in.png'), '-o',
                        str(Path(folder) / 'out.png'), '--model', str(model_path), *extra], check=True,
                       capture_output=True)
        elapsed = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2, elapsed  # kB on Linux


def export_onnx(state_dict, config, folder):
    """The model exported as users would (deploy.py X.pt X.onnx [--fp16]) -> {precision: path}."""
    paths = {}
    for precision in ('fp32', 'fp16'):
        paths[precision] = Path(folder) / f'model_{precision}.onnx'
        difference = deploy.export_srresnet(config, state_dict, paths[precision],
                                            {'kind': 'srresnet', 'source': 'benchmark'}, fp16=precision == 'fp16')
        print(f'exported to ONNX, {precision}: largest |onnxruntime - PyTorch fp32| {difference:.1e} on [0, 1]')
    return paths


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', default=None, help='a checkpoint (default: the shipped model if present, '
                                                       'else a random-init SRResNet)')
    parser.add_argument('--fit-steps', type=int, default=0,
                        help='fit the random-init SRResNet this many Adam steps on crops of the test image first')
    parser.add_argument('--size', type=int, default=256, help='LR side in pixels')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--tile', type=int, default=160,
                        help="LR tile of the 'tiled' rows (160: 2x2 tiles of 140 for a 256 LR, 1.2x the work, "
                             "as 3x3 tiles of 187 for a 512x512 image or 5x5 of 220 for 1000x1000 at tile 256)")
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: all cores)')
    parser.add_argument('--memory', action='store_true',
                        help='also measure the peak RSS of the CLI upscaling 1000x1000 -> 4000x4000 on the CPU')
    parser.add_argument('--memory-size', type=int, default=1000, help='LR side of the --memory image')
    parser.add_argument('--whole-process', action='store_true',
                        help="instead of the table of paths, time the CLI's whole process on a photo against the "
                             "tutorial's forward of it alone, --repeats pairs")
    parser.add_argument('--whole-process-size', type=int, default=512, help='side of the --whole-process photo')
    parser.add_argument('--before', default=None, metavar='FOLDER',
                        help='(--whole-process) another checkout, e.g. an older commit from `git worktree add`, '
                             'whose super_resolve.py runs in the same rounds')
    parser.add_argument('--cpu-only', action='store_true')
    parser.add_argument('--onnx', action='store_true',
                        help='+ rows for the model exported to ONNX (fp32 and fp16) run by onnxruntime on the CPU')
    return parser.parse_args()


def main():
    args = parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_path = args.model or (inference.DEFAULT_MODEL if inference.DEFAULT_MODEL.is_file() else None)
    if model_path is not None:
        model = inference.load_generator(model_path)  # the plain model: each path below rewrites its own copy
        config, s = model_config_from_state_dict(model.state_dict()), model.scaling_factor
        what = f'checkpoint {model_path}'
    else:
        config = {'scaling_factor': 4}
        model, s = SRResNet(**config), 4
        what = 'random-init SRResNet (seed 0; no trained weights yet)'
    hr_img, image_name = hr_image(args.size, s)
    if args.fit_steps:
        model = quick_fit(model, hr_img, args.fit_steps, s)
        what = f'{what}, fitted {args.fit_steps} Adam steps (lr 1e-3, batch 8) on crops of the test image'
    state_dict = model.state_dict()
    lr_img = utils.convert_image(utils.downsample(hr_img, s), 'pil', 'imagenet-norm')  # (3, size, size)

    print(f'model: {what}, {sum(p.numel() for p in model.parameters()):,} parameters; torch {torch.__version__}')
    devices = [torch.device('cpu')]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device('cuda'))
    if not args.whole_process:
        print(f'input: {image_name}, LR {args.size}x{args.size} -> SR {args.size * s}x{args.size * s}; '
              f"'tiled' rows: tile {args.tile}, overlap {DEFAULT_TILE_OVERLAP}; DEFAULT: tile "
              f'{DEFAULT_TILE} (the whole image up to that size); best of {args.repeats}')
    with tempfile.TemporaryDirectory() as folder:
        onnx_paths = export_onnx(state_dict, config, folder) if args.onnx else None
        for device in devices if not args.whole_process else []:
            run_device(device, (state_dict, config), (lr_img, hr_img), args.repeats, args.tile, onnx_paths)

        path = model_path or Path(folder) / 'model.pt'  # what the CLI loads
        if model_path is None:
            save_checkpoint({'kind': 'srresnet', 'model_config': config, 'model': state_dict}, path)
        if args.memory:
            peak_gb, elapsed = peak_rss_of_cli(path, args.memory_size, extra=['--device', 'cpu'])
            n, side = args.memory_size, args.memory_size * s
            print(f'\nCLI, CPU, {n}x{n} -> {side}x{side} PNG, default settings: peak RSS {peak_gb:.2f} GB, '
                  f'{elapsed:.0f} s wall (model load and PNG encoding included)')
        if args.whole_process:
            whole_process_vs_tutorial(path, args.whole_process_size, args.repeats, args.before)


if __name__ == '__main__':
    main()

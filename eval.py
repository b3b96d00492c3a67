"""
PSNR and SSIM of SRResNet / SRGAN checkpoints and of the bicubic baseline on Set5, Set14 and BSD100 (or any folder
of HR images), printed as a markdown table with the paper's numbers under it, in the columns of the standard test
sets (recognised by their pixels, not their folder's name: a folder of other images called Set5 gets none).

    python eval.py                                  # bicubic + the checkpoints found, on every test list in ./data
    python eval.py bicubic runs/srresnet/best.pt runs/srgan/best.pt --test-sets Set5 Set14 BSD100
    python eval.py bicubic --test-folders ../shared/data/Set5 ../shared/data/Set14 ../shared/data/BSD100
    python eval.py checkpoint_srresnet.pth.tar --unsafe-pickle --protocol tutorial   # the tutorial's checkpoint
    python eval.py runs/srresnet/best.pt --csv per_image.csv --save-dir results/eval  # per-image rows, SR images
    python eval.py weights/srresnet_x4.pt --test-sets Set5 Set14 --self-ensemble  # + each model's self-ensemble row

The protocol decides what an HR test image becomes, how its LR image is made and what is compared: it is all in
metrics.py (PROTOCOLS, make_test_pair, bicubic_upscale, evaluate_image), and every number printed names it. This
script loads the models, runs them over the test sets and reports: the table to stdout, notes and errors to stderr
(`python eval.py > table.md` writes the table alone); --csv, --save-dir and --html add the rows, the SR images and
a page to compare them by eye (report.py).

--self-ensemble adds under each model's row (not bicubic's) the same model run as EDSR+ (Lim et al. 2017): the
mean of its outputs over the 8 flips and rotations of each LR image, each turned back; its rows are marked
'+ self-ensemble' in the table and in the CSV's model column, the plain rows stay beside them, and every other
number this repo publishes is without it.

Bad inputs do not stop the run: a test image that cannot be read (or is too small for the scale), a checkpoint
that cannot be loaded and a model that cannot run (an .onnx its runner refuses) are skipped, a mean over fewer
images than the set holds says so ('(4 of 5 images)'; the CSV keeps the skipped rows, with the reason), and the run
ends with one 'error:' line per problem and a non-zero exit status.

Outputs (--csv, --save-dir, --html) are all checked before any work: none may be an input (a checkpoint, a test
image or list; not even with --overwrite), replace a file without --overwrite, or lie inside a --test-folders folder,
where the next run would score it as a test image. Their file names are made from the models', sets' and images'
names without two ever meeting (x.png, x.jpg and sub/x.png in one folder are three rows and three files).
"""

import argparse
import collections
import csv
import dataclasses
import os
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from checkpoints import CheckpointError, load_checkpoint
from datasets import (DEMO_TEST_IMAGES, TEST_LIST_SUFFIX, VAL_SET, demo_images, find_images, folder_name,
                      read_image_list, test_set_names)
from degradations import DEGRADE_HELP, Degradations, degrade_flag, degrades
from inference import DEFAULT_TILE, DEFAULT_TILE_OVERLAP, MIN_TILE, MIN_TILE_OVERLAP, Upscaler, load_generator, tiling
from images import read_image, to_rgb8
from metrics import LR_KERNELS, PROTOCOLS, bicubic_upscale, evaluate_image, make_test_pair
from outputs import OutputPlan, distinct_stems, file_names
from report import ENSEMBLE_MARK, KIND_NAMES, STANDARD_TEST_SETS, EvalPage, markdown_table, standard_set
from utils import ImageLoadError, UserError, autocast_dtype, convert_image, number, pick_device, run_main

# Checkpoints evaluated when none are named: the weights shipped in the repo, found beside eval.py from whatever
# folder it runs in, and the trainers' best checkpoints, under ./runs of the current folder, where they write them.
REPO = os.path.dirname(os.path.abspath(__file__))
SHIPPED_CHECKPOINTS = ('weights/srresnet_x4.pt', 'weights/srgan_x4.pt')  # relative to the repo
RUN_CHECKPOINTS = ('runs/srresnet/best.pt', 'runs/srgan/best.pt')  # relative to the current folder


@dataclasses.dataclass
class Model:
    label: str  # as named on the command line
    kind: str  # 'bicubic', 'srresnet' or 'srgan'
    scaling_factor: int
    upscaler: Upscaler | None = None  # the generator (an SRGAN's network) ready for inference; None: bicubic
    content_loss: str | None = None  # an SRGAN's, from its training config: 'mse' -> the paper's SRGAN-MSE
    failure: str | None = None  # why it stopped: it loaded but could not run (evaluate); its results are left out
    saved: bool = True  # False: bicubic added by --html for the page, measured and shown but not written to --save-dir


@dataclasses.dataclass(frozen=True)
class TestPairs:
    """How a test image becomes its (LR, HR) pair: as the protocol crops it (metrics.PROTOCOLS), the LR made by
    lr_kernel (None: the protocol's), then degraded (--degrade, degradations.py; 'none': left as made; image i of a
    set by key i, so every run degrades it the same way)."""
    protocol: str = 'paper'
    lr_kernel: str | None = None
    degrade: str = 'none'

    def __post_init__(self):
        object.__setattr__(self, 'lr_kernel', self.lr_kernel or PROTOCOLS[self.protocol].lr_kernel)

    def describe(self):
        """How the LR images were made, in words (the notes above the table)."""
        degraded = '' if not degrades(self.degrade) else f', then degraded by --degrade {self.degrade} (seeded)'
        return f'{LR_KERNELS[self.lr_kernel]} of the HR{degraded}'


class TestImages(Dataset):
    """The HR images of one test set -> dicts: path, lr_img (3, H / s, W / s) uint8, hr_img (3, H, W) uint8 (as
    `pairs`, a TestPairs, makes them), gray (the file was single-channel); or, for a file that cannot be used, its
    path and the reason (reported by the main process as one line rather than as a worker's traceback)."""

    def __init__(self, paths, scaling_factor, pairs):
        self.paths, self.scaling_factor, self.pairs = paths, scaling_factor, pairs
        self.degradations = Degradations(pairs.degrade)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path, s = self.paths[i], self.scaling_factor
        try:
            loaded = read_image(path)
        except ImageLoadError as e:
            return {'path': path, 'error': str(e)}
        img = to_rgb8(loaded)  # PIL RGB, 8 bits per channel
        min_side = PROTOCOLS[self.pairs.protocol].min_side(s)
        if min(img.width, img.height) < min_side:
            return {'path': path, 'error': f'{path}: {img.width}x{img.height} is too small to measure at x{s} '
                                           f'(it needs {min_side} px a side)'}
        lr_img, hr_img = make_test_pair(img, s, self.pairs.protocol, self.pairs.lr_kernel)
        if self.degradations:
            lr_img = self.degradations.uint8(lr_img, key=i)  # (3, H / s, W / s) uint8, as a saved LR image
        return {'path': path, 'lr_img': lr_img, 'hr_img': hr_img, 'gray': loaded.gray}


def load_models(names, args, device, amp_dtype):
    """Command-line names -> (Models, problems): a checkpoint that cannot be loaded is left out, its problem (one
    line naming the file) kept for the end of the run; when none loads, that is the one error. bicubic runs at
    --scale, else at the first checkpoint's scale, else x4."""
    models, problems = [], []
    for name in names:
        try:
            models.append(Model(name, 'bicubic', 0) if name == 'bicubic' else load_model(name, args, device, amp_dtype))
        except CheckpointError as e:
            problems.append(str(e))
    if not models:
        raise no_model_error(problems, 'loaded')
    checkpoint_scales = [m.scaling_factor for m in models if m.upscaler is not None]
    for model in models:
        if model.upscaler is None:
            model.scaling_factor = args.scale or (checkpoint_scales[0] if checkpoint_scales else 4)
    return models, problems


def no_model_error(problems, done):
    """The one error when no model could be `done` ('loaded', 'run'): its problem, or all of them numbered."""
    numbered = ' '.join(f'({i}) {problem}' for i, problem in enumerate(problems, 1))
    return UserError(problems[0] if len(problems) == 1 else
                     f'none of the {len(problems)} models could be {done}: {numbered}')


def with_self_ensemble(models):
    """--self-ensemble: each model but bicubic followed by the same model run with the self-ensemble (its network
    shared), labelled '<label> + self-ensemble' so that its rows, files and failures are never the model's own."""
    out = []
    for model in models:
        out.append(model)
        if model.upscaler is not None:
            out.append(dataclasses.replace(model, label=model.label + ENSEMBLE_MARK,
                                           upscaler=dataclasses.replace(model.upscaler, self_ensemble=True)))
    return out


def bicubic_at_every_scale(models, bicubic_named):
    """--html: bicubic beside every model, at each scale the models run at (the page compares each model's output
    with bicubic's of the same LR image) -> models, a bicubic added after the first one for each scale without.
    A bicubic the user did not name (bicubic_named) is the page's: measured and shown, not saved by --save-dir."""
    models = [m if m.upscaler is not None or bicubic_named else dataclasses.replace(m, saved=False) for m in models]
    missing = sorted({m.scaling_factor for m in models} - {m.scaling_factor for m in models if m.upscaler is None})
    if not missing:
        return models
    print(f'note: --html: bicubic also at {", ".join(f"x{s}" for s in missing)}, so that the page shows it beside '
          f'every model', file=sys.stderr)
    first = next(i for i, m in enumerate(models) if m.upscaler is None)
    added = [Model('bicubic', 'bicubic', s, saved=False) for s in missing]
    return models[:first + 1] + added + models[first + 1:]


def load_model(path, args, device, amp_dtype):
    """A checkpoint, or an .onnx export of one -> a Model ready for inference; CheckpointError (naming the file)
    when it cannot be used."""
    if str(path).lower().endswith('.onnx'):  # run by onnxruntime (deploy.py), to check an export
        upscaler = Upscaler.for_onnx(path, device, args.tile, args.tile_overlap)
        kind = upscaler.model.metadata.get('kind', 'srresnet')
        return Model(path, kind if kind in KIND_NAMES else 'srresnet', upscaler.scaling_factor, upscaler)
    checkpoint = load_checkpoint(path, args.unsafe_pickle)  # read once: the weights and what they are
    network = load_generator(path, device, checkpoint=checkpoint)
    kind = checkpoint.get('kind', 'srresnet')
    content_loss = (checkpoint.get('config') or {}).get('content_loss') if kind == 'srgan' else None
    upscaler = Upscaler.for_model(network, args.tile, args.tile_overlap, amp_dtype)
    return Model(path, kind if kind in KIND_NAMES else 'srresnet', upscaler.scaling_factor, upscaler, content_loss)


def default_models():
    """bicubic and, of the shipped weights (in the repo) and the trainers' best checkpoints (under ./runs), those
    that exist; each named relative to the current folder when inside it, else by its absolute path."""
    candidates = [short_path(os.path.join(REPO, path)) for path in SHIPPED_CHECKPOINTS] + list(RUN_CHECKPOINTS)
    found = [path for path in candidates if os.path.isfile(path)]
    print(f'models: bicubic{"".join(", " + p for p in found)} (none named; looked for {", ".join(candidates)})',
          file=sys.stderr)
    return ['bicubic'] + found


def short_path(path):
    """`path` relative to the current folder when it lies inside it, else absolute."""
    path, here = os.path.abspath(path), os.path.join(os.getcwd(), '')
    return path[len(here):] if path.startswith(here) else path


def test_sets_to_run(args):
    """--test-sets / --test-folders -> ([(name, [image paths])], [the test lists read]); an image listed twice
    (under any spelling of its path) is measured once."""
    names = args.test_sets
    if names is None and not args.test_folders:  # every list in the data folder, the standard sets first
        listed = [name for name in test_set_names(args.data_folder) if name != VAL_SET]  # it chooses, not measures
        names = [n for n in STANDARD_TEST_SETS if n in listed] + [n for n in listed if n not in STANDARD_TEST_SETS]
        if not names:  # a fresh checkout: the demo photos that scikit-image ships
            print(f'test sets: no lists in {args.data_folder}, so the demo set (scikit-image\'s '
                  f'{", ".join(DEMO_TEST_IMAGES)}); for Set5, Set14, BSD100 see `python create_data_lists.py --help`',
                  file=sys.stderr)
            return [('demo', demo_images(DEMO_TEST_IMAGES))], []
    sets, list_paths = [], [os.path.join(args.data_folder, f'{name}{TEST_LIST_SUFFIX}') for name in names or []]
    for name, list_path in zip(names or [], list_paths):
        if not os.path.isfile(list_path):
            raise UserError(f'{list_path} not found; write it with `python create_data_lists.py '
                            f'--test-folders path/to/{name}`, or pass --test-folders path/to/{name} here')
        sets.append((name, read_image_list(list_path)))
    for folder in args.test_folders or []:
        paths, _ = find_images(folder)  # a UserError when the folder does not exist
        sets.append((folder_name(folder), paths))
    for name, paths in sets:
        if not paths:
            raise UserError(f'test set {name} holds no images; add some, or leave it out')
    named_twice = [name for name, n in collections.Counter(name for name, _ in sets).items() if n > 1]
    if named_twice:  # their columns, rows and files would be one
        raise UserError(f'two test sets are named {named_twice[0]}; pass each once, or rename a folder')
    return [(name, list({os.path.abspath(p): p for p in paths}.values())) for name, paths in sets], list_paths


def evaluate(models, test_sets, pairs=TestPairs(), workers=0, on_result=None):
    """Run every model over every test set, its images made into (LR, HR) pairs as `pairs` (a TestPairs) says.
    Returns one row per (model, image): dicts with model, kind, scale, protocol, lr_kernel, degrade, image (its
    name among the set's, see image_names), psnr, ssim, seconds (inference time of that image), dataset, and
    skipped: why the image could not be evaluated ('' when it was; psnr, ssim and seconds are then None).
    on_result(row, sr_img, hr_img): called for each image evaluated, with its SR image (3, H, W) in [-1, 1] and the
    HR (3, H, W) uint8 (--save-dir, --html).
    A model that loaded but fails to run (an .onnx whose runner refuses the input: CheckpointError, UserError) is
    not run again: model.failure says why, and its rows are left out, as a checkpoint that cannot be loaded is."""
    rows = []
    for model in models:  # warm up (allocations, kernel choice), so that the first image is timed fairly
        if model.upscaler is not None:
            run_or_fail(model, 'a 16x16 image', model.upscaler.upscale, torch.zeros(3, 16, 16))
    for dataset_name, paths in test_sets:
        names = dict(zip(paths, image_names(paths)))
        for s in sorted({m.scaling_factor for m in models}):  # one pass over the images per scale
            dataset = TestImages(paths, s, pairs)
            loader = DataLoader(dataset, batch_size=None, num_workers=workers)  # one image at a time, any size
            for item in tqdm(loader, total=len(dataset), desc=f'{dataset_name} x{s}', unit='img', leave=False,
                             disable=None):
                for model in [m for m in models if m.scaling_factor == s and m.failure is None]:
                    result = run_or_fail(model, item['path'], evaluate_item, model, item, names[item['path']], s,
                                         pairs)
                    if result is None:
                        continue
                    row, sr_img = result
                    rows.append({**row, 'dataset': dataset_name, 'skipped': item.get('error', '')})
                    if on_result is not None and sr_img is not None:
                        on_result(rows[-1], sr_img, item['hr_img'])
    failed = {(m.label, m.scaling_factor) for m in models if m.failure is not None}
    return [row for row in rows if (row['model'], row['scale']) not in failed]


def run_or_fail(model, where, function, *args):
    """function(*args) -> its result; or None when `model`'s runner refuses to run it (a CheckpointError or
    UserError: an .onnx of a fixed size, a uint8 input, ...), model.failure then saying why, naming the model and
    where it failed. Any other exception is a bug and keeps its traceback."""
    try:
        return function(*args)
    except (CheckpointError, UserError) as e:
        named = str(e) if model.label in str(e) else f'{model.label}: {e}'
        model.failure = f'{named} (met on {where}; its results are left out)'
        return None


def image_names(paths):
    """A test set's image paths -> their names in the results, distinct within the set: the stem ('baby'), else
    the name ('x.jpg'), else with its folders ('sub/x.png'), so that x.png, x.jpg and sub/x.png are 3 rows."""
    names = distinct_stems(paths)
    return [names[Path(path)] for path in paths]


def evaluate_item(model, item, name, s, pairs):
    """One model on one test image (a TestImages item, called `name` in the results, made as `pairs` says) -> (row
    without the dataset, SR image in [-1, 1]); for an image that could not be read, a row without numbers and no SR
    image."""
    row = {'model': model.label, 'kind': model.kind, 'scale': s, 'protocol': pairs.protocol,
           'lr_kernel': pairs.lr_kernel, 'degrade': pairs.degrade, 'image': name, 'psnr': None, 'ssim': None,
           'seconds': None}
    if 'error' in item:
        return row, None
    lr_img, hr_img = item['lr_img'], item['hr_img']  # (3, h, w), (3, h * s, w * s) uint8
    start = time.perf_counter()
    if model.upscaler is None:
        sr_img = bicubic_upscale(lr_img, s, pairs.lr_kernel)  # (3, H, W) in [-1, 1]
    else:
        lr_input = convert_image(lr_img.float(), '[0, 255]', 'imagenet-norm')
        # on out-of-memory the tile is halved for the rest of this image (a note says so)
        sr_img = model.upscaler.upscale(lr_input, on_retry=lambda message: tqdm.write(
            f'note: {item["path"]}: {message}', file=sys.stderr))
    row['seconds'] = time.perf_counter() - start  # upscale returns on the CPU: GPU work done
    psnr, ssim = evaluate_image(sr_img, convert_image(hr_img.double(), '[0, 255]', '[-1, 1]'), s, pairs.protocol,
                                gray=item['gray'])
    row['psnr'], row['ssim'] = psnr.item(), ssim.item()
    return row, sr_img


def plan_saved_images(plan, save_dir, models, test_sets):
    """--save-dir DIR: DIR/<model>/<test set>/<image>.png for every model saved (not bicubic added by --html) and
    every test image, planned before any is written -> {(model label, scale, test set, image name): path}. Names
    from file_names: two models, sets or images never share a file ('m a/best.pt' and 'm_a/best.pt')."""
    models = [m for m in models if m.saved]
    model_names, set_names = file_names([m.label for m in models]), file_names([name for name, _ in test_sets])
    images = {name: image_names(paths) for name, paths in test_sets}
    files = file_names([image for names in images.values() for image in names])
    saved = {}
    for model in models:
        for name, names in images.items():
            for image in names:
                path = Path(save_dir, model_names[model.label], set_names[name], f'{files[image]}.png')
                saved[model.label, model.scaling_factor, name, image] = plan.file(path, '--save-dir', formats=('.png',))
    return saved


def page_images(models, test_sets):
    """What the --html page shows: (test set, image name, scale, labels of the models at that scale) per image."""
    for name, paths in test_sets:
        for s in sorted({m.scaling_factor for m in models}):
            labels = [m.label for m in models if m.scaling_factor == s]
            yield from ((name, image, s, labels) for image in image_names(paths))


def save_sr(sr_img, plan, path):
    """Save an SR image ([-1, 1]) at `path`, planned by plan_saved_images."""
    with plan.write(path) as tmp_path:
        convert_image(sr_img.float(), '[-1, 1]', 'pil').save(tmp_path)


def report_problems(model_problems, rows):
    """After the table: one 'error:' line per model and test image skipped (stderr), then a UserError whose one-line
    summary ends the run (status 1). Nothing when there were none."""
    image_problems = list(dict.fromkeys(f'{r["skipped"]}; left out of {r["dataset"]}: replace it or remove it from '
                                        f'the test set' for r in rows if r['skipped']))
    if not model_problems and not image_problems:
        return
    for problem in model_problems + image_problems:
        print(f'error: {problem}', file=sys.stderr)
    counts = [f'{n} {what}{"" if n == 1 else "s"}'
              for n, what in ((len(image_problems), 'image'), (len(model_problems), 'model')) if n]
    marked = ', and marks each mean over fewer images "(n of N images)"' if image_problems else ''
    them = 'it' if len(image_problems) + len(model_problems) == 1 else 'them'
    raise UserError(f'{" and ".join(counts)} skipped; the table above leaves {them} out{marked}')


def write_csv(rows, plan, path):
    """The rows as a CSV file at `path` (planned), written atomically: a failed write leaves what was there."""
    with plan.write(path) as tmp_path:
        with open(tmp_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def plan_outputs(args, names, test_sets, list_paths):
    """The one OutputPlan of this run, before any work: --csv (a .csv), the --save-dir and --html folders and the
    page itself; the images they get are planned once the models are loaded (plan_saved_images,
    EvalPage.plan_images). An output is refused when it is an input (a checkpoint, a test image, a test list; even
    with --overwrite), exists (without --overwrite), or lies inside a --test-folders folder (the next run would
    score it as a test image). -> (plan, the page or None)."""
    reads = [name for name in names if name != 'bicubic'] + [p for _, paths in test_sets for p in paths] + list_paths
    plan = OutputPlan(reads=reads, read_folders=args.test_folders or [], overwrite=args.overwrite)
    if args.csv is not None:
        plan.file(args.csv, '--csv', formats=('.csv',))
    if args.save_dir is not None:
        plan.folder(args.save_dir, '--save-dir')
    return plan, EvalPage(args.html, plan) if args.html is not None else None


def add_inference_arguments(parser):
    """How the models run: tiles, self-ensemble, device, precision."""
    parser.add_argument('--tile', type=number(int, minimum=0), default=DEFAULT_TILE,
                        help=f'LR tile side for inference in bounded memory, at least {MIN_TILE}; 0: whole images '
                             f'[default: {DEFAULT_TILE}]')
    parser.add_argument('--tile-overlap', type=number(int, minimum=0), default=None,
                        help=f'LR pixels shared by neighbouring tiles, from {MIN_TILE_OVERLAP} to half the tile '
                             f'[default: {DEFAULT_TILE_OVERLAP}, or half the tile when less]')
    parser.add_argument('--self-ensemble', action='store_true',
                        help="also evaluate each model (not bicubic) with the self-ensemble, EDSR+'s mean over the 8 "
                             "flips and rotations of each LR image: a row of its own, marked '+ self-ensemble', under "
                             'the plain one; 8 runs of the model per image')
    parser.add_argument('--device', default='auto', help="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda:1', ...")
    parser.add_argument('--amp', action='store_true',
                        help='autocast (bf16 where supported, else fp16): faster, the numbers may move a little')


def protocols_help():
    """The protocols of metrics.PROTOCOLS, for --help: one paragraph each."""
    paragraphs = [f'--protocol {name}: HR = the {p.crop} crop whose sides are multiples of the scale; LR = '
                  f'{LR_KERNELS[p.lr_kernel]} of it (--lr-kernel); {p.description}.' for name, p in PROTOCOLS.items()]
    return '\n'.join(textwrap.fill(text, 116, subsequent_indent='    ') for text in paragraphs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=protocols_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', metavar='MODEL',
                        help="checkpoints (train_srresnet.py's, train_srgan.py's, the tutorial's with "
                             "--unsafe-pickle) and/or 'bicubic'; one that cannot be loaded is skipped (reported at "
                             "the end) [default: bicubic and those that exist of the shipped "
                             f"{', '.join(SHIPPED_CHECKPOINTS)} (in the repo, wherever eval.py is run from) and "
                             f"{', '.join(RUN_CHECKPOINTS)} (under the current folder, where the trainers write "
                             "them)]")
    parser.add_argument('--test-sets', nargs='+', default=None, metavar='NAME',
                        help='test lists in --data-folder (Set5 -> Set5_test_images.json) [default: every list '
                             'there, unless --test-folders is given]')
    parser.add_argument('--test-folders', nargs='+', default=None, metavar='DIR',
                        help='folders of HR images, each a test set named after the folder')
    parser.add_argument('--data-folder', default='./data', help='where create_data_lists.py wrote the lists')
    parser.add_argument('--protocol', choices=sorted(PROTOCOLS), default='paper',
                        help="paper: the literature's MATLAB protocol; tutorial: sgrvinod's eval.py (see below)")
    parser.add_argument('--lr-kernel', choices=sorted(LR_KERNELS), default=None,
                        help="how LR images are made from HR ones (and how bicubic upscales them) [default: the "
                             "protocol's: matlab with --protocol paper, pillow with --protocol tutorial]")
    parser.add_argument('--degrade', type=degrade_flag, default='none', metavar='SPEC',
                        help='degrade each LR image as real photos are, e.g. jpeg:75 (saved as JPEG at quality 75), '
                             'seeded: image i of a set the same way in every run (degradations.py): '
                             + DEGRADE_HELP.replace('%', '%%') + ". The paper's numbers are then left out of the "
                             'table (they are for clean LR)')
    parser.add_argument('--scale', type=int, choices=[2, 3, 4, 8], default=None,
                        help="bicubic's upscaling factor [default: the first checkpoint's, else 4]; checkpoints "
                             'always run at their own scale')
    add_inference_arguments(parser)
    parser.add_argument('--workers', type=number(int, minimum=0), default=2,
                        help='DataLoader processes making LR images (0: none)')
    parser.add_argument('--csv', default=None, metavar='FILE.csv',
                        help='also write one row per model and image here (a skipped image: no numbers, and why)')
    parser.add_argument('--save-dir', default=None, metavar='DIR',
                        help='save the SR images of the models named (not of bicubic added by --html) as '
                             'DIR/<model>/<test set>/<image>.png (names made file-name safe, with a short hash when '
                             'that changed them)')
    parser.add_argument('--html', default=None, metavar='DIR',
                        help='also write DIR/index.html, a page to compare the results by eye: the table, and per '
                             'image every model, bicubic (added at each scale the models run at) and HR, with a '
                             'before/after slider, a synchronized zoom and the PSNR / SSIM under each; it opens from '
                             'file://, offline')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace outputs that exist (--csv, --save-dir and --html files); an input (a model, a '
                             'test image or list) is never replaced. Outputs inside a --test-folders folder are '
                             'refused: the next run would score them as test images')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help="load the original tutorial's pickled checkpoints (this runs code from the file: only "
                             'for files you trust)')
    args = parser.parse_args(argv)
    try:
        args.tile, args.tile_overlap = tiling(args.tile, args.tile_overlap)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    pairs = TestPairs(args.protocol, args.lr_kernel, args.degrade)
    test_sets, list_paths = test_sets_to_run(args)
    names = list(dict.fromkeys(args.models or default_models()))
    bicubic_named = 'bicubic' in names
    if args.html and not bicubic_named:
        print('note: --html: bicubic added, the page shows it beside every model', file=sys.stderr)
        names = ['bicubic', *names]
    plan, page = plan_outputs(args, names, test_sets, list_paths)  # every output refused now, not after the work

    device = pick_device(args.device)
    amp_dtype = autocast_dtype(device) if args.amp else None
    if args.amp and amp_dtype is None:
        print(f'note: --amp: no fast autocast dtype on {device}, running in fp32', file=sys.stderr)
    models, model_problems = load_models(names, args, device, amp_dtype)
    models = with_self_ensemble(models) if args.self_ensemble else models
    models = bicubic_at_every_scale(models, bicubic_named) if page is not None else models
    saved = plan_saved_images(plan, args.save_dir, models, test_sets) if args.save_dir else {}
    if page is not None:
        page.plan_images(page_images(models, test_sets))
    columns = [(name, standard_set(name, paths)) for name, paths in test_sets]

    def on_result(row, sr_img, hr_img):
        key = (row['model'], row['scale'], row['dataset'], row['image'])
        if key in saved:
            save_sr(sr_img, plan, saved[key])
        if page is not None:
            page.add(row, sr_img, hr_img)

    rows = evaluate(models, test_sets, pairs, args.workers, on_result)
    model_problems += [m.failure for m in models if m.failure is not None]
    models = [m for m in models if m.failure is None]
    if not models:
        raise no_model_error(model_problems, 'run')

    # stdout: the results alone (python eval.py > table.md); notes and errors go to stderr
    precision = f'autocast {str(amp_dtype).split(".")[-1]}' if amp_dtype else 'fp32'
    notes = [f'Protocol {args.protocol}: {PROTOCOLS[args.protocol].description}.',
             f'LR images: {pairs.describe()}; device {device}, {precision}.']
    if args.self_ensemble:
        notes.append("Self-ensemble: the rows marked '+ self-ensemble' average the model over the 8 flips and "
                     'rotations of each LR image (EDSR+); the others are the model alone.')
    table = markdown_table(models, columns, rows, pairs)
    print('\n'.join(notes) + '\n')
    print(table)
    if page is not None:
        labels = ', '.join(dict.fromkeys(m.label for m in models))
        title = f'eval.py: {labels} on {", ".join(name for name, _ in test_sets)}'
        print(f'\nevaluation page: {page.write(title, notes, table, rows)}')
    if args.csv:
        write_csv(rows, plan, args.csv)
        print(f'\nper-image results: {args.csv}')
    if args.save_dir:
        print(f'SR images: {args.save_dir}/')
    report_problems(model_problems, rows)


if __name__ == '__main__':
    run_main(main)

"""
Write the JSON image lists that SRDataset reads: train_images.json and <name>_test_images.json.

    python create_data_lists.py                                   # the embedded demo set, no download needed
    python create_data_lists.py --train-folders /data/coco/train2014 /data/coco/val2014 \\
                                --test-folders /data/Set5 /data/Set14 /data/BSD100
    python create_data_lists.py --train-folders ../shared/data/T91 ../shared/data/BSD200 \\
                                --test-folders ../shared/data/Set5 ../shared/data/Set14 ../shared/data/BSD100

Folders are walked recursively; PNG, JPEG, BMP, TIFF and WebP files are accepted (any letter case). Every file is
decoded once, so a bad file is found now rather than hours into training: unreadable, truncated, empty and
non-image files, and training images smaller than --min-size, are skipped and listed with the reason.
A test set is named after its folder (.../Set5/ -> Set5_test_images.json), and each is given once.

A training image that is also a test image would make every number eval.py prints meaningless, so it is refused,
and nothing is written, unless --allow-test-overlap is given (then a warning says how many). Caught: the same pixels
(a training folder that holds a test folder, a renamed or losslessly re-saved copy), and a copy of the same size
that is flipped, rotated by 90 degrees, grey, or re-saved lossily (JPEG, even at quality 30): their 16x16 grey
thumbnails match. Not caught: copies resized or cropped (Set5's woman.png is a resized crop of BSD200's 302003.png,
so the classic T91 + BSD200 training set holds one Set5 picture), or otherwise edited. An image found twice in the
training folders (a copy, or one file reached through nested folders) is listed once, with a note.

The lists are written to --output-folder; a list there from an earlier run is replaced, any other file of that name
is refused.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets import (DEMO_TEST_IMAGES, DEMO_TRAIN_IMAGES, TEST_LIST_SUFFIX, TRAIN_LIST, VAL_SET, demo_images,
                      find_images, folder_name, is_image_list)
from outputs import OutputError, OutputPlan, atomic_path
from images import read_image
from utils import ImageLoadError, UserError, number, run_main

THUMBNAIL = 16  # px: the side of the grey thumbnails that find near copies of test images
NEAR_COPY = 0.99  # their correlation above which a training image is a test image's copy (see near_copies)


@dataclasses.dataclass(frozen=True)
class ListRules:
    """How the lists are made: the flags of the same names."""
    min_size: int = 100  # px: training images with a shorter side are skipped
    workers: int = 1  # processes that check images
    allow_test_overlap: bool = False  # list training images that are test images too, with a warning
    val_images: int | None = None  # training images held out as the validation list; None: held_out_count's


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What tells whether two images are one picture: exactly (digest) or nearly (size and thumbnail)."""
    digest: str  # pixel_digest: the same pixels
    size: tuple  # (width, height)
    thumbnail: np.ndarray | None  # see thumbnail(); None for an image of one flat colour


def check_image(args):
    """(path, min_size) -> (path, None, Fingerprint) when usable, else (path, reason, None)."""
    path, min_size = args
    try:
        if os.path.getsize(path) == 0:
            return path, 'empty file', None
    except OSError as e:  # a broken symbolic link, a file removed meanwhile, no permission
        return path, f'unreadable ({e.strerror or e})', None
    try:
        img = read_image(path)
    except ImageLoadError as e:
        return path, str(e).removeprefix(f'{path}: '), None
    height, width = img.rgb.shape[:2]
    if min(width, height) < min_size:
        return path, f'{width}x{height} is smaller than --min-size {min_size}', None
    return path, None, Fingerprint(pixel_digest(img.rgb), (width, height), thumbnail(img.rgb))


def pixel_digest(rgb):
    """What makes two files the same image: a SHA-256 of the decoded RGB values, their size and bit depth.

    The decoded pixels rather than the file bytes: a test image re-saved losslessly (PNG -> BMP or WebP, another
    compression level, metadata stripped, gray saved as RGB) is still that test image, and its bytes differ. The
    pixels are decoded here anyway, and hashing them is cheap beside decoding them (SHA-256 runs in hardware on
    current CPUs). Alpha is left out (training and eval.py use RGB); a lossy copy (PNG -> JPEG) is near_copies' to
    find."""
    rgb = np.ascontiguousarray(rgb)  # (H, W, 3), uint8 or uint16
    digest = hashlib.sha256(f'{rgb.shape} {rgb.dtype}'.encode())
    digest.update(rgb)
    return digest.hexdigest()


def thumbnail(rgb):
    """An image's grey THUMBNAIL x THUMBNAIL thumbnail (BT.601 luma, each pixel the mean of a block of the image,
    cropped at its centre to whole blocks, so that a flipped or rotated copy gives the thumbnail flipped or rotated),
    flattened, minus its mean, of unit norm: the dot product of two is their correlation, which JPEG noise or a grey
    copy barely moves (>= 0.998 at JPEG quality 30). None for an image of one flat colour, or smaller than that."""
    height, width = (side // THUMBNAIL * THUMBNAIL for side in rgb.shape[:2])
    if not height or not width:
        return None
    top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    eight_bits = rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)  # (H, W, 3)
    grey = np.asarray(Image.fromarray(eight_bits[top:top + height, left:left + width]).convert('L'), np.float32)
    small = grey.reshape(THUMBNAIL, height // THUMBNAIL, THUMBNAIL, width // THUMBNAIL).mean(axis=(1, 3)).ravel()
    small = small - small.mean()  # (256,)
    norm = np.linalg.norm(small)
    return small / norm if norm > 1e-3 else None


def make_list(folders, min_size, workers, what):
    """Check every image in `folders`; returns the usable (path, Fingerprint) pairs and the skipped (path, reason)
    pairs."""
    candidates, others = [], 0
    for folder in folders:
        found, n_others = find_images(folder)
        candidates += found
        others += n_others
    if others:
        print(f'{what}: passed over {others} files without an image extension')
    kept, skipped = [], []
    jobs = [(path, min_size) for path in candidates]
    with Pool(workers) if workers > 1 and len(jobs) >= 64 else _NoPool() as pool:
        for path, reason, fingerprint in tqdm(pool.imap(check_image, jobs, chunksize=16), total=len(jobs),
                                              desc=what, leave=False, disable=len(jobs) < 100):
            if reason is None:
                kept.append((path, fingerprint))
            else:
                skipped.append((path, reason))
                tqdm.write(f"skipped {path}: {reason}")
    return kept, skipped


class _NoPool:
    """Pool's interface, in this process (no worker start-up for small folders, easier to debug)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, iterable, chunksize=1):
        return map(fn, iterable)


def write_list(paths, output_folder, file_name):
    """Write a JSON list of image paths atomically: a full disk leaves no truncated list behind."""
    path = os.path.join(output_folder, file_name)
    with atomic_path(path) as tmp_path, open(tmp_path, 'w') as f:
        json.dump(paths, f, indent=1)
    return path


def plan_lists(output_folder, file_names, image_folders=()):
    """Check, before any work, where the lists go (outputs.OutputPlan): a list from an earlier run there is replaced
    (it is this script's own output); another file of that name, a folder, a name too long, or a folder inside the
    image folders it reads (what a command writes stays out of its inputs) is refused."""
    plan = OutputPlan(read_folders=image_folders)
    plan.folder(output_folder, '--output-folder')
    for file_name in file_names:
        path = os.path.join(output_folder, file_name)
        if os.path.isfile(path) and not is_image_list(path):
            raise OutputError(f'--output-folder {output_folder}: {path} exists and is not a data list (a JSON list '
                              f'of image paths), so it is not replaced; move it, or choose another --output-folder')
        plan.file(path, '--output-folder', formats=('.json',), if_exists='replace')


def name_test_sets(test_folders):
    """Each test folder's name, which names its list. A test set given twice, or two test folders of one name, is
    refused: the second list would replace the first, or one set would be scored twice."""
    names = [folder_name(folder) for folder in test_folders]
    for i, folder in enumerate(test_folders):
        for earlier, earlier_name in zip(test_folders[:i], names):
            if os.path.realpath(earlier) == os.path.realpath(folder):
                raise UserError(f'the test folder {earlier} is given twice in --test-folders'
                                f'{f" (also as {folder})" if folder != earlier else ""}; give each test set once')
            if earlier_name == names[i]:
                raise UserError(f'the test folders {earlier} and {folder} are both named {names[i]}, and a test set '
                                f'is named after its folder ({names[i]}{TEST_LIST_SUFFIX}): rename one of them')
    return names


def test_images_in_training(train, tests):
    """The training images that are test images -> {path: (test set name, test path, exactly: bool)}. `train` holds
    (path, Fingerprint) pairs, `tests` {test set name: (path, Fingerprint) pairs}. Found by pixels, not names, so a
    test folder inside a training folder, a renamed copy and one file reached by two paths are all caught; then by
    thumbnail (near_copies)."""
    test_image_of = {}
    for name, images in tests.items():
        for path, fingerprint in images:
            test_image_of.setdefault(fingerprint.digest, (name, path))
    overlap = {path: (*test_image_of[fp.digest], True) for path, fp in train if fp.digest in test_image_of}
    near = near_copies([(path, fp) for path, fp in train if path not in overlap], tests)
    return overlap | {path: (name, test_path, False) for path, (name, test_path) in near.items()}


def near_copies(train, tests):
    """Training images that are a test image flipped, rotated by 90 degrees, grey, or re-saved lossily (JPEG): of
    its size (or rotated), with thumbnails whose correlation in one of the 8 orientations is above NEAR_COPY (two
    different pictures of T91, BSD200, Set5, Set14 and BSD100 reach 0.95 at most). -> {path: (name, test path)}."""
    by_size = {}  # sides sorted -> [(test set name, test path)], and the 8 orientations of their thumbnails
    for name, images in tests.items():
        for path, fp in images:
            if fp.thumbnail is not None:
                tiles = fp.thumbnail.reshape(THUMBNAIL, THUMBNAIL)
                turns = [np.rot90(tiles, k) for k in range(4)]
                names, variants = by_size.setdefault(tuple(sorted(fp.size)), ([], []))
                names.append((name, path))
                variants += [v.ravel() for turn in turns for v in (turn, turn[:, ::-1])]
    by_size = {size: (names, np.stack(variants)) for size, (names, variants) in by_size.items()}
    near = {}
    for path, fp in train:
        names, variants = by_size.get(tuple(sorted(fp.size)), (None, None))
        if names is not None and fp.thumbnail is not None:
            correlations = variants @ fp.thumbnail  # (8 x the test images of this size,)
            if correlations.max() > NEAR_COPY:
                near[path] = names[int(correlations.argmax()) // 8]
    return near


def check_no_test_images_in_training(train, tests, allow_test_overlap):
    """Refuse training images that are test images (test_images_in_training): eval.py would score the model on
    what it trained on. With allow_test_overlap, a warning instead."""
    overlap = test_images_in_training(train, tests)
    if not overlap:
        return
    per_set = {name: [] for name in tests}  # in the order of --test-folders
    for path, (name, test_path, exactly) in overlap.items():
        per_set[name].append(f"{path} {'is' if exactly else 'looks like'} {name}'s {os.path.basename(test_path)}")
    per_set = {name: found for name, found in per_set.items() if found}
    examples = [found[0] for found in per_set.values()] + [e for found in per_set.values() for e in found[1:]]
    counts = ', '.join(f'{name}: {len(found)}' for name, found in per_set.items())
    n_near = sum(not exactly for _, _, exactly in overlap.values())
    copies = 'copies flipped, rotated, grey or re-saved lossily'
    how = ('the same pixels' if not n_near else copies if n_near == len(overlap) else
           f'{len(overlap) - n_near} the same pixels, {n_near} {copies}')
    are = 'is also a test image' if len(overlap) == 1 else 'are also test images'
    what = (f'{len(overlap)} of {len({path for path, _ in train})} training images {are} ({counts}; {how}), e.g. '
            f'{", ".join(examples[:2])}')
    if allow_test_overlap:
        print(f"warning: {what}; listed anyway (--allow-test-overlap): eval.py's numbers on {', '.join(per_set)} "
              f'will not measure how the model does on images it has not seen', file=sys.stderr)
        return
    # never advise deleting files that are the test sets themselves: those come out by choosing other folders
    test_files = {os.path.realpath(path) for images in tests.values() for path, _ in images}
    n_test_files = sum(os.path.realpath(path) in test_files for path in overlap)
    advice = ['pass training folders that do not contain the test folders'] if n_test_files else []
    advice += ['move the copies of test images out of the training folders'] if n_test_files < len(overlap) else []
    raise UserError(f"{what}; eval.py's numbers would be meaningless: {' and '.join(advice)} "
                    f'(--allow-test-overlap lists them anyway)')


def without_duplicates(train):
    """The paths of the (path, Fingerprint) pairs `train`, each image once (the first found): a copy, or one file
    reached through nested folders, would be trained on twice as often. One note says how many were dropped."""
    first_path, paths, duplicates = {}, [], []
    for path, fingerprint in train:
        if fingerprint.digest in first_path:
            duplicates.append((path, first_path[fingerprint.digest]))
        else:
            first_path[fingerprint.digest] = path
            paths.append(path)
    if duplicates:
        path, first = duplicates[0]
        same = 'the same file, found twice' if path == first else f'the same as {first}'
        print(f'note: {len(duplicates)} training image{"s" * (len(duplicates) > 1)} found twice (the same pixels), '
              f'listed once, e.g. {path} ({same})')
    return paths


def create_data_lists(train_folders, test_folders, output_folder, rules=ListRules()):
    """Write the lists and return a summary dict {list file: number of images}. Skipped files are printed. Every
    folder and every list's path is checked before any image is decoded, and every image before any list is
    written, so a refusal leaves the output folder as it was."""
    for folder in train_folders + test_folders:  # a typo is found now, not after decoding the other folders
        if not os.path.isdir(folder):
            raise UserError(f'{folder} is not a folder')
    names = name_test_sets(test_folders)
    if train_folders and VAL_SET in names:
        raise UserError(f'a test folder named {VAL_SET} would share its list with the validation list '
                        f'({VAL_SET}{TEST_LIST_SUFFIX}); rename the folder')
    train_lists = [TRAIN_LIST, f'{VAL_SET}{TEST_LIST_SUFFIX}'] if train_folders else []
    plan_lists(output_folder, train_lists + [f'{n}{TEST_LIST_SUFFIX}' for n in names], train_folders + test_folders)
    train, tests, n_skipped = [], {}, 0
    if train_folders:
        train, skipped = make_list(train_folders, rules.min_size, rules.workers, 'train')
        if not train:
            raise UserError(f'no usable training images in {", ".join(train_folders)}')
        n_skipped += len(skipped)
    for folder, name in zip(test_folders, names):
        tests[name], skipped = make_list([folder], 1, rules.workers, name)  # test images are kept at any size
        if not tests[name]:
            raise UserError(f'no usable test images in {folder}')
        n_skipped += len(skipped)
    check_no_test_images_in_training(train, tests, rules.allow_test_overlap)
    lists = hold_out(without_duplicates(train), rules.val_images) if train_folders else {}
    lists.update({f'{name}{TEST_LIST_SUFFIX}': [path for path, _ in images] for name, images in tests.items()})
    summary = {write_list(paths, output_folder, file_name): len(paths) for file_name, paths in lists.items()}
    if train_folders:
        remove_stale_validation_list(output_folder, lists)
    for path, count in summary.items():
        print(f'{path}: {count} images')
    print(f'{sum(summary.values())} images listed, {n_skipped} skipped')
    return summary


def hold_out(paths, n=None):
    """The training list and the validation list: `n` of the training images (None: held_out_count's), evenly spaced
    in the list (so from every training folder in proportion), held out of training to validate on and choose
    best.pt with, so that the test sets are only ever measured. -> {list file: paths}; no validation list for n = 0
    (remove_stale_validation_list)."""
    n = held_out_count(len(paths)) if n is None else n
    if n >= len(paths):
        raise UserError(f'--val-images {n} would leave no training images (there are {len(paths)}); hold out fewer')
    val_list = f'{VAL_SET}{TEST_LIST_SUFFIX}'
    if n == 0:
        return {TRAIN_LIST: paths}
    chosen = {round((i + 0.5) * len(paths) / n - 0.5) for i in range(n)}  # indices, evenly spaced
    print(f'validation: {n} training images held out ({val_list}; the trainers choose best.pt on it)')
    return {TRAIN_LIST: [p for i, p in enumerate(paths) if i not in chosen],
            val_list: [p for i, p in enumerate(paths) if i in chosen]}


def remove_stale_validation_list(output_folder, lists):
    """An earlier validation list beside new lists that have none: it would name training images (plan_lists has
    checked that a file of its name is a list, this script's own output)."""
    path = os.path.join(output_folder, f'{VAL_SET}{TEST_LIST_SUFFIX}')
    if f'{VAL_SET}{TEST_LIST_SUFFIX}' not in lists and os.path.isfile(path):
        os.remove(path)
        print(f'removed the earlier validation list {path}')


def held_out_count(n_train):
    """How many training images to hold out for validation by default: 10, or a tenth of a set under 100 images."""
    return min(10, n_train // 10)


def create_demo_lists(output_folder):
    """The embedded default: scikit-image's bundled photos (train: 12 images, test set 'demo': 2)."""
    plan_lists(output_folder, [TRAIN_LIST, f'demo{TEST_LIST_SUFFIX}', f'{VAL_SET}{TEST_LIST_SUFFIX}'])
    train, test = demo_images(DEMO_TRAIN_IMAGES), demo_images(DEMO_TEST_IMAGES)
    for path in train + test:
        read_image(path)  # fail loudly if a scikit-image release dropped one
    print(f'demo data: {len(train)} training and {len(test)} test photos shipped with scikit-image '
          f'({os.path.dirname(train[0])})')
    write_list(train, output_folder, TRAIN_LIST)
    write_list(test, output_folder, f'demo{TEST_LIST_SUFFIX}')
    remove_stale_validation_list(output_folder, {})
    print(f'wrote {output_folder}/{TRAIN_LIST} and {output_folder}/demo{TEST_LIST_SUFFIX}; for real data see '
          f'`python create_data_lists.py --help`')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--train-folders', nargs='+', default=[], help='folders of training images (HR)')
    parser.add_argument('--test-folders', nargs='+', default=[], help='folders of test images, one test set each')
    parser.add_argument('--min-size', type=number(int, minimum=1), default=100,
                        help='skip training images with a side below this (must be >= the training crop, 96)')
    parser.add_argument('--output-folder', default='./data', help='where the JSON lists are written')
    parser.add_argument('--workers', type=number(int, minimum=0), default=min(8, os.cpu_count() or 1),
                        help='processes that check images in parallel')
    parser.add_argument('--val-images', type=number(int, minimum=0), default=None,
                        help=f'training images held out as the validation list ({VAL_SET}{TEST_LIST_SUFFIX}, evenly '
                             f'spaced in the training list), which the trainers validate and choose best.pt on, so '
                             f'the test sets are only ever measured; 0: none. Default: 10, or a tenth of a training '
                             f'set under 100 images')
    parser.add_argument('--allow-test-overlap', action='store_true',
                        help='list training images that are also test images (the same pixels, or a copy flipped, '
                             'rotated, grey or re-saved lossily; not resized or cropped copies, see above) with a '
                             'warning, instead of refusing: eval.py then scores the model on images it trained on')
    args = parser.parse_args()
    if not args.train_folders and not args.test_folders:
        create_demo_lists(args.output_folder)
    else:
        create_data_lists(args.train_folders, args.test_folders, args.output_folder,
                          ListRules(args.min_size, args.workers, args.allow_test_overlap, args.val_images))


if __name__ == '__main__':
    run_main(main)

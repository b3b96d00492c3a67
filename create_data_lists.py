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

A training image that is also a test image (the same pixels: a training folder that holds a test folder, or a
renamed or losslessly re-saved copy) would make every number eval.py prints meaningless, so it is refused, and
nothing is written, unless --allow-test-overlap is given (then a warning says how many). An image found twice in the
training folders (a copy, or one file reached through nested folders) is listed once, with a note.
"""

import argparse
import hashlib
import json
import os
import sys
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

from datasets import DEMO_TEST_IMAGES, DEMO_TRAIN_IMAGES, TEST_LIST_SUFFIX, demo_images, find_images, folder_name
from outputs import atomic_path
from utils import ImageLoadError, number, read_image, run_main


def check_image(args):
    """(path, min_size) -> (path, None, pixel digest) when usable, else (path, reason, None)."""
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
    return path, None, pixel_digest(img.rgb)


def pixel_digest(rgb):
    """What makes two files the same image: a SHA-256 of the decoded RGB values, their size and bit depth.

    The decoded pixels rather than the file bytes: a test image re-saved losslessly (PNG -> BMP or WebP, another
    compression level, metadata stripped, gray saved as RGB) is still that test image, and its bytes differ. The
    pixels are decoded here anyway, and hashing them costs ~5% of the decode (SHA-256 runs in hardware on current
    CPUs). Alpha is left out (training and eval.py use RGB); a lossy copy (PNG -> JPEG) is not caught."""
    rgb = np.ascontiguousarray(rgb)  # (H, W, 3), uint8 or uint16
    digest = hashlib.sha256(f'{rgb.shape} {rgb.dtype}'.encode())
    digest.update(rgb)
    return digest.hexdigest()


def make_list(folders, min_size, workers, what):
    """Check every image in `folders`; returns the usable (path, pixel digest) pairs and the skipped (path, reason)
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
        for path, reason, digest in tqdm(pool.imap(check_image, jobs, chunksize=16), total=len(jobs), desc=what,
                                         leave=False, disable=len(jobs) < 100):
            if reason is None:
                kept.append((path, digest))
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


def name_test_sets(test_folders):
    """Each test folder's name, which names its list. A test set given twice, or two test folders of one name, is
    refused: the second list would replace the first, or one set would be scored twice."""
    names = [folder_name(folder) for folder in test_folders]
    for i, folder in enumerate(test_folders):
        for earlier, earlier_name in zip(test_folders[:i], names):
            if os.path.realpath(earlier) == os.path.realpath(folder):
                raise SystemExit(f'error: the test folder {earlier} is given twice in --test-folders'
                                 f'{f" (also as {folder})" if folder != earlier else ""}; give each test set once')
            if earlier_name == names[i]:
                raise SystemExit(f'error: the test folders {earlier} and {folder} are both named {names[i]}, and '
                                 f'a test set is named after its folder ({names[i]}{TEST_LIST_SUFFIX}): '
                                 f'rename one of them')
    return names


def check_no_test_images_in_training(train, tests, allow_test_overlap):
    """Refuse training images that are test images: eval.py would score the model on what it trained on. `train`
    holds (path, digest) pairs, `tests` {test set name: (path, digest) pairs}; found by pixels, not names, so a
    test folder inside a training folder, a renamed copy and one file reached by two paths are all caught."""
    test_image_of, test_files = {}, set()
    for name, images in tests.items():
        for path, digest in images:
            test_image_of.setdefault(digest, (name, os.path.basename(path)))
            test_files.add(os.path.realpath(path))
    overlap = {path: test_image_of[digest] for path, digest in train if digest in test_image_of}  # a path once
    if not overlap:
        return
    per_set = {name: [] for name in tests}  # in the order of --test-folders
    for path, (name, test_file) in overlap.items():
        per_set[name].append(f"{path} is {name}'s {test_file}")
    per_set = {name: found for name, found in per_set.items() if found}
    examples = [found[0] for found in per_set.values()] + [e for found in per_set.values() for e in found[1:]]
    counts = ', '.join(f'{name}: {len(found)}' for name, found in per_set.items())
    are = 'is also a test image' if len(overlap) == 1 else 'are also test images'
    what = (f'{len(overlap)} of {len({path for path, _ in train})} training images {are} ({counts}; the same '
            f'pixels), e.g. {", ".join(examples[:2])}')
    if allow_test_overlap:
        print(f"warning: {what}; listed anyway (--allow-test-overlap): eval.py's numbers on {', '.join(per_set)} "
              f'will not measure how the model does on images it has not seen', file=sys.stderr)
        return
    # never advise deleting files that are the test sets themselves: those come out by choosing other folders
    n_test_files = sum(os.path.realpath(path) in test_files for path in overlap)
    advice = ['pass training folders that do not contain the test folders'] if n_test_files else []
    advice += ['move the copies of test images out of the training folders'] if n_test_files < len(overlap) else []
    raise SystemExit(f"error: {what}; eval.py's numbers would be meaningless: {' and '.join(advice)} "
                     f'(--allow-test-overlap lists them anyway)')


def without_duplicates(train):
    """The paths of the (path, digest) pairs `train`, each image once (the first found): a copy, or one file reached
    through nested folders, would be trained on twice as often. One note says how many were dropped."""
    first_path, paths, duplicates = {}, [], []
    for path, digest in train:
        if digest in first_path:
            duplicates.append((path, first_path[digest]))
        else:
            first_path[digest] = path
            paths.append(path)
    if duplicates:
        path, first = duplicates[0]
        same = 'the same file, found twice' if path == first else f'the same as {first}'
        print(f'note: {len(duplicates)} training image{"s" * (len(duplicates) > 1)} found twice (the same pixels), '
              f'listed once, e.g. {path} ({same})')
    return paths


def create_data_lists(train_folders, test_folders, min_size, output_folder, workers=1, allow_test_overlap=False):
    """Write the lists and return a summary dict {list file: number of images}. Skipped files are printed. Every
    folder is checked before any list is written, so a refusal leaves the output folder as it was."""
    for folder in train_folders + test_folders:  # a typo is found now, not after decoding the other folders
        if not os.path.isdir(folder):
            raise SystemExit(f'error: {folder} is not a folder')
    names = name_test_sets(test_folders)
    train, tests, n_skipped = [], {}, 0
    if train_folders:
        train, skipped = make_list(train_folders, min_size, workers, 'train')
        if not train:
            raise SystemExit(f'error: no usable training images in {", ".join(train_folders)}')
        n_skipped += len(skipped)
    for folder, name in zip(test_folders, names):
        tests[name], skipped = make_list([folder], 1, workers, name)  # test images are kept at any size
        if not tests[name]:
            raise SystemExit(f'error: no usable test images in {folder}')
        n_skipped += len(skipped)
    check_no_test_images_in_training(train, tests, allow_test_overlap)
    lists = {'train_images.json': without_duplicates(train)} if train_folders else {}
    lists.update({f'{name}{TEST_LIST_SUFFIX}': [path for path, _ in images] for name, images in tests.items()})
    summary = {write_list(paths, output_folder, file_name): len(paths) for file_name, paths in lists.items()}
    for path, count in summary.items():
        print(f'{path}: {count} images')
    print(f'{sum(summary.values())} images listed, {n_skipped} skipped')
    return summary


def create_demo_lists(output_folder):
    """The embedded default: scikit-image's bundled photos (train: 12 images, test set 'demo': 2)."""
    train, test = demo_images(DEMO_TRAIN_IMAGES), demo_images(DEMO_TEST_IMAGES)
    for path in train + test:
        read_image(path)  # fail loudly if a scikit-image release dropped one
    print(f'demo data: {len(train)} training and {len(test)} test photos shipped with scikit-image '
          f'({os.path.dirname(train[0])})')
    write_list(train, output_folder, 'train_images.json')
    write_list(test, output_folder, f'demo{TEST_LIST_SUFFIX}')
    print(f'wrote {output_folder}/train_images.json and {output_folder}/demo_test_images.json; for real data see '
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
    parser.add_argument('--allow-test-overlap', action='store_true',
                        help='list training images that are also test images (same pixels) with a warning, '
                             'instead of refusing: eval.py then scores the model on images it trained on')
    args = parser.parse_args()
    if not args.train_folders and not args.test_folders:
        create_demo_lists(args.output_folder)
    else:
        create_data_lists(args.train_folders, args.test_folders, args.min_size, args.output_folder, args.workers,
                          args.allow_test_overlap)


if __name__ == '__main__':
    run_main(main)

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
A test set is named after its folder (.../Set5/ -> Set5_test_images.json).
"""

import argparse
import json
import os
from multiprocessing import Pool

from tqdm import tqdm

from datasets import DEMO_TEST_IMAGES, DEMO_TRAIN_IMAGES, TEST_LIST_SUFFIX, demo_images, find_images, folder_name
from utils import ImageLoadError, atomic_path, read_image


def check_image(args):
    """(path, min_size) -> (path, None) when usable, else (path, reason)."""
    path, min_size = args
    try:
        if os.path.getsize(path) == 0:
            return path, 'empty file'
    except OSError as e:  # a broken symbolic link, a file removed meanwhile, no permission
        return path, f'unreadable ({e.strerror or e})'
    try:
        img = read_image(path)
    except ImageLoadError as e:
        return path, str(e).removeprefix(f'{path}: ')
    height, width = img.rgb.shape[:2]
    if min(width, height) < min_size:
        return path, f'{width}x{height} is smaller than --min-size {min_size}'
    return path, None


def make_list(folders, min_size, workers, what):
    """Check every image in `folders`; returns the usable paths and the skipped (path, reason) pairs."""
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
        for path, reason in tqdm(pool.imap(check_image, jobs, chunksize=16), total=len(jobs), desc=what,
                                 leave=False, disable=len(jobs) < 100):
            if reason is None:
                kept.append(path)
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


def create_data_lists(train_folders, test_folders, min_size, output_folder, workers=1):
    """Write the lists and return a summary dict {list file: number of images}. Skipped files are printed."""
    summary, n_skipped = {}, 0
    if train_folders:
        kept, skipped = make_list(train_folders, min_size, workers, 'train')
        if not kept:
            raise SystemExit(f'error: no usable training images in {", ".join(train_folders)}')
        summary[write_list(kept, output_folder, 'train_images.json')] = len(kept)
        n_skipped += len(skipped)
    names = [folder_name(folder) for folder in test_folders]
    if len(set(names)) != len(names):
        raise SystemExit(f'error: two test folders share a name ({", ".join(names)}); each names its list')
    for folder, name in zip(test_folders, names):
        kept, skipped = make_list([folder], 1, workers, name)  # test images are kept at any size
        if not kept:
            raise SystemExit(f'error: no usable test images in {folder}')
        summary[write_list(kept, output_folder, f'{name}{TEST_LIST_SUFFIX}')] = len(kept)
        n_skipped += len(skipped)
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
    parser.add_argument('--min-size', type=int, default=100,
                        help='skip training images with a side below this (must be >= the training crop, 96)')
    parser.add_argument('--output-folder', default='./data', help='where the JSON lists are written')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                        help='processes that check images in parallel')
    args = parser.parse_args()
    if not args.train_folders and not args.test_folders:
        create_demo_lists(args.output_folder)
    else:
        create_data_lists(args.train_folders, args.test_folders, args.min_size, args.output_folder, args.workers)


if __name__ == '__main__':
    main()

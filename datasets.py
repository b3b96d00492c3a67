"""
The data: SRDataset, (LR, HR) pairs from the JSON image lists that create_data_lists.py writes; InfiniteSampler,
the endless, resumable, rank-sharded stream of training samples that the trainers draw from; and where images and
lists are found (image folders, the test lists of a data folder, the demo photos shipped with scikit-image).
"""

import hashlib
import json
import math
import os
import random
import re
import stat

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from outputs import atomic_path
from utils import IMAGE_EXTENSIONS, ImageLoadError, ImageTransforms, UserError, load_image

# The embedded default: natural photos that scikit-image's wheel ships, so the pipeline runs with no download.
DEMO_TRAIN_IMAGES = ['coffee.png', 'rocket.jpg', 'motorcycle_left.png', 'hubble_deep_field.jpg', 'ihc.png',
                     'retina.jpg', 'camera.png', 'coins.png', 'moon.png', 'grass.png', 'gravel.png', 'brick.png']
DEMO_TEST_IMAGES = ['astronaut.png', 'chelsea.png']
TRAIN_LIST = 'train_images.json'
TEST_LIST_SUFFIX = '_test_images.json'  # Set5 -> Set5_test_images.json
CACHE_FORMAT = 'rgb8 v2'  # changes when what ImageCache holds, or how its key is made, does
REBUILD = 'rebuild the lists with create_data_lists.py (it skips files it cannot use)'


class DataListError(UserError, ValueError):
    """A data list, or an image it lists, that training cannot use; the message names it and says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# The data lists: the one reader

def read_image_list(path):
    """The image paths of a data list (train_images.json, <name>_test_images.json: a JSON list of path strings,
    as create_data_lists.py writes them) -> [str]. A DataListError naming the list when it is missing, unreadable,
    empty or of another shape; the files it lists are not looked at (see check_listed_files)."""
    try:
        with open(path, 'rb') as f:
            paths = json.loads(f.read())
    except FileNotFoundError:
        raise DataListError(f'{path} not found; write the data lists first with `python create_data_lists.py` '
                            f'(see its --help)') from None
    except OSError as e:
        raise DataListError(f'{path}: unreadable ({e.strerror or e}); {REBUILD}') from None
    except ValueError:  # not JSON, not UTF-8
        raise DataListError(f'{path} is not JSON, so not a data list; {REBUILD}') from None
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise DataListError(f'{path} is JSON but not a list of image paths; {REBUILD}')
    if not paths:
        raise DataListError(f'{path} lists no images; {REBUILD}')
    return paths


def is_image_list(path):
    """Whether `path` holds a data list (what create_data_lists.py may replace without asking)."""
    try:
        read_image_list(path)
        return True
    except DataListError:
        return False


def check_listed_files(list_path, paths):
    """A DataListError, before training starts, when a listed image is missing, empty, not a file or not readable:
    one line naming the first, with how many (a stat of each file: cheap; the cache decodes them, see ImageCache)."""
    bad = []
    for path in paths:
        try:
            info = os.stat(path)
            reason = ('not a file' if not stat.S_ISREG(info.st_mode) else 'empty file' if info.st_size == 0 else
                      None if os.access(path, os.R_OK) else 'no permission to read it')
        except OSError as e:  # a deleted file, a broken link
            reason = 'no such file' if isinstance(e, FileNotFoundError) else e.strerror or str(e)
        if reason is not None:
            bad.append((path, reason))
    if bad:
        raise unusable_images(list_path, bad, len(paths))


def unusable_images(list_path, bad, total):
    """The one line for listed images that cannot be used: bad holds (path, reason), the first is named."""
    path, reason = bad[0]
    return DataListError(f'{list_path}: {len(bad)} of {total} listed image{"s" * (total > 1)} cannot be used, the '
                         f'first: {path}: {reason}; {REBUILD}')


class SRDataset(Dataset):
    """Reads `train_images.json` (split 'train') or `<test_data_name>_test_images.json` (split 'test') from
    `data_folder` and yields (lr_img, hr_img) tensors:
        train: lr (3, crop_size / s, crop_size / s), hr (3, crop_size, crop_size) - a random crop of each image
        test:  lr (3, H / s, W / s), hr (3, H, W) - the whole image, trimmed to a multiple of the scale
    in the ranges lr_img_type / hr_img_type (see utils.convert_image); augment: random flips / 90-degree rotations
    of the training crops (see utils.ImageTransforms). The tutorial trains with
    lr_img_type='imagenet-norm' and hr_img_type='[-1, 1]'.

    cache_images: decode every image once, now, and keep it in memory as uint8 (H * W * 3 bytes each: ~150 MB for
    the 291-image set, far too much for COCO). Then a crop costs no file decode; DataLoader workers started by
    fork share the cache.
    An index may be an int (the crop position comes from the global `random` module, as in the tutorial) or a pair
    (int, crop_seed) as InfiniteSampler yields them: the crop then depends on crop_seed alone, whatever process
    makes it, which is what makes a resumed run see exactly the crops an uninterrupted one would."""

    def __init__(self, data_folder, split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                 test_data_name=None, blur_sigma=0.0, augment=False, cache_images=False):
        self.split = split.lower()
        if self.split not in {'train', 'test'}:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        if self.split == 'test' and test_data_name is None:
            raise ValueError("split 'test' needs test_data_name (e.g. 'Set5')")

        list_name = TRAIN_LIST if self.split == 'train' else f'{test_data_name}{TEST_LIST_SUFFIX}'
        self.list_path = os.path.join(data_folder, list_name)
        self.images = read_image_list(self.list_path)

        self.transform = ImageTransforms(self.split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                                         blur_sigma=blur_sigma, augment=augment)
        # (H, W, 3) uint8 arrays, decoded once
        self.cache = [np.asarray(load_image(path)) for path in self.images] if cache_images else None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        i, crop_seed = i if isinstance(i, tuple) else (i, None)
        if self.cache is not None:
            img = Image.fromarray(self.cache[i])  # PIL RGB, 8 bits per channel
        else:
            img = load_image(self.images[i])
        if crop_seed is None:
            return self.transform(img, name=self.images[i])  # (lr_img, hr_img)
        # the transform draws its crop from the global `random`: seed it for this sample, then put it back
        outer_state = random.getstate()
        random.seed(crop_seed)
        try:
            return self.transform(img, name=self.images[i])
        finally:
            random.setstate(outer_state)


class InfiniteSampler(Sampler):
    """An endless stream of (image index, crop seed) pairs: epoch after epoch of the dataset, each epoch in its own
    random order, so one DataLoader iterator (and its workers) lives for the whole run instead of restarting every
    len(dataset) / batch_size iterations (18 for the 291-image set).

    The stream is a pure function of (seed, position): sample k of the global stream is image
    permutation(seed, k // n)[k % n] with crop seed (seed, k). With `world_size` processes (DDP), rank r takes the
    samples k = r, r + world_size, ...; `start` is the number of samples this rank has already consumed, so a
    resumed run continues exactly where the checkpoint left off (start = iteration * batch size)."""

    def __init__(self, dataset_size, seed=0, start=0, rank=0, world_size=1):
        self.dataset_size = dataset_size
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size

    def _permutation(self, epoch):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator).tolist()

    def __iter__(self):
        epoch, permutation = None, None
        k = self.start
        while True:
            position = k * self.world_size + self.rank  # in the global stream
            if position // self.dataset_size != epoch:
                epoch = position // self.dataset_size
                permutation = self._permutation(epoch)
            crop_seed = self.seed * 2 ** 40 + position  # distinct for every (seed, position)
            yield permutation[position % self.dataset_size], crop_seed
            k += 1

    def __len__(self):  # what DataLoader asks of samplers; the stream itself never ends
        return 2 ** 62


# ----------------------------------------------------------------------------------------------------------------
# The training stream at speed: images decoded once, HR crops as uint8, the LR made on the training device

class TrainingCrops(Dataset):
    """Random HR training crops as uint8, for the LR to be made in batches on the training device (see
    utils.downsample_batch): index (image index, crop seed), as InfiniteSampler yields them -> ((crop, crop, 3) uint8
    tensor, flip/rotation code 0-7 for utils.transpose_batch; always 0 without augment). The crop's position and code
    come from random.Random(crop_seed) in the order SRDataset draws them, so both cut the same crops.
    images: an ImageCache (decoded once), or the image paths (decoded on every call: run it in DataLoader workers)."""

    def __init__(self, images, crop_size, augment=False):
        self.images, self.crop_size, self.augment = images, crop_size, augment
        self.names = images.names if isinstance(images, ImageCache) else images

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        i, crop_seed = index
        img = self.images[i] if isinstance(self.images, ImageCache) else np.asarray(load_image(self.images[i]))
        (height, width), size = img.shape[:2], self.crop_size
        if width < size or height < size:
            raise DataListError(f'{self.names[i]}: {width}x{height} is smaller than the {size}x{size} training '
                                f'crop; rebuild the data lists with a larger --min-size')
        rng = random.Random(crop_seed)
        left, top = rng.randint(0, width - size), rng.randint(0, height - size)
        code = rng.randrange(8) if self.augment else 0
        return torch.from_numpy(np.ascontiguousarray(img[top:top + size, left:left + size])), code


class ImageCache:
    """Images decoded once (utils.load_image: RGB, 8 bits) into one file of their pixels, one after the other, that
    every process memory-maps: DataLoader workers and the DDP ranks of a machine share its pages through the
    operating system, nothing is copied per process, and no crop decodes a file again.
    cache[i]: image i as a read-only (H, W, 3) uint8 array. Build it with ImageCache.build."""

    def __init__(self, path):
        with open(path + '.json') as f:
            index = json.load(f)
        self.path, self.names, self.shapes, self.offsets = path, index['names'], index['shapes'], index['offsets']
        self.made_from = index['key']  # see ImageCache.key
        self.pixels = np.memmap(path, dtype=np.uint8, mode='r')

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        (height, width), start = self.shapes[i], self.offsets[i]
        return self.pixels[start:start + height * width * 3].reshape(height, width, 3)

    @property
    def nbytes(self):
        return self.pixels.size

    @staticmethod
    def key(paths):
        """What the cache holds, as one digest: the paths and a hash of each file's bytes (BLAKE2b, a small part of
        what decoding them costs). The content, not sizes and modification times, which a same-size edit copied with
        `cp -p` or `rsync -a` keeps. A file that cannot be read counts as None: the cache is then made again, and
        the decode names the file."""
        digests = []
        for path in paths:
            try:
                with open(path, 'rb') as f:
                    digests.append(hashlib.file_digest(f, 'blake2b').hexdigest())
            except OSError:
                digests.append(None)
        return hashlib.sha256(json.dumps([CACHE_FORMAT, list(paths), digests]).encode()).hexdigest()

    @classmethod
    def build(cls, paths, path, list_path='the image list'):
        """Decode `paths` into the cache file `path` (and its index, path + '.json'), unless one made from the same
        file contents is there already; both written atomically. -> ImageCache. Every image is decoded before the
        cache is written, so images that cannot be are one DataListError naming the first and how many (list_path
        names the list they came from)."""
        key = cls.key(paths)
        try:
            cache = cls(path)
            if cache.made_from == key and cache.nbytes == cache.offsets[-1] + 3 * math.prod(cache.shapes[-1]):
                return cache
        except (OSError, ValueError, KeyError, AttributeError, TypeError, IndexError):
            pass  # none yet, or an old or partial one: made again
        shapes, offsets, offset, bad = [], [], 0, []
        with atomic_path(path) as tmp_path, open(tmp_path, 'wb') as f:
            for image_path in paths:
                try:
                    pixels = np.asarray(load_image(image_path))  # (H, W, 3) uint8
                except ImageLoadError as e:  # go on: the message says how many
                    bad.append((image_path, str(e).removeprefix(f'{image_path}: ')))
                    continue
                f.write(pixels.tobytes())
                shapes.append(pixels.shape[:2])
                offsets.append(offset)
                offset += pixels.size
            if bad:  # nothing written: atomic_path removes the partial file
                raise unusable_images(list_path, bad, len(paths))
        with atomic_path(path + '.json') as tmp_path, open(tmp_path, 'w') as f:
            json.dump({'key': key, 'names': list(paths), 'shapes': shapes, 'offsets': offsets}, f)
        return cls(path)


def decoded_size(paths, budget):
    """Bytes the images take decoded as RGB (H * W * 3, from their headers alone), or None as soon as the sum passes
    `budget` (a set of 350k ImageNet photos is not read to the end). A file whose header cannot be read counts as 0:
    decoding it (ImageCache.build, or a crop) says what is wrong with it."""
    total = 0
    for path in paths:
        try:
            with Image.open(path) as img:
                total += img.width * img.height * 3
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        if total > budget:
            return None
    return total


# ----------------------------------------------------------------------------------------------------------------
# Where the images are

def find_images(folder):
    """All files under `folder` with an image extension, sorted; and how many other files were passed over."""
    if not os.path.isdir(folder):
        raise UserError(f'{folder} is not a folder')
    images, others = [], 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(os.path.abspath(os.path.join(root, name)))
            else:
                others += 1
    return images, others


def folder_name(folder):
    """'/data/Set5/' or 'C:\\data\\Set5\\' -> 'Set5': a test set is named after its folder."""
    parts = [p for p in re.split(r'[\\/]+', folder) if p]
    if not parts:
        raise ValueError(f'cannot name a test set after the folder {folder!r}')
    return parts[-1]


def test_set_names(data_folder):
    """The test sets listed in `data_folder` (Set5 for Set5_test_images.json), sorted."""
    names = os.listdir(data_folder) if os.path.isdir(data_folder) else []
    return sorted(name.removesuffix(TEST_LIST_SUFFIX) for name in names if name.endswith(TEST_LIST_SUFFIX))


def demo_images(names):
    """Paths of the demo photos that scikit-image ships (DEMO_TRAIN_IMAGES, DEMO_TEST_IMAGES)."""
    import skimage.data  # ~0.3 s to import: only when the demo set is asked for
    folder = os.path.dirname(skimage.data.__file__)
    return [os.path.join(folder, name) for name in names]

"""
The data: the JSON image lists that create_data_lists.py writes (read_image_list, the one reader); SRDataset, (LR,
HR) pairs from them, the tutorial's interface; the training stream the trainers draw from (training_batches):
InfiniteSampler's endless, resumable, rank-sharded order, the images decoded once (ImageCache), the crops
(TrainingCrops) and the LR made in batches on the device; and where images are found (image folders, the test lists
of a data folder, the demo photos shipped with scikit-image).
"""

import functools
import hashlib
import json
import math
import os
import random
import re
import signal
import stat

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from degradations import Degradations
from images import load_image
from outputs import WriteError, atomic_path
from utils import IMAGE_EXTENSIONS, ImageLoadError, ImageTransforms, UserError, convert_image, random_crop

# The embedded default: natural photos that scikit-image's wheel ships, so the pipeline runs with no download.
DEMO_TRAIN_IMAGES = ['coffee.png', 'rocket.jpg', 'motorcycle_left.png', 'hubble_deep_field.jpg', 'ihc.png',
                     'retina.jpg', 'camera.png', 'coins.png', 'moon.png', 'grass.png', 'gravel.png', 'brick.png']
DEMO_TEST_IMAGES = ['astronaut.png', 'chelsea.png']
TRAIN_LIST = 'train_images.json'
TEST_LIST_SUFFIX = '_test_images.json'  # Set5 -> Set5_test_images.json
VAL_SET = 'val'  # the validation list, held out of the training images by create_data_lists.py
CACHE_FORMAT = 'rgb8 v2'  # changes when what ImageCache holds, or how its key is made, does
CACHE_FILE = 'train_images.cache'  # the decoded training images (ImageCache), beside train_images.json
CACHE_RAM_FRACTION = 0.5  # --image-cache auto decodes once when the decoded images take at most this share of RAM
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

    An index may be an int (the crop position comes from the global `random` module, as in the tutorial) or a pair
    (int, crop_seed) as InfiniteSampler yields them: the crop then depends on crop_seed alone, whatever process
    makes it, which is what makes a resumed run see exactly the crops an uninterrupted one would."""

    def __init__(self, data_folder, split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                 test_data_name=None, blur_sigma=0.0, augment=False):
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

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        i, crop_seed = i if isinstance(i, tuple) else (i, None)
        rng = random if crop_seed is None else random.Random(crop_seed)  # the crop: the tutorial's, or the seed's
        return self.transform(load_image(self.images[i]), name=self.images[i], rng=rng)  # (lr_img, hr_img)


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
    """The random HR training crops, each cut once: index (image index, crop seed), as InfiniteSampler yields them ->
    ((crop, crop, 3) uint8 tensor, flip/rotation code 0-7 for transpose_batch; always 0 without augment), for the LR
    to be made in batches on the training device (to_batch). The crop is utils.random_crop's from
    random.Random(crop_seed), as SRDataset's, so both cut the same crops.
    pillow: instead, an ImageTransforms('train', ...) that makes the (lr_img, hr_img) pair here, with Pillow, as
    SRDataset does (the reference; --pillow-lr, --blur-sigma), from the same crop.
    images: an ImageCache (decoded once), or the image paths (decoded on every call: run it in DataLoader workers)."""

    def __init__(self, images, crop_size, augment=False, pillow=None):
        self.images, self.crop_size, self.augment, self.pillow = images, crop_size, augment, pillow
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
        if self.pillow is not None:  # the same draws from the same seed: the same crop
            return self.pillow(Image.fromarray(img), self.names[i], random.Random(crop_seed))
        left, top, code = random_crop(width, height, size, random.Random(crop_seed), self.augment)
        return torch.from_numpy(np.ascontiguousarray(img[top:top + size, left:left + size])), code


class ImageCache:
    """Images decoded once (images.load_image: RGB, 8 bits) into one file of their pixels, one after the other, that
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
# The training stream: crops cut on the CPU, the LR made in batches on the training device

class TrainingBatches:
    """The run's endless stream of training batches, from where a resumed run stopped: next() -> (lr_imgs, hr_imgs)
    on the device in its memory format, (N, 3, crop / s, crop / s) ImageNet-normalised and (N, 3, crop, crop) in
    [-1, 1]. run: a training.Run (its flags, device, DDP rank, start iteration). Made, it has checked every listed
    image (a missing or unreadable one is one line now) and started its DataLoader workers; close() shuts them down.

    The default: uint8 HR crops (TrainingCrops), cut from the images decoded once into a memory-mapped cache when they
    fit (choose_image_cache; else decoded from disk in DataLoader workers), moved to the device, where the flips and
    rotations (--augment) and one antialiased bicubic resize of the whole batch make the LR (to_batch).
    --blur-sigma and --pillow-lr: the LR made per crop with Pillow, as SRDataset makes it."""

    def __init__(self, run):
        args = self.args = run.args
        self.device, self.memory_format = run.device, run.memory_format
        list_path = os.path.join(args.data_folder, TRAIN_LIST)
        paths = read_image_list(list_path)
        check_listed_files(list_path, paths)
        cache, why = choose_image_cache(run, list_path, paths)
        # --degrade: batch k of the run (counted over every DDP process) degraded as drawn from (--seed, k)
        self.degradations = Degradations(args.degrade, seed=args.seed)
        self.batch_key, self.world_size = run.start_iteration * run.world_size + run.rank, run.world_size
        self.pillow_flag = '--blur-sigma' if args.blur_sigma > 0 else '--pillow-lr' if args.pillow_lr else None
        pillow = ImageTransforms('train', args.crop_size, args.scaling_factor, 'imagenet-norm', '[-1, 1]',
                                 args.blur_sigma, args.augment) if self.pillow_flag else None
        crops = TrainingCrops(cache or paths, args.crop_size, args.augment, pillow)
        workers = args.workers
        if workers is None:  # a crop from the cache is a copy: no worker helps; else the cores left over
            workers = 0 if cache is not None and not self.pillow_flag else default_workers(run.device)
        if run.is_main:  # above the progress bar
            how = (f'the LR made by Pillow per sample ({self.pillow_flag})' if self.pillow_flag else
                   f'the LR made on {run.device}')
            tqdm.write(f'training data: {len(crops)} images, {why}; {how}, {workers} DataLoader worker(s)')
        sampler = InfiniteSampler(len(crops), seed=args.seed, start=run.start_iteration * args.batch_size,
                                  rank=run.rank, world_size=run.world_size)
        self.loader = iter(DataLoader(crops, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                                      pin_memory=run.device.type == 'cuda', drop_last=True,
                                      persistent_workers=workers > 0, worker_init_fn=_ignore_stop_signals))

    def __iter__(self):
        return self

    def __next__(self):
        item = _next_item(self.loader)
        degrade = functools.partial(self.degradations, key=self.batch_key) if self.degradations else None
        self.batch_key += self.world_size
        lr_imgs, hr_imgs = item if self.pillow_flag else to_batch(item, self.device, self.args.scaling_factor,
                                                                  self.args.augment, degrade)
        return (lr_imgs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                hr_imgs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format))

    def close(self):
        """Shut the DataLoader workers down: they ignore SIGTERM (_ignore_stop_signals), so one left running when an
        error ends the program would hang it at exit, where multiprocessing terminates and joins them."""
        shutdown_workers = getattr(self.loader, '_shutdown_workers', None)  # DataLoader's own (its __del__ calls it)
        if shutdown_workers is not None:
            shutdown_workers()


def to_batch(item, device, scaling_factor, augment, degrade=None):
    """The loader's (uint8 HR crops (N, crop, crop, 3), flip/rotation codes (N,)) -> (lr_imgs, hr_imgs) made on
    `device`: one transfer of uint8, then the augmentation and the LR of the whole batch; degrade(lr_imgs) -> the
    LR degraded as real photos are (--degrade: degradations.py)."""
    hr_crops, codes = item
    hr_imgs = hr_crops.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, c, c) in [0, 1]
    if augment:
        hr_imgs = transpose_batch(hr_imgs, codes)
    lr_imgs = downsample_batch(hr_imgs, scaling_factor)  # (N, 3, c / s, c / s) in [0, 1], 8-bit values
    if degrade is not None:
        lr_imgs = degrade(lr_imgs)  # the same, blurred, resized, noisy, JPEG-compressed
    return convert_image(lr_imgs, '[0, 1]', 'imagenet-norm'), convert_image(hr_imgs, '[0, 1]', '[-1, 1]')


def _next_item(loader):
    """The loader's next item; a training image that cannot be used (also when a DataLoader worker found it) is one
    UserError line naming it."""
    try:
        return next(loader)
    except UserError as e:  # ImageLoadError, DataListError
        text = str(e).strip()
        if 'Original Traceback' in text:  # a worker's: '...Original Traceback ...\nutils.ImageLoadError: <message>'
            text = text.splitlines()[-1].split(': ', 1)[-1]
        raise UserError(text) from None


def transpose_batch(imgs, codes):
    """The flips / 90-degree rotations of ImageTransforms' augment, on a batch on any device: imgs (N, C, H, W),
    codes (N,) in 0-7 (0: as it is; k: PIL's Image.Transpose(k - 1)) -> (N, C, H, W), or (N, C, W, H) transposed
    (H = W for training crops)."""
    ops = (lambda x: x, lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.rot90(1, (-2, -1)),
           lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(3, (-2, -1)), lambda x: x.transpose(-2, -1),
           lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1))
    out = torch.empty_like(imgs)
    for code in codes.unique().tolist():
        chosen = (codes == code).nonzero()[:, 0].to(imgs.device)
        out[chosen] = ops[code](imgs[chosen])
    return out


def downsample_batch(hr_imgs, scaling_factor):
    """utils.downsample for a batch on any device, in one call: (N, 3, H, W) in [0, 1] -> (N, 3, H / s, W / s) in
    [0, 1], rounded to 8 bits as Pillow's LR image is. torch's antialiased bicubic follows Pillow's filter (a = -0.5,
    widened by the scale); Pillow also rounds between its two passes, so they differ within rounding (README)."""
    height, width = hr_imgs.shape[-2:]
    lr_imgs = torch.nn.functional.interpolate(hr_imgs, size=(height // scaling_factor, width // scaling_factor),
                                              mode='bicubic', antialias=True, align_corners=False)
    return lr_imgs.mul_(255.0).round_().clamp_(0, 255).div_(255.0)


def choose_image_cache(run, list_path, paths):
    """--image-cache auto|on|off -> (ImageCache or None, why, in a few words). auto: decode once when the decoded
    images take at most CACHE_RAM_FRACTION of this machine's memory. The cache is written beside the lists
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


def _ignore_stop_signals(worker_id):
    # Ctrl-C reaches the whole process group, and schedulers (SLURM, docker stop) send SIGTERM to every process:
    # stopping is the training process's to handle (it finishes the step, saves, then shuts the workers down)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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

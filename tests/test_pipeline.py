"""The training data at speed (issue 16): images decoded once into a memory-mapped cache when they fit, uint8 HR crops
made into (LR, HR) batches on the device, the same crops as SRDataset's, an LR as Pillow's within rounding."""

import argparse
import json
import os
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import training
from datasets import (DEMO_TRAIN_IMAGES, DataListError, ImageCache, SRDataset, TrainingBatches, TrainingCrops,
                      decoded_size, default_workers, demo_images, downsample_batch, transpose_batch)
from outputs import WriteError
from images import load_image
from utils import UserError, convert_image, downsample


def test_transpose_batch_is_pils_transpose():
    imgs = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    codes = torch.tensor([k % 8 for k in range(16)])
    out = transpose_batch(imgs, codes)
    for img, result, k in zip(imgs, out, codes.tolist()):
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        expected = pil.transpose(Image.Transpose(k - 1)) if k else pil
        assert np.array_equal(result.permute(1, 2, 0).numpy(), np.asarray(expected)), k


@pytest.mark.parametrize('s', [2, 4, 8])
def test_the_lr_made_in_batch_is_pillows_within_rounding(s):
    """Pillow rounds to 8 bits between its two passes, torch does not: measured 56-59 dB on T91/BSD200 crops."""
    rng = random.Random(0)
    crops = []
    for path in demo_images(DEMO_TRAIN_IMAGES[:6]):
        img = np.asarray(load_image(path))
        top, left = rng.randint(0, img.shape[0] - 96), rng.randint(0, img.shape[1] - 96)
        crops.append(img[top:top + 96, left:left + 96])
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255  # (6, 3, 96, 96) in [0, 1]
    lr = downsample_batch(hr, s)
    assert lr.shape == (6, 3, 96 // s, 96 // s) and lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit values, as an LR image is
    pillow = torch.stack([convert_image(downsample(Image.fromarray(c), s), 'pil', '[0, 1]') for c in crops])
    psnr = 10 * torch.log10(1 / ((lr - pillow) ** 2).mean())
    assert psnr > 50
    assert (lr == pillow).float().mean() > 0.8


@pytest.mark.parametrize('augment', [False, True])
def test_training_crops_are_srdatasets_crops(demo_data, augment):
    """For the same (image, crop seed), the batched path cuts the crop SRDataset cuts, flipped/rotated alike."""
    dataset = SRDataset(demo_data, 'train', 48, 4, '[0, 1]', '[0, 1]', augment=augment)
    crops = TrainingCrops(dataset.images, 48, augment)
    codes = set()
    for index in [(i % len(dataset), 1000 + i) for i in range(24)]:
        _, hr = dataset[index]  # (3, 48, 48) in [0, 1]
        crop, code = crops[index]  # (48, 48, 3) uint8, 0-7
        codes.add(code)
        mine = transpose_batch(crop.permute(2, 0, 1)[None].float() / 255, torch.tensor([code]))[0]
        assert torch.equal(mine, hr)
    assert (len(codes) > 4) == augment


def test_the_image_cache_is_made_once_and_again_when_an_image_changes(tmp_path):
    paths = []
    for k, size in enumerate([(40, 30), (17, 23), (64, 64)]):
        paths.append(str(tmp_path / f'{k}.png'))
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(paths[-1])
    cache = ImageCache.build(paths, str(tmp_path / 'c.cache'))
    assert len(cache) == 3 and cache.nbytes == 3 * (40 * 30 + 17 * 23 + 64 * 64)
    for i, path in enumerate(paths):
        assert np.array_equal(cache[i], np.asarray(load_image(path)))
    made = os.stat(tmp_path / 'c.cache').st_mtime_ns
    assert ImageCache.build(paths, str(tmp_path / 'c.cache')).made_from == cache.made_from
    assert os.stat(tmp_path / 'c.cache').st_mtime_ns == made  # the same images: not decoded again
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(made + 10 ** 9, made + 10 ** 9))
    again = ImageCache.build(paths, str(tmp_path / 'c.cache'))
    assert again.made_from != cache.made_from and not again[0].any()
    assert sorted(os.listdir(tmp_path)) == ['0.png', '1.png', '2.png', 'c.cache', 'c.cache.json']  # no partial file
    assert decoded_size(paths, budget=10 ** 9) == cache.nbytes and decoded_size(paths, budget=4000) is None


def test_the_image_cache_is_made_again_after_an_edit_of_the_same_size_and_time(tmp_path):
    """`cp -p` or `rsync -a` of an edited image keeps its size and modification time: the cache is keyed on the
    bytes (BMP: the size depends on the dimensions alone)."""
    paths = [str(tmp_path / f'{k}.bmp') for k in range(2)]
    for k, path in enumerate(paths):
        Image.new('RGB', (30, 20), (k, 100, 200)).save(path)
    before = os.stat(paths[0])
    cache = ImageCache.build(paths, str(tmp_path / 'c.cache'))
    assert cache[0][0, 0].tolist() == [0, 100, 200]
    Image.new('RGB', (30, 20), (7, 7, 7)).save(paths[0])
    os.utime(paths[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(paths[0]).st_size == before.st_size and os.stat(paths[0]).st_mtime_ns == before.st_mtime_ns
    again = ImageCache.build(paths, str(tmp_path / 'c.cache'))
    assert again[0][0, 0].tolist() == [7, 7, 7] and again.made_from != cache.made_from


def test_images_the_cache_cannot_decode_are_one_line_naming_the_first_and_how_many(tmp_path):
    paths = [str(tmp_path / f'{k}.png') for k in range(3)]
    for path in paths:
        Image.new('RGB', (30, 20)).save(path)
    data = open(paths[1], 'rb').read()
    open(paths[1], 'wb').write(data[:len(data) // 2])
    os.remove(paths[2])
    with pytest.raises(DataListError, match=f'^list.json: 2 of 3 listed images cannot be used, the first: {paths[1]}: '
                                            f'.*; rebuild the lists with create_data_lists.py'):
        ImageCache.build(paths, str(tmp_path / 'c.cache'), 'list.json')
    assert sorted(os.listdir(tmp_path)) == ['0.png', '1.png']  # no cache, no partial file


def _run(data_folder, output_dir, **flags):
    """A Run with the flags TrainingBatches reads."""
    args = dict(data_folder=str(data_folder), output_dir=str(output_dir), crop_size=48, scaling_factor=4,
                blur_sigma=0.0, augment=True, image_cache='auto', workers=None, seed=3, batch_size=4, pillow_lr=False,
                degrade='none')
    return training.Run(argparse.Namespace(**{**args, **flags}), 'srresnet', torch.device('cpu'), None)


def _batches(run, n=3):
    batches = TrainingBatches(run)
    try:
        return [next(batches) for _ in range(n)]
    finally:
        batches.close()


def test_every_way_of_making_batches_gives_the_same_hr_crops(demo_data, tmp_path, capsys):
    """Cached or decoded from disk, in batch on the device or by SRDataset with Pillow: the same HR crops in the
    same order for a seed; the LR within rounding of Pillow's."""
    cached = _batches(_run(demo_data, tmp_path, image_cache='on'))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f'training data: 12 images, decoded once into {demo_data / "train_images.cache"} (')
    assert line.endswith('GB, memory-mapped); the LR made on cpu, 0 DataLoader worker(s)')
    streamed = _batches(_run(demo_data, tmp_path, image_cache='off', workers=1))
    assert 'decoded from disk for every crop (--image-cache off); the LR made on cpu, 1 DataLoader worker(s)' in (
        capsys.readouterr().out)
    reference = _batches(_run(demo_data, tmp_path, pillow_lr=True))  # SRDataset's Pillow path
    assert 'the LR made by Pillow per sample (--pillow-lr)' in capsys.readouterr().out
    for (lr_c, hr_c), (lr_s, hr_s), (lr_r, hr_r) in zip(cached, streamed, reference):
        assert hr_c.shape == (4, 3, 48, 48) and lr_c.shape == (4, 3, 12, 12)
        assert torch.equal(hr_c, hr_s) and torch.equal(lr_c, lr_s)
        assert torch.allclose(hr_c, hr_r, atol=1e-6)
        lr_pixels = convert_image(lr_c, 'imagenet-norm', '[0, 1]'), convert_image(lr_r, 'imagenet-norm', '[0, 1]')
        assert 10 * torch.log10(1 / ((lr_pixels[0] - lr_pixels[1]) ** 2).mean()) > 45


def test_images_over_the_budget_stream_from_disk(demo_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, 'physical_memory', lambda: 2 * 2 ** 20)  # 1 MB of budget
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 2)  # two cores, both computing: no worker
    _batches(_run(demo_data, tmp_path), n=1)
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "training data: 12 images, decoded from disk for every crop (decoded, they would take more than 0.0 GB, 50% "
        "of this machine's memory; --image-cache on decodes them once); the LR made on cpu, 0 DataLoader worker(s)")


def test_a_data_folder_that_cannot_hold_the_cache_puts_it_in_the_output_dir(demo_data, tmp_path, monkeypatch,
                                                                            capsys):
    original = ImageCache.build

    def read_only_data_folder(paths, path, list_path):
        if str(demo_data) in path:
            raise WriteError(f'could not write {path}: Read-only file system')
        return original(paths, path, list_path)
    monkeypatch.setattr(ImageCache, 'build', staticmethod(read_only_data_folder))
    _batches(_run(demo_data, tmp_path), n=1)
    assert f'decoded once into {tmp_path / "train_images.cache"} (' in capsys.readouterr().out
    assert json.loads((tmp_path / 'train_images.cache.json').read_text())['names'] == json.loads(
        (demo_data / 'train_images.json').read_text())


def test_workers_by_default_only_where_cores_are_left(monkeypatch):
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 2)
    for cores, cpu, gpu in ((2, 0, 1), (16, 8, 8), (4, 2, 3), (1, 0, 0)):
        monkeypatch.setattr(os, 'cpu_count', lambda: cores)
        assert default_workers(torch.device('cpu')) == cpu
        assert default_workers(torch.device('cuda')) == gpu


@pytest.mark.parametrize('flag, iterations, device, compiler, expected', [
    ('auto', 4, 'cpu', True, False), ('auto', 200_000, 'cpu', True, True), ('auto', 200_000, 'cpu', False, False),
    ('auto', 200_000, 'mps', True, False), ('on', 4, 'cpu', True, True), ('off', 200_000, 'cpu', True, False)])
def test_compile_by_default_only_for_long_runs_with_a_compiler(flag, iterations, device, compiler, expected,
                                                               tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training.shutil, 'which', lambda name: '/usr/bin/g++' if compiler else None)
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', 'x')  # restored to what it was (unset) after the test
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR')
    args = argparse.Namespace(compile=flag, iterations=iterations, output_dir=str(tmp_path))
    assert training.choose_compile(training.Run(args, 'srresnet', torch.device(device), None)) is expected
    note = capsys.readouterr().out
    assert note.startswith(f'--compile auto: {"on" if expected else "off"} (') if flag == 'auto' else note == ''
    if expected:  # the compile cache lives with the run, so a resumed run finds it
        assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == str(tmp_path / 'compile_cache')


@pytest.mark.parametrize('device, needed', [('cpu', 'a C++ compiler'), ('cuda', 'the triton package')])
def test_compile_on_without_a_compiler_is_one_line_before_any_work(device, needed, tmp_path, monkeypatch):
    """It used to fail with an InductorError after ~20 s of work; auto already said 'no compiler'."""
    monkeypatch.setattr(training.shutil, 'which', lambda name: None)
    monkeypatch.setattr(training.importlib.util, 'find_spec', lambda name: None)
    args = argparse.Namespace(compile='on', iterations=4, output_dir=str(tmp_path))
    expected = f'^--compile on: no compiler for {device} here \\(it needs {re.escape(needed)}.*\\); install it, or '
    with pytest.raises(UserError, match=expected + 'pass --compile off$'):
        training.choose_compile(training.Run(args, 'srresnet', torch.device(device), None))


def test_degraded_batches_keep_the_hr_crops_and_resume_on_the_same_degradations(demo_data, tmp_path):
    """--degrade changes the LR alone: the same HR crops (its draws take nothing from the data stream's), an LR
    that differs; a stream resumed at batch 2 degrades it as the uninterrupted one did."""
    clean = _batches(_run(demo_data, tmp_path))
    degraded = _batches(_run(demo_data, tmp_path, degrade='jpeg:20'))
    for (lr_c, hr_c), (lr_d, hr_d) in zip(clean, degraded):
        assert torch.equal(hr_c, hr_d) and lr_d.shape == lr_c.shape and not torch.equal(lr_c, lr_d)
    resumed_run = _run(demo_data, tmp_path, degrade='real')
    resumed_run.checkpoint = {'iteration': 2}
    whole = _batches(_run(demo_data, tmp_path, degrade='real'))
    assert all(torch.equal(a, b) for a, b in zip(_batches(resumed_run, n=1)[0], whole[2]))

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from create_data_lists import create_data_lists, folder_name
from datasets import SRDataset
from utils import convert_image


def write_png(path, size, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture
def messy_folder(tmp_path):
    """Good images (nested, odd letter case) beside every kind of bad file."""
    root = tmp_path / 'train'
    good = [write_png(root / 'a.png', (120, 110)), write_png(root / 'sub' / 'deeper' / 'B.PNG', (100, 130), 1)]
    Image.open(good[0]).save(root / 'sub' / 'c.JPEG')
    good.append(str(root / 'sub' / 'c.JPEG'))
    Image.open(good[0]).save(root / 'd.webp', lossless=True)
    good.append(str(root / 'd.webp'))
    data = open(good[0], 'rb').read()
    (root / 'truncated.png').write_bytes(data[:len(data) // 3])
    (root / 'empty.jpg').write_bytes(b'')
    (root / 'notes.jpg').write_text('not an image')
    write_png(root / 'small.png', (99, 300))
    (root / 'README.txt').write_text('passed over: no image extension')
    (root / 'gone.png').symlink_to(root / 'deleted.png')  # a broken symbolic link
    return root, sorted(good)


def test_create_data_lists_skips_bad_files_with_reasons(messy_folder, tmp_path, capsys):
    root, good = messy_folder
    test_root = tmp_path / 'Set5'
    write_png(test_root / 'baby.png', (64, 40))  # test images are kept at any size
    out = tmp_path / 'lists'
    summary = create_data_lists([str(root)], [str(test_root) + '/'], 100, str(out))
    printed = capsys.readouterr().out

    train = json.load(open(out / 'train_images.json'))
    assert sorted(train) == good and all(os.path.isabs(p) for p in train)
    assert json.load(open(out / 'Set5_test_images.json')) == [str(test_root / 'baby.png')]
    assert summary == {str(out / 'train_images.json'): 4, str(out / 'Set5_test_images.json'): 1}
    for name, reason in [('truncated.png', 'unreadable'), ('empty.jpg', 'empty'), ('notes.jpg', 'not an image'),
                         ('small.png', 'smaller than --min-size 100'), ('gone.png', 'unreadable')]:
        line = next(line for line in printed.splitlines() if name in line)
        assert line.startswith('skipped') and reason in line, line
    assert '5 images listed, 5 skipped' in printed
    assert 'passed over 1 files' in printed


def test_the_cli_and_its_errors(messy_folder, tmp_path):
    root, good = messy_folder
    out = tmp_path / 'lists'
    run = subprocess.run([sys.executable, 'create_data_lists.py', '--train-folders', str(root), '--min-size', '96',
                          '--output-folder', str(out), '--workers', '2'], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(json.load(open(out / 'train_images.json'))) == 5  # small.png (99 px) now qualifies
    run = subprocess.run([sys.executable, 'create_data_lists.py', '--test-folders', str(tmp_path / 'nowhere')],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip() == f'error: {tmp_path / "nowhere"} is not a folder'


@pytest.mark.parametrize('folder, name', [('/data/Set5', 'Set5'), ('/data/Set5/', 'Set5'), ('Set14//', 'Set14'),
                                          ('C:\\data\\BSD100\\', 'BSD100'), ('D:/sr/DIV2K_valid_HR', 'DIV2K_valid_HR')])
def test_test_sets_are_named_after_their_folder(folder, name):
    assert folder_name(folder) == name


def test_demo_lists_and_dataset(tmp_path):
    run = subprocess.run([sys.executable, 'create_data_lists.py', '--output-folder', str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(json.load(open(tmp_path / 'train_images.json'))) == 12
    assert len(json.load(open(tmp_path / 'demo_test_images.json'))) == 2

    train = SRDataset(str(tmp_path), 'train', 96, 4, 'imagenet-norm', '[-1, 1]')
    assert len(train) == 12
    lr, hr = train[6]  # camera.png is grayscale: it still comes out as 3 channels
    assert lr.shape == (3, 24, 24) and hr.shape == (3, 96, 96)
    assert hr.min() >= -1 and hr.max() <= 1 and torch.equal(hr[0], hr[2])  # gray: three equal channels
    lr_01 = convert_image(lr, 'imagenet-norm', '[0, 1]')
    assert lr_01.min() >= -1e-6 and lr_01.max() <= 1 + 1e-6 and torch.allclose(lr_01[0], lr_01[2], atol=1e-6)
    loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, num_workers=2)
    lr_batch, hr_batch = next(iter(loader))
    assert lr_batch.shape == (4, 3, 24, 24) and hr_batch.shape == (4, 3, 96, 96)

    test = SRDataset(str(tmp_path), 'test', None, 4, '[0, 1]', '[0, 255]', test_data_name='demo')
    lr, hr = test[1]  # chelsea.png, 451x300 -> 448x300
    assert hr.shape == (3, 300, 448) and lr.shape == (3, 75, 112)
    assert hr.max() > 200 and lr.max() <= 1

    with pytest.raises(FileNotFoundError, match='create_data_lists.py'):
        SRDataset(str(tmp_path), 'test', None, 4, '[0, 1]', '[0, 1]', test_data_name='Set5')


def test_shared_data_lists(shared_data, tmp_path):
    summary = create_data_lists([str(shared_data / 'T91'), str(shared_data / 'BSD200')],
                                [str(shared_data / 'Set5'), str(shared_data / 'Set14')], 96, str(tmp_path), 2)
    counts = {os.path.basename(k): v for k, v in summary.items()}
    assert counts == {'train_images.json': 290, 'Set5_test_images.json': 5, 'Set14_test_images.json': 14}
    bridge = SRDataset(str(tmp_path), 'test', None, 4, '[0, 1]', '[0, 1]', 'Set14')[2][1]  # grayscale bridge.png
    assert bridge.shape[0] == 3 and torch.equal(bridge[0], bridge[2])

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, photo
import create_data_lists as cdl
from create_data_lists import ListRules, create_data_lists, folder_name
from datasets import DataListError, SRDataset
from utils import UserError, convert_image


@pytest.fixture
def messy_folder(tmp_path):
    """Good images (nested, odd letter case) beside every kind of bad file."""
    root = tmp_path / 'train'
    good = [str(photo(root / 'a.png', (120, 110))), str(photo(root / 'sub' / 'deeper' / 'B.PNG', (100, 130), 1))]
    Image.open(good[0]).save(root / 'sub' / 'c.JPEG')
    good.append(str(root / 'sub' / 'c.JPEG'))
    photo(root / 'd.webp', (110, 120), 2)  # its own picture: a lossless copy of a.png would be a duplicate
    good.append(str(root / 'd.webp'))
    data = open(good[0], 'rb').read()
    (root / 'truncated.png').write_bytes(data[:len(data) // 3])
    (root / 'empty.jpg').write_bytes(b'')
    (root / 'notes.jpg').write_text('not an image')
    photo(root / 'small.png', (99, 300))
    (root / 'README.txt').write_text('passed over: no image extension')
    (root / 'gone.png').symlink_to(root / 'deleted.png')  # a broken symbolic link
    return root, sorted(good)


def test_create_data_lists_skips_bad_files_with_reasons(messy_folder, tmp_path, capsys):
    root, good = messy_folder
    test_root = tmp_path / 'Set5'
    photo(test_root / 'baby.png', (64, 40))  # test images are kept at any size
    out = tmp_path / 'lists'
    summary = create_data_lists([str(root)], [str(test_root) + '/'], str(out), ListRules(min_size=100))
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
    cli('create_data_lists.py', '--train-folders', root, '--min-size', 96, '--output-folder', out, '--workers', 2)
    assert len(json.load(open(out / 'train_images.json'))) == 5  # small.png (99 px) now qualifies
    run = cli('create_data_lists.py', '--test-folders', tmp_path / 'nowhere', check=False)
    assert run.returncode == 1 and run.stderr.strip() == f'error: {tmp_path / "nowhere"} is not a folder'


# ---------------------------------------------------------------------------------------------------------------
# Test images in the training list (found by their pixels), a test set given twice, duplicate training images

@pytest.fixture
def sr_folders(tmp_path):
    """data/T91 (two training images), data/Set5 (two test images), data/Set14 (one): small random pictures."""
    data = tmp_path / 'data'
    for name, seed in [('T91/t1.png', 1), ('T91/t2.png', 2), ('Set5/baby.png', 3), ('Set5/bird.png', 4),
                       ('Set14/zebra.png', 5)]:
        photo(data / name, (24, 20), seed)
    return data


def refusal(train_folders, test_folders, min_size, output_folder):
    """The one-line error create_data_lists raises (run_main prints it as `error: ...`)."""
    with pytest.raises(UserError) as error:
        create_data_lists(train_folders, test_folders, output_folder, ListRules(min_size=min_size))
    message = str(error.value)
    assert not message.startswith('error: ') and '\n' not in message
    return message


def test_the_same_folder_for_train_and_test_is_refused_in_one_line(sr_folders, tmp_path):
    out = tmp_path / 'lists'
    out.mkdir()
    (out / 'train_images.json').write_text('["mine.png"]')  # the user's earlier list stays as it was
    run = cli('create_data_lists.py', '--train-folders', sr_folders / 'Set5', '--test-folders', sr_folders / 'Set5',
              '--min-size', 16, '--output-folder', out, check=False)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith('error: 2 of 2 training images are also test images (Set5: 2;')
    assert f"{sr_folders / 'Set5' / 'baby.png'} is Set5's baby.png" in run.stderr
    assert 'do not contain the test folders' in run.stderr and '--allow-test-overlap' in run.stderr
    assert 'move the copies' not in run.stderr  # these are the test set itself: never advise removing them
    assert sorted(os.listdir(out)) == ['train_images.json'] and (out / 'train_images.json').read_text() == \
        '["mine.png"]'


def test_a_training_folder_that_holds_the_test_folders_is_refused(sr_folders, tmp_path):
    message = refusal([str(sr_folders)], [str(sr_folders / 'Set5'), str(sr_folders / 'Set14')], 16,
                      str(tmp_path / 'lists'))
    assert '3 of 5 training images are also test images (Set5: 2, Set14: 1;' in message
    assert f"{sr_folders / 'Set5' / 'baby.png'} is Set5's baby.png, " \
           f"{sr_folders / 'Set14' / 'zebra.png'} is Set14's zebra.png" in message  # one example from each set
    assert not (tmp_path / 'lists').exists()


def test_a_renamed_copy_of_a_test_image_in_the_training_folders_is_caught(sr_folders, tmp_path):
    """By pixels, not names or bytes: a lossless re-save (PNG -> BMP) and a symbolic link are the test image."""
    Image.open(sr_folders / 'Set5' / 'bird.png').save(sr_folders / 'T91' / 'holiday.bmp')
    (sr_folders / 'T91' / 'link.png').symlink_to(sr_folders / 'Set14' / 'zebra.png')
    message = refusal([str(sr_folders / 'T91')], [str(sr_folders / 'Set5'), str(sr_folders / 'Set14')], 16,
                      str(tmp_path / 'lists'))
    assert '2 of 4 training images are also test images (Set5: 1, Set14: 1;' in message
    assert f"{sr_folders / 'T91' / 'holiday.bmp'} is Set5's bird.png" in message
    assert 'move the copies of test images out of the training folders' in message
    assert not (tmp_path / 'lists').exists()


def test_allow_test_overlap_writes_the_lists_with_a_warning(sr_folders, tmp_path, capsys):
    out = tmp_path / 'lists'
    summary = create_data_lists([str(sr_folders)], [str(sr_folders / 'Set5')], str(out),
                                ListRules(min_size=16, allow_test_overlap=True))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 1 and warnings[0].startswith('warning: 2 of 5 training images are also test images')
    assert 'listed anyway (--allow-test-overlap)' in warnings[0]
    assert summary == {str(out / 'train_images.json'): 5, str(out / 'Set5_test_images.json'): 2}
    assert str(sr_folders / 'Set5' / 'baby.png') in json.load(open(out / 'train_images.json'))


def test_duplicate_training_images_are_listed_once_with_a_note(sr_folders, tmp_path, capsys):
    """A lossless copy under another name, and one file reached through nested training folders."""
    train = sr_folders / 'T91'
    Image.open(train / 't1.png').save(train / 't1_copy.webp', lossless=True)
    photo(train / 'sub' / 't3.png', (24, 20), 6)
    out = tmp_path / 'lists'
    summary = create_data_lists([str(train), str(train / 'sub')], [], str(out), ListRules(min_size=16))
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith('note:')]
    assert len(notes) == 1 and notes[0].startswith('note: 2 training images found twice (the same pixels), '
                                                   'listed once, e.g.')
    assert f"{train / 't1_copy.webp'} (the same as {train / 't1.png'})" in notes[0]
    assert json.load(open(out / 'train_images.json')) == [str(train / name) for name in ('t1.png', 't2.png',
                                                                                         'sub/t3.png')]
    assert summary == {str(out / 'train_images.json'): 3}


@pytest.mark.parametrize('folders, expected', [
    (['Set5', 'Set5'], 'the test folder {0} is given twice in --test-folders; give each test set once'),
    (['Set5', 'T91/../Set5/'], 'the test folder {0} is given twice in --test-folders (also as {1})'),
    (['Set5', 'T91/Set5'], 'the test folders {0} and {1} are both named Set5'),
])
def test_a_test_set_given_twice_is_refused_before_any_work(sr_folders, tmp_path, monkeypatch, folders, expected):
    photo(sr_folders / 'T91' / 'Set5' / 'other.png', (24, 20), 7)
    monkeypatch.setattr(cdl, 'check_image', None)  # nothing is decoded before the refusal
    message = refusal([str(sr_folders / 'T91')], [str(sr_folders / f) for f in folders], 16, str(tmp_path / 'o'))
    assert message.startswith(expected.format(*[sr_folders / f for f in folders]))
    assert not (tmp_path / 'o').exists()


def test_pixel_digest_is_the_pixels_not_the_file():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    assert cdl.pixel_digest(rgb) == cdl.pixel_digest(rgb.copy(order='F'))  # the layout in memory does not count
    assert cdl.pixel_digest(rgb) != cdl.pixel_digest(rgb.reshape(4, 3, 3))  # the same bytes in another shape
    assert cdl.pixel_digest(rgb) != cdl.pixel_digest(rgb.astype(np.uint16))


@pytest.mark.parametrize('folder, name', [('/data/Set5', 'Set5'), ('/data/Set5/', 'Set5'), ('Set14//', 'Set14'),
                                          ('C:\\data\\BSD100\\', 'BSD100'), ('D:/sr/DIV2K_valid_HR', 'DIV2K_valid_HR')])
def test_test_sets_are_named_after_their_folder(folder, name):
    assert folder_name(folder) == name


def test_demo_lists_and_dataset(tmp_path):
    cli('create_data_lists.py', '--output-folder', tmp_path)
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

    with pytest.raises(DataListError, match='create_data_lists.py'):
        SRDataset(str(tmp_path), 'test', None, 4, '[0, 1]', '[0, 1]', test_data_name='Set5')


def test_shared_data_lists(shared_data, tmp_path, capsys):
    """The 291 images of T91 + BSD200 share none with the three test sets; t20 is under 96 pixels, and t65 is t36
    again (the same bytes), listed once; 10 of the 289 are held out to validate on."""
    summary = create_data_lists([str(shared_data / 'T91'), str(shared_data / 'BSD200')],
                                [str(shared_data / name) for name in ('Set5', 'Set14', 'BSD100')], str(tmp_path),
                                ListRules(min_size=96, workers=2))
    counts = {os.path.basename(k): v for k, v in summary.items()}
    assert counts == {'train_images.json': 279, 'val_test_images.json': 10, 'Set5_test_images.json': 5,
                      'Set14_test_images.json': 14, 'BSD100_test_images.json': 100}
    val = json.load(open(tmp_path / 'val_test_images.json'))  # 10 held out, from both folders in proportion
    assert [os.path.basename(os.path.dirname(p)) for p in val].count('BSD200') == 7
    assert not set(val) & set(json.load(open(tmp_path / 'train_images.json')))
    t65, t36 = shared_data / 'T91' / 't65.png', shared_data / 'T91' / 't36.png'
    assert f'note: 1 training image found twice (the same pixels), listed once, e.g. {t65} (the same as ' \
           f'{t36})' in capsys.readouterr().out
    bridge = SRDataset(str(tmp_path), 'test', None, 4, '[0, 1]', '[0, 1]', 'Set14')[2][1]  # grayscale bridge.png
    assert bridge.shape[0] == 3 and torch.equal(bridge[0], bridge[2])


# ---------------------------------------------------------------------------------------------------------------
# Near copies of test images (by thumbnail), and where the lists may be written

def photo_pair(data):
    """Set5/baby.png and T91/other.png: two natural pictures (scikit-image's astronaut and cat) of one size."""
    from datasets import demo_images
    for path, name in ((data / 'Set5' / 'baby.png', 'astronaut.png'), (data / 'T91' / 'other.png', 'chelsea.png')):
        Image.open(demo_images([name])[0]).convert('RGB').resize((72, 56), Image.BICUBIC).save(path)
    return Image.open(data / 'Set5' / 'baby.png')


@pytest.mark.parametrize('copy', ['flipped', 'rotated', 'grey', 'jpeg q30', 'jpeg q100'])
def test_a_flipped_rotated_grey_or_jpeg_copy_of_a_test_image_is_caught(sr_folders, tmp_path, copy):
    """They used to pass: only identical pixels were caught."""
    baby = photo_pair(sr_folders)
    made = {'flipped': lambda: baby.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(sr_folders / 'T91' / 'c.png'),
            'rotated': lambda: baby.transpose(Image.Transpose.ROTATE_90).save(sr_folders / 'T91' / 'c.png'),
            'grey': lambda: baby.convert('L').save(sr_folders / 'T91' / 'c.png'),
            'jpeg q30': lambda: baby.save(sr_folders / 'T91' / 'c.jpg', quality=30),
            'jpeg q100': lambda: baby.save(sr_folders / 'T91' / 'c.jpg', quality=100)}
    made[copy]()
    copy_path = next(p for p in (sr_folders / 'T91').iterdir() if p.stem == 'c')
    message = refusal([str(sr_folders / 'T91')], [str(sr_folders / 'Set5')], 16, str(tmp_path / 'lists'))
    assert message.startswith('1 of 4 training images is also a test image (Set5: 1; copies flipped, rotated, grey '
                              f"or re-saved lossily), e.g. {copy_path} looks like Set5's baby.png; ")
    assert 'move the copies of test images out of the training folders' in message
    assert not (tmp_path / 'lists').exists()


def test_another_picture_of_the_same_size_is_no_copy(sr_folders, tmp_path):
    photo_pair(sr_folders)  # T91/other.png: 72x56 as Set5/baby.png, another picture
    summary = create_data_lists([str(sr_folders / 'T91')], [str(sr_folders / 'Set5')], str(tmp_path),
                                ListRules(min_size=16))
    assert summary[str(tmp_path / 'train_images.json')] == 3


def test_the_lists_replace_earlier_lists_but_no_other_file(sr_folders, tmp_path):
    out = tmp_path / 'lists'
    out.mkdir()
    (out / 'train_images.json').write_text('["an earlier list.png"]')  # this script's own output: replaced
    create_data_lists([str(sr_folders / 'T91')], [], str(out), ListRules(min_size=16))
    assert len(json.load(open(out / 'train_images.json'))) == 2
    (out / 'Set5_test_images.json').write_text('my notes')  # not a list: refused before any image is decoded
    with pytest.raises(cdl.OutputError, match=f'{out / "Set5_test_images.json"} exists and is not a data list'):
        create_data_lists([str(sr_folders / 'T91')], [str(sr_folders / 'Set5')], str(out),
                          ListRules(min_size=16))
    assert (out / 'Set5_test_images.json').read_text() == 'my notes'
    (tmp_path / 'file').write_text('mine')
    with pytest.raises(cdl.OutputError, match='--output-folder .*file is a file; name a folder'):
        create_data_lists([str(sr_folders / 'T91')], [], str(tmp_path / 'file'),
                          ListRules(min_size=16))


@pytest.mark.parametrize('n_images, val_images, held', [(25, None, 2), (25, 5, 5), (25, 0, 0), (9, None, 0)])
def test_a_validation_list_is_held_out_of_the_training_images(tmp_path, n_images, val_images, held):
    """--val-images N (default: 10, or a tenth of a small set): N training images, evenly spaced in the list, move to
    val_test_images.json, which the trainers validate on; none listed twice, none lost; with none held out, an
    earlier validation list goes (it would name training images)."""
    train = [str(photo(tmp_path / 'train' / f'{i:02d}.png', (40, 36), i)) for i in range(n_images)]
    out = tmp_path / 'lists'
    out.mkdir()
    (out / 'val_test_images.json').write_text(json.dumps([train[0]]))  # an earlier run's
    create_data_lists([str(tmp_path / 'train')], [], str(out), ListRules(min_size=16, val_images=val_images))
    kept = json.load(open(out / 'train_images.json'))
    val = json.load(open(out / 'val_test_images.json')) if held else []
    assert (out / 'val_test_images.json').exists() == bool(held)
    assert len(val) == held and sorted(kept + val) == train and not set(kept) & set(val)
    if held > 1:  # evenly spaced: gaps of the same size, within one
        gaps = [train.index(b) - train.index(a) for a, b in zip(val, val[1:])]
        assert max(gaps) - min(gaps) <= 1 and min(gaps) >= n_images // held - 1


def test_holding_out_every_training_image_or_naming_a_test_set_val_is_refused(tmp_path):
    for i in range(3):
        photo(tmp_path / 'train' / f'{i}.png', (40, 36), i)
    photo(tmp_path / 'val' / 'x.png', (40, 36), 7)
    with pytest.raises(UserError, match=r'^--val-images 3 would leave no training images \(there are 3\)'):
        create_data_lists([str(tmp_path / 'train')], [], str(tmp_path / 'a'), ListRules(min_size=16, val_images=3))
    with pytest.raises(UserError, match='^a test folder named val would share its list with the validation list'):
        create_data_lists([str(tmp_path / 'train')], [str(tmp_path / 'val')], str(tmp_path / 'b'), ListRules(16))
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()

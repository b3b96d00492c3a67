"""outputs.py, the one output policy: what a plan refuses, names made from inputs that never collide, atomic writes
with temporary names that fit the file system."""

import os
import random
import re
import string

import pytest

from outputs import (NAME_MAX, OutputError, OutputPlan, WriteError, atomic_path, distinct_stems, file_names,
                     temporary_name)
from utils import UserError


@pytest.fixture
def files(tmp_path):
    (tmp_path / 'inputs').mkdir()
    (tmp_path / 'inputs' / 'a.png').write_bytes(b'input')
    (tmp_path / 'mine.csv').write_bytes(b'mine')
    (tmp_path / 'afile').write_bytes(b'a file')
    return tmp_path


def plan_for(root, overwrite=False):
    return OutputPlan(reads=[root / 'inputs' / 'a.png'], read_folders=[root / 'inputs'], overwrite=overwrite)


@pytest.mark.parametrize('output, overwrite, message', [
    ('inputs/a.png', True, 'which this command reads'),
    ('inputs/../inputs/a.png', True, 'which this command reads'),
    ('mine.csv', False, 'exists; pass --overwrite'),
    ('inputs', False, 'is a folder'),
    ('afile/out.csv', False, 'afile is a file, where a folder is needed'),
    ('out.txt', False, 'cannot write .txt here; name it *.csv'),
    ('out', False, 'cannot write a file without an extension'),
    ('inputs/new.csv', True, 'inside'),
    ('n' * 253 + '.csv', False, 'longer than the 255'),
])
def test_a_plan_refuses_each_class_in_one_line(files, output, overwrite, message):
    with pytest.raises(OutputError, match=re.escape(message)) as refused:
        plan_for(files, overwrite).file(files / output, '--csv', formats=('.csv',))
    assert isinstance(refused.value, UserError) and '\n' not in str(refused.value)
    assert str(refused.value).startswith('--csv ')  # names the flag the user gave it with


def test_a_plan_takes_what_it_may_write(files):
    plan = plan_for(files, overwrite=True)
    assert plan.file(files / 'mine.csv', '--csv', formats=('.csv',)) == files / 'mine.csv'  # the user's word
    assert plan.file(files / ('n' * 251 + '.csv'), '--csv', formats=('.csv',)) is not None  # 255 bytes: legal
    assert OutputPlan().file(files / 'mine.csv', '-o', if_exists='skip') is None


def test_two_outputs_on_one_path_are_refused_however_named(files):
    plan = plan_for(files)
    plan.file(files / 'out' / 'x.png', '-o')
    os.symlink(files / 'out', files / 'link') if not (files / 'link').exists() else None
    for same in (files / 'out' / '.' / 'x.png', files / 'link' / 'x.png'):
        with pytest.raises(OutputError, match='are one file'):
            plan.file(same, '--save-dir')


def test_a_folder_output_inside_an_input_folder_or_on_a_file_is_refused(files):
    plan = plan_for(files)
    for folder, message in (('inputs/page', 'inside'), ('afile', 'is a file'), ('afile/page', 'is a file')):
        with pytest.raises(OutputError, match=message):
            plan.folder(files / folder, '--html')
    assert plan.folder(files / 'page', '--html') == files / 'page'


def test_writing_an_unplanned_file_is_a_bug_not_a_user_error(files):
    with pytest.raises(AssertionError):
        plan_for(files).write(files / 'never.csv')


def random_labels(rng, n):
    alphabet = string.ascii_letters[:6] + ' _-./:#%é'
    return [''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(n)]


@pytest.mark.parametrize('seed', range(20))
def test_file_names_never_collide_and_do_not_depend_on_the_others(seed):
    """Generated labels full of the characters slugs lose (' ', '_', '/', case, accents)."""
    rng = random.Random(seed)
    labels = random_labels(rng, 200)
    names = file_names(labels)
    assert len(set(names.values())) == len(set(labels))
    assert all(name and '/' not in name and not name.startswith('.') for name in names.values())
    some = rng.sample(sorted(set(labels)), 10)
    assert file_names(some) == {label: names[label] for label in some}
    assert file_names(['baby', 'a_b']) == {'baby': 'baby', 'a_b': 'a_b'}  # safe names stay as they are
    assert len({name.casefold() for name in file_names(['A', 'a', 'b']).values()}) == 3  # macOS, Windows


@pytest.mark.parametrize('seed', range(20))
def test_distinct_stems_tell_every_file_apart_and_keep_the_stem_when_they_can(seed):
    rng = random.Random(seed)
    folders, stems, exts = ['', 'sub/', 'sub/deep/', 'other/'], ['x', 'y', 'baby'], ['.png', '.jpg', '.PNG']
    paths = {f'set/{rng.choice(folders)}{rng.choice(stems)}{rng.choice(exts)}' for _ in range(12)}
    names = distinct_stems(paths)
    assert len(set(names.values())) == len(paths)
    for path, name in names.items():
        others = [p for p in paths if os.path.splitext(os.path.basename(p))[0] == path.stem]
        assert (name == path.stem) == (len(others) == 1)
    assert distinct_stems(['s/x.png', 's/x.jpg', 's/sub/x.png']) == {
        path: name for path, name in zip(distinct_stems(['s/x.png', 's/x.jpg', 's/sub/x.png']),
                                         ['s/x.png', 'x.jpg', 'sub/x.png'])}


def test_temporary_names_fit_beside_a_name_at_the_limit(tmp_path):
    for name in ('n' * 251 + '.png', 'é' * 125 + '.png', 'short.pt'):
        tmp = temporary_name(tmp_path / name)
        assert len(os.fsencode(os.path.basename(tmp))) <= NAME_MAX and tmp.endswith(os.path.splitext(name)[1])
        with atomic_path(tmp_path / name) as path:
            with open(path, 'wb') as f:
                f.write(b'data')
        assert (tmp_path / name).read_bytes() == b'data'
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['n' * 251 + '.png', 'é' * 125 + '.png', 'short.pt'])


def test_a_failed_write_keeps_the_old_file_and_names_the_users_file(tmp_path):
    (tmp_path / 'out.png').write_bytes(b'old')
    with pytest.raises(WriteError, match=f'could not write {tmp_path / "out.png"}: '):
        with atomic_path(tmp_path / 'out.png'):
            raise OSError(28, 'No space left on device')
    assert (tmp_path / 'out.png').read_bytes() == b'old' and len(list(tmp_path.iterdir())) == 1

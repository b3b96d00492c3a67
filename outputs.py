"""
Where a command's outputs may go: the one policy every script writes through.

A command first plans every file it will write (OutputPlan), before any work, and only then writes, each file
atomically (OutputPlan.write, atomic_path). The plan refuses, in one line naming the flag and the file:

- a file the same command reads (even with --overwrite);
- an existing file the user did not ask to replace;
- two outputs of one command on one path;
- an output inside a folder that the command, or its next run, reads as input (it would be read back as input);
- a file whose format is not known before writing (an extension the writer cannot write);
- a name longer than the file system allows, or a file where a folder belongs.

Names made from inputs (an image's name, a model's label) go through file_names, which never maps two inputs to
one name, so a policy check on collisions is a guard, not the way names are kept apart.
"""

import collections
import contextlib
import errno
import hashlib
import os
import re
import shutil
from pathlib import Path

from utils import UserError

NAME_MAX = 255  # bytes in one file or folder name, on the usual file systems (ext4, APFS, NTFS in UTF-16 units)


class OutputError(UserError, ValueError):
    """An output the command must not write; said before anything is written."""


class WriteError(UserError, OSError):
    """A file that could not be written (a full disk, a file-size limit, a folder that is a file, no permission);
    the message says which file and why, in one line."""


def _file_id(path):
    """(device, inode): the same for every name of one file (hard links, other spellings, links)."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _inside(path, folder):
    """Whether `path` is `folder` or lies below it (both resolved, links followed)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


class OutputPlan:
    """The files one command will write, each checked against what the command reads and against each other
    before any work. reads: the files the command reads; read_folders: folders it (or its next run) reads as input;
    overwrite: the user's word that existing outputs may be replaced (never an input)."""

    def __init__(self, reads=(), read_folders=(), overwrite=False):
        self.reads = {}  # resolved path, and (device, inode) of an existing file -> as the user named it
        for read in (Path(p) for p in reads if p is not None):
            self.reads[read.resolve()] = read
            if read.exists():
                self.reads[_file_id(read)] = read
        self.read_folders = [Path(p) for p in read_folders if p is not None]
        self.overwrite = overwrite
        self.planned = {}  # resolved path -> how it was named (the flag and the path), for the message

    def file(self, path, flag, formats=None, if_exists=None):
        """Plan one output file, named by the user with `flag` (or made from an input: flag says which).
        formats: the extensions the writer can write (lower case, with the dot), None for any. if_exists: 'refuse'
        (the default without overwrite), 'replace' (the default with it) or 'skip'. -> the Path to write, or None
        when an existing file is to be skipped. OutputError when it must not be written."""
        path = Path(path)
        if_exists = if_exists or ('replace' if self.overwrite else 'refuse')
        what = f'{flag} {path}' if flag else str(path)
        check_name(path, what)
        read = self.reads.get(path.resolve()) or (self.reads.get(_file_id(path)) if path.exists() else None)
        if read is not None:
            raise OutputError(f'{what} is {read}, which this command reads; write to another file')
        if path.is_dir():
            example = f' such as {path / ("out" + formats[0])}' if formats else ''
            raise OutputError(f'{what} is a folder; name a file{example}')
        self._check_place(path, what)
        if formats is not None and path.suffix.lower() not in formats:
            raise OutputError(f'{what}: cannot write {path.suffix or "a file without an extension"} here; name it '
                              f'{" or ".join("*" + f for f in formats)}')
        key = path.resolve()
        if key in self.planned:
            raise OutputError(f'{self.planned[key]} and {what} are one file; give them different names')
        if path.exists():
            if if_exists == 'skip':
                return None
            if if_exists == 'refuse':
                raise OutputError(f'{what} exists; pass --overwrite to replace it, or choose another name')
        self.planned[key] = what
        return path

    def folder(self, path, flag):
        """Plan a folder the command writes into (its files planned one by one with `file`): not a file, not inside
        a folder the command reads. -> its Path."""
        path = Path(path)
        what = f'{flag} {path}'
        check_name(path, what)
        if path.exists() and not path.is_dir():
            raise OutputError(f'{what} is a file; name a folder')
        self._check_place(path, what)
        return path

    def _check_place(self, path, what):
        """Where `path` would go: below a folder one can write to (the nearest that exists), outside the folders the
        command reads as input."""
        for folder in self.read_folders:
            if _inside(path, folder):
                raise OutputError(f'{what} is inside {folder}, which this command reads as input (its next run would '
                                  f'read it back); write outside it')
        parent = next(p for p in Path(os.path.abspath(path)).parents if p.exists())
        if not parent.is_dir():
            raise OutputError(f'{what}: {parent} is a file, where a folder is needed')
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f'{what}: {parent} is not a folder you can write to; choose another')

    def write(self, path):
        """The atomic write of a planned file: `with plan.write(path) as tmp_path: ...` (see atomic_path)."""
        if Path(path).resolve() not in self.planned:
            raise AssertionError(f'{path} was not planned')  # a bug: every output goes through file() first
        return atomic_path(path)


def check_name(path, what):
    """OutputError when a component of `path` is longer than the file system allows (NAME_MAX bytes)."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise OutputError(f'{what}: the name "{part[:40]}..." is {len(os.fsencode(part))} bytes, longer than '
                              f'the {NAME_MAX} a file name may have; choose a shorter one')


# ----------------------------------------------------------------------------------------------------------------
# Names made from inputs

def file_names(labels):
    """Distinct file-name-safe names for `labels` (image names, model labels) -> {label: name}. A label that is
    already safe (letters, digits, '.', '_', '-', no leading dot) is kept as it is; another becomes its safe form plus
    a short hash of the label itself, so 'a b' and 'a_b' stay apart whatever else is named; so does a label that differs
    from another in case alone ('A', 'a': one file on macOS and Windows)."""
    names = {}
    for label in dict.fromkeys(labels):
        safe = re.sub(r'[^\w.-]+', '_', label).strip('_.')[:100] or 'x'
        names[label] = safe if safe == label else f'{safe}-{_short_hash(label)}'
    folded = collections.Counter(name.casefold() for name in names.values())
    for label, name in names.items():  # 'A' and 'a' are one file on macOS and Windows
        if folded[name.casefold()] > 1 and name == label:
            names[label] = f'{name}-{_short_hash(label)}'
    if len({name.casefold() for name in names.values()}) < len(names):  # a hash collision: never written over
        raise OutputError(f'two names map to one file name among {", ".join(labels)}; rename one')
    return names


def _short_hash(text):
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def distinct_stems(paths):
    """Short names that tell files apart -> {path: name}: the file's stem when no other path shares it, else its
    name with the extension, else with as many parent folders as it takes ('x', 'x.jpg', 'sub/x.png')."""
    paths = [Path(p) for p in dict.fromkeys(os.fspath(p) for p in paths)]
    levels = dict.fromkeys(paths, 0)  # 0: the stem; 1: the name; 2 and more: the name below level - 1 folders
    while True:
        names = {p: '/'.join(p.parts[-levels[p]:]) if levels[p] else p.stem for p in paths}
        counts = collections.Counter(names.values())
        clashing = [p for p in paths if counts[names[p]] > 1 and levels[p] < len(p.parts)]
        if not clashing:
            return names
        for p in clashing:
            levels[p] += 1


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes

def temporary_name(path):
    """A hidden name beside `path`, with its extension (writers pick the format from it), that fits NAME_MAX."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tail = f'.partial{os.getpid()}{ext}'
    room = NAME_MAX - 1 - len(os.fsencode(tail))
    stem = os.fsencode(stem)[:max(room, 0)].decode(errors='ignore')
    return os.path.join(folder, f'.{stem}{tail}')


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name beside `path` (same extension) to write to: renamed to `path` when the block ends, removed
    if it raises. A crash, a full disk or a stop while writing leaves the previous file at `path` intact. A failed
    write (OSError, or torch.save's RuntimeError 'unexpected pos') is raised as a WriteError naming `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp_path = temporary_name(path)
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp_path
        with open(tmp_path, 'rb') as f:
            os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp_path, path)  # atomic on POSIX and Windows
    except (OSError, RuntimeError) as e:
        torch_write_failure = any(text in str(e) for text in ('inline_container', 'PytorchStreamWriter'))
        if isinstance(e, WriteError) or not (isinstance(e, OSError) or torch_write_failure):
            raise
        raise WriteError(f'could not write {path}: {_write_failure(e, folder)}') from None
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def _write_failure(error, folder):
    """Why a write failed, with the free space where it was written (a full disk is the usual cause)."""
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return f'{error.filename} is a file, where a folder is needed'
    if isinstance(error, OSError) and error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return error.strerror or str(error)  # no permission, a read-only disk; Pillow's 'cannot write mode P as JPEG'
    reason = error.strerror if isinstance(error, OSError) else 'the write stopped part-way'  # torch's writer
    try:
        free = f' ({shutil.disk_usage(folder).free / 2 ** 20:.0f} MB free there)'
    except OSError:
        free = ''
    return f'{reason}{free}'

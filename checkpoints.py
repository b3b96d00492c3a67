"""
The checkpoint format: one kind of file for every script, state_dicts only, written atomically, read with
torch.load(weights_only=True), which cannot run code from the file.

A checkpoint is a dict:
    kind          'srresnet' or 'srgan'
    model_config  SRResNet's constructor arguments (the generator's architecture and scale)
    model         SRResNet state_dict (train_srresnet.py; the tutorial's keys), or
    generator     Generator state_dict ('net.' + SRResNet's keys; train_srgan.py)
    ema           (--ema-decay) the moving average of the generator, SRResNet's keys: what inference uses
    iteration, best_psnr, config (the run's flags)
and, in training checkpoints, what resuming needs (see training.save_run / restore_run).

Checkpoint tools, from the command line:

    python checkpoints.py convert checkpoint_srresnet.pth.tar converted.pt   # an original-tutorial checkpoint
    python checkpoints.py export runs/srresnet/best.pt srresnet_x4.pt         # the generator alone, fp32 (~6 MB)
"""

import argparse
import os
import pickle
from pathlib import Path

import torch

from outputs import OutputError, OutputPlan, atomic_path
from utils import UserError, first_line, run_main

CHECKPOINT_EXTENSIONS = ('.pt', '.pth')  # what convert and export write (torch.save files)


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message says what to do."""


class PickledCheckpointError(CheckpointError):
    """An original-tutorial checkpoint (pickled model objects), refused because allow_unsafe_pickle is not set."""


def save_checkpoint(state, path):
    """Write `state` (a dict of tensors, numbers, strings, lists and dicts) to `path` atomically: a crash while
    writing leaves the previous file at `path` intact."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, 'wb') as f:
            torch.save(state, f)


def load_checkpoint(path, allow_unsafe_pickle=False, map_location='cpu', unsafe_flag='--unsafe-pickle'):
    """Read a checkpoint with torch.load(weights_only=True), which cannot run code from the file.

    The original tutorial saved whole pickled model objects; unpickling those can execute arbitrary code, so they
    are refused unless `allow_unsafe_pickle` is set (only for files you trust), and converted to this repo's format
    on the fly (see convert_tutorial_checkpoint). unsafe_flag: the caller's flag that sets allow_unsafe_pickle, named
    in the refusal (None where there is none: the message then names `python checkpoints.py convert` alone)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such checkpoint file')
    what = what_file_is(path)
    if what is not None:
        raise CheckpointError(f'{path} is {what}, not a checkpoint: expected a .pt file written by train_srresnet.py, '
                              f'train_srgan.py or checkpoints.py')
    how = 'pass a checkpoint written by train_srresnet.py or train_srgan.py'
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not allow_unsafe_pickle:
            option = f'pass {unsafe_flag} once to convert it, or ' if unsafe_flag else ''
            raise PickledCheckpointError(
                f'{path} holds pickled Python objects (as the original tutorial saved them), and loading it could '
                f'run code from the file. If you trust it, {option}convert it once with '
                f'`python checkpoints.py convert {path} converted.pt`.') from None
        checkpoint = convert_tutorial_checkpoint(path, map_location)
    except Exception as e:
        raise CheckpointError(f'{path}: not a PyTorch checkpoint or damaged ({first_line(e)}); {how}') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path}: expected a checkpoint dict, found {type(checkpoint).__name__}; {how}')
    return checkpoint


# the first bytes of files people pass by mistake where a checkpoint is expected
_SIGNATURES = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'GIF8', 'a GIF image'),
               (b'BM', 'a BMP image'), (b'II*\x00', 'a TIFF image'), (b'MM\x00*', 'a TIFF image'),
               (b'\x89HDF', 'an HDF5 file (Keras .h5?)'), (b'\x1f\x8b', 'a gzip archive'), (b'7z', 'a 7-zip archive'))

_ONNX_MODEL = ('an ONNX model (run it with `python super_resolve.py IMAGE --model {path}` or `python eval.py {path}`; '
               'it cannot be trained from or exported again)')


def what_file_is(path):
    """None when `path` may be a torch.save file (a zip archive, or a legacy pickle stream), else what it is in a
    few words ('an empty file', 'a PNG image', 'a text file starting "..."'), for the one-line error."""
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK\x03\x04') or head.startswith(b'\x80'):  # torch.save's zip; a pickle (protocol >= 2)
        return None
    if not head:
        return 'an empty file (0 bytes)'
    if _is_onnx(head):
        return _ONNX_MODEL.format(path=path)
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return what
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'a WebP image'
    if head[4:8] == b'ftyp':
        return 'a video (MP4/MOV)'
    if len(head) >= 9 and int.from_bytes(head[:8], 'little') < 1e8 and head[8:9] == b'{':
        return 'a safetensors file (convert it with safetensors.torch.load_file and torch.save)'
    for cut in range(4):  # the 64 bytes may end inside a multi-byte character
        try:
            text = head[:len(head) - cut].decode('utf-8')
        except UnicodeDecodeError:
            continue
        if all(c.isprintable() or c.isspace() for c in text):
            first = text.strip().splitlines()[0][:40] if text.strip() else ''
            return f'a text file (starting "{first}")'
    return _ONNX_MODEL.format(path=path) if Path(path).suffix.lower() == '.onnx' else 'a file of an unknown format'


def _is_onnx(head):
    """Whether the first bytes are those of an ONNX ModelProto: field 1 (ir_version, a small varint) first, then
    producer_name (ours: 'pytorch'), producer_version, domain, model_version, doc_string or the graph."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in b'\x12\x1a\x22\x28\x32\x3a'


def convert_tutorial_checkpoint(path, map_location='cpu'):
    """Unpickle an original-tutorial checkpoint ({'epoch', 'model': SRResNet or Generator object, ...}; SRGAN ones
    also 'generator'/'discriminator') and return it in this repo's format. UNSAFE: only for files you trust.
    The pickles name the classes as 'models.SRResNet' etc.: unpickling imports this repo's models.py."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such checkpoint file')
    what = what_file_is(path)
    if what is not None:
        raise CheckpointError(f'{path} is {what}, not a PyTorch checkpoint: expected the original tutorial\'s '
                              f'checkpoint_srresnet.pth.tar or checkpoint_srgan.pth.tar')
    try:
        torch.load(path, map_location=map_location, weights_only=True)
        weights_only = True
    except Exception:  # pickled objects (what we expect), or not a checkpoint at all: the next load tells
        weights_only = False
    if weights_only:
        raise CheckpointError(f'{path}: already a weights-only checkpoint (this repo\'s format), not the original '
                              f'tutorial\'s pickled models: nothing to convert, use it as it is')
    try:
        old = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f'{path}: not a PyTorch checkpoint or damaged ({first_line(e)})') from None
    entry = 'generator' if isinstance(old, dict) and 'generator' in old else 'model'
    net = old.get(entry) if isinstance(old, dict) else None
    if not isinstance(net, torch.nn.Module):
        raise CheckpointError(f'{path}: not an original-tutorial checkpoint (expected a dict with a pickled "model" '
                              f'or "generator" model object)')
    state_dict = {k.removeprefix('net.'): v for k, v in net.state_dict().items()}  # a Generator wraps it as .net
    return {'kind': 'srgan' if entry == 'generator' else 'srresnet', 'model': state_dict,
            'model_config': model_config_from_state_dict(state_dict),
            'iteration': None, 'config': {'converted_from': os.path.basename(path), 'epoch': old.get('epoch')}}


def model_config_from_state_dict(state_dict):
    """Recover SRResNet's constructor arguments from its weights."""
    n_blocks = len({k.split('.')[1] for k in state_dict if k.startswith('residual_blocks.')})
    n_subpixel = len({k.split('.')[1] for k in state_dict if k.startswith('subpixel_convolutional_blocks.')})
    first, small = state_dict['conv_block1.conv_block.0.weight'], state_dict['conv_block2.conv_block.0.weight']
    return {'large_kernel_size': first.shape[-1], 'small_kernel_size': small.shape[-1],
            'n_channels': first.shape[0], 'n_blocks': n_blocks, 'scaling_factor': 2 ** n_subpixel}


MODEL_CONFIG_KEYS = ('large_kernel_size', 'small_kernel_size', 'n_channels', 'n_blocks', 'scaling_factor')


def model_config(checkpoint):
    """The generator's architecture: as recorded, else recovered from its weights."""
    config = checkpoint.get('model_config') or model_config_from_state_dict(generator_state_dict(checkpoint))
    if not (isinstance(config, dict) and set(config) <= set(MODEL_CONFIG_KEYS)
            and all(isinstance(v, int) for v in config.values())):
        raise CheckpointError(f'its "model_config" is not an SRResNet architecture ({config!r:.80}); pass a '
                              f'checkpoint written by train_srresnet.py or train_srgan.py')
    return config


def generator_state_dict(checkpoint, average=True):
    """The SRResNet-layout state_dict (no 'net.' prefix) of the generator in any of this repo's checkpoints:
    train_srresnet.py's ({'model': ...}) or train_srgan.py's ({'generator': ...}). average: when the run kept a
    moving average ({'ema': ...}, --ema-decay), that, which is what its validation measured; False: the trained
    weights themselves (to resume training). A CheckpointError when there are none, or they are not an SRResNet's."""
    for key in ('ema', 'model', 'generator')[0 if average else 1:]:
        if key in checkpoint:
            entry = checkpoint[key]
            state_dict = {k.removeprefix('net.'): v for k, v in entry.items()} if isinstance(entry, dict) else {}
            if not all(k in state_dict for k in ('conv_block1.conv_block.0.weight', 'conv_block2.conv_block.0.weight')):
                found = f'keys such as {", ".join(list(state_dict)[:2])}' if state_dict else type(entry).__name__
                raise CheckpointError(f'its "{key}" entry is not an SRResNet\'s weights (found {found}); pass a '
                                      f'checkpoint written by train_srresnet.py or train_srgan.py')
            return state_dict
    raise CheckpointError('it holds no generator weights (no "model" or "generator" entry); '
                          'pass a checkpoint written by train_srresnet.py or train_srgan.py')


def generator_of(checkpoint, path, average=True):
    """-> (model_config, SRResNet-layout state_dict) of the generator in `checkpoint`, read from `path`; a
    CheckpointError naming the file when it holds none (see generator_state_dict)."""
    try:
        return model_config(checkpoint), generator_state_dict(checkpoint, average)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None


def export_generator(path, output_path, average=True):
    """Write the generator of a training checkpoint as a small inference checkpoint: fp32 weights, the
    architecture, and where they came from (iteration, the run's flags); no optimizer or RNG state. average: the
    moving average when the run kept one (see generator_state_dict); False: the trained weights themselves.
    (An ONNX model instead: deploy.export_onnx.)"""
    OutputPlan(reads=[path]).file(output_path, 'output_path', if_exists='replace')  # never over its input
    check_extension(path, output_path)
    checkpoint = load_checkpoint(path, unsafe_flag=None)
    config, state_dict = generator_of(checkpoint, path, average)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    save_checkpoint({'kind': checkpoint.get('kind', 'srresnet'), 'model_config': config,
                     'model': state_dict, 'iteration': checkpoint.get('iteration'),
                     'best_psnr': checkpoint.get('best_psnr'), 'config': checkpoint.get('config', {})}, output_path)


def check_extension(input_path, output_path, flag='OUTPUT'):
    """An OutputError unless `output_path` names a PyTorch checkpoint (CHECKPOINT_EXTENSIONS); an .onnx is made by
    deploy.py, and the message says how."""
    suffix = Path(output_path).suffix.lower()
    if suffix == '.onnx':
        raise OutputError(f'{flag} {output_path}: an ONNX export is made by deploy.py: python deploy.py {input_path} '
                          f'{output_path}')
    if suffix not in CHECKPOINT_EXTENSIONS:
        raise OutputError(f'{flag} {output_path}: cannot write {suffix or "a file without an extension"} here; name '
                          f'it {" or ".join("*" + e for e in CHECKPOINT_EXTENSIONS)} (a PyTorch checkpoint)')


def main(argv=None):
    parser = argparse.ArgumentParser(description="Checkpoint tools. convert: an original-tutorial checkpoint "
                                                 "(pickled model objects; unpickling runs code from the file, so only "
                                                 "convert checkpoints you trust) into this repo's weights-only format. "
                                                 "export: the generator of a training checkpoint alone (fp32, for "
                                                 "inference and sharing: ~6 MB instead of ~19 MB; to ONNX: deploy.py).")
    parser.add_argument('command', choices=['convert', 'export'])
    parser.add_argument('input', help="convert: the tutorial's checkpoint_srresnet.pth.tar or checkpoint_srgan.pth.tar;"
                                      " export: a last.pt or best.pt of train_srresnet.py or train_srgan.py")
    parser.add_argument('output', help='where to write the new checkpoint (.pt)')
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT if it exists (never INPUT)')
    parser.add_argument('--live', action='store_true',
                        help='export: the trained weights themselves, not the moving average of a run with '
                             '--ema-decay (which lags behind in a short run whose weights still improve fast)')
    args = parser.parse_args(argv)
    plan = OutputPlan(reads=[args.input], overwrite=args.overwrite)
    plan.file(args.output, 'OUTPUT')  # never INPUT itself (even with --overwrite), nor an existing file without it
    check_extension(args.input, args.output)  # after the plan: an OUTPUT that is INPUT is said as such first
    if args.command == 'convert':
        save_checkpoint(convert_tutorial_checkpoint(args.input), args.output)
    else:
        export_generator(args.input, args.output, average=not args.live)
    print(f'wrote {args.output}')


if __name__ == '__main__':
    run_main(main)

"""
The checkpoint format, and the state of a training run: one kind of file for every script, state_dicts only,
written atomically, read with torch.load(weights_only=True), which cannot run code from the file.

A checkpoint is a dict:
    kind          'srresnet' or 'srgan'
    model_config  SRResNet's constructor arguments (the generator's architecture and scale)
    model         SRResNet state_dict (train_srresnet.py; the tutorial's keys), or
    generator     Generator state_dict ('net.' + SRResNet's keys; train_srgan.py)
    ema           (--ema-decay) the moving average of the generator, SRResNet's keys: what inference uses
    iteration, best_psnr, config (the run's settings: its flags, with 'auto' ones as resolved)
and, in training checkpoints, what resuming needs: the optimizers, the GradScaler, the RNG states (TrainingState,
written by save_run and restored by restore_run, below; resume_from reads the one to continue).

Checkpoint tools, from the command line:

    python checkpoints.py convert checkpoint_srresnet.pth.tar converted.pt   # an original-tutorial checkpoint
    python checkpoints.py export runs/srresnet/best.pt srresnet_x4.pt         # the generator alone, fp32 (~6 MB)
"""

import argparse
import dataclasses
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from outputs import OutputError, OutputPlan, atomic_path
from utils import UserError, first_line, run_main

CHECKPOINT_EXTENSIONS = ('.pt', '.pth')  # what convert and export write (torch.save files)
CHECKPOINT_FILE, BEST_CHECKPOINT_FILE = 'last.pt', 'best.pt'  # a training run's, in its --output-dir
# flags that may differ when resuming; a run continued with another value of one of these is noted as such
NOTED_ON_RESUME = ('batch_size', 'crop_size', 'seed', 'lr', 'beta1', 'lr_decay_at', 'lr_schedule', 'blur_sigma',
                   'augment', 'no_amp', 'ema_decay', 'pixel_loss', 'degrade')


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


# ----------------------------------------------------------------------------------------------------------------
# The state of a training run: what its checkpoint holds, written and restored in one place each

@dataclasses.dataclass
class TrainingState:
    """Everything that changes as a run trains, and what it is. models and optimizers are named as their checkpoint
    entries: {'model': srresnet} and {'optimizer': adam} (train_srresnet.py); {'generator': ..., 'discriminator': ...}
    and {'optimizer_g': ..., 'optimizer_d': ...} (train_srgan.py)."""
    kind: str  # 'srresnet' or 'srgan'
    config: dict  # the run's settings: its flags, with 'auto' ones as resolved (training.Run.config)
    model_config: dict  # the generator's architecture (SRResNet's constructor arguments)
    models: dict
    optimizers: dict
    scaler: torch.amp.GradScaler
    samples_per_iteration: int = 1  # --batch-size x the number of DDP processes
    ema: nn.Module | None = None  # --ema-decay: the moving average of the generator (rank 0 only)
    iteration: int = 0  # optimizer steps done
    best_psnr: float = float('-inf')  # the best validation PSNR so far (best.pt's)


def save_run(path, state):
    """Write the run's state to `path` (atomically): with restore_run, the one definition of a training checkpoint.
    Besides the state: the RNG states, and the samples seen (the data stream's position)."""
    checkpoint = {'kind': state.kind, 'model_config': state.model_config,
                  **{name: model.state_dict() for name, model in state.models.items()},
                  **{name: optimizer.state_dict() for name, optimizer in state.optimizers.items()},
                  'scaler': state.scaler.state_dict(), 'iteration': state.iteration, 'best_psnr': state.best_psnr,
                  'rng': rng_state(), 'config': state.config,
                  'samples_seen': state.iteration * state.samples_per_iteration}
    if state.ema is not None:
        checkpoint['ema'] = state.ema.state_dict()  # SRResNet layout
    save_checkpoint(checkpoint, path)


def restore_run(checkpoint, state, beta1):
    """Restore into `state` what save_run wrote, as the flags now ask: the weights, the optimizers (with Adam's
    `beta1` from the flags; the lr is set every step from them), the GradScaler, the moving average (started from the
    weights if the checkpoint has none), the iteration, the best PSNR, and the RNG states."""
    for name, model in state.models.items():
        model.load_state_dict(checkpoint[name])
    for name, optimizer in state.optimizers.items():
        optimizer.load_state_dict(checkpoint[name])
        for group in optimizer.param_groups:
            group['betas'] = (beta1, group['betas'][1])
    if checkpoint.get('scaler') and state.scaler.is_enabled():
        state.scaler.load_state_dict(checkpoint['scaler'])
    if state.ema is not None:  # the checkpoint's average, or one that starts here from the trained weights
        state.ema.load_state_dict(checkpoint['ema'] if 'ema' in checkpoint else
                                  generator_state_dict(checkpoint, average=False))
    state.iteration, state.best_psnr = checkpoint['iteration'], checkpoint['best_psnr']
    set_rng_state(checkpoint['rng'])


def rng_state():
    """The RNG states of python, numpy and torch (CPU and CUDA), in types torch.load(weights_only=True) accepts."""
    numpy_state = np.random.get_state(legacy=False)
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': {'bit_generator': numpy_state['bit_generator'],
                       'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                       'pos': numpy_state['state']['pos'], 'has_gauss': numpy_state['has_gauss'],
                       'gauss': numpy_state['gauss']}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    python_state = state['python']
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state({'bit_generator': n['bit_generator'], 'has_gauss': n['has_gauss'], 'gauss': n['gauss'],
                         'state': {'key': n['key'].numpy().astype(np.uint32), 'pos': n['pos']}})
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def resume_from(args, kind, is_main=True):
    """--resume PATH|auto -> the training checkpoint of a `kind` run to continue, or None for a new run; a UserError
    for one that cannot be continued, or an --output-dir a new run would write over. Notes the flags that changed."""
    path = args.resume
    last_path, best_path = (os.path.join(args.output_dir, name) for name in (CHECKPOINT_FILE, BEST_CHECKPOINT_FILE))
    if args.resume == 'auto':
        path = last_path if os.path.isfile(last_path) else None
    elif args.resume is None and os.path.isfile(last_path):
        raise UserError(f'{args.output_dir} already holds a run ({last_path}); continue it with --resume auto, or '
                        f'choose another --output-dir')
    if path is None and os.path.isfile(best_path):  # a new run would write over it
        raise UserError(f'{args.output_dir} holds {best_path} but no {CHECKPOINT_FILE}; continue from it with '
                        f'--resume {best_path}, or choose another --output-dir')
    if path is None:
        if args.resume == 'auto' and is_main:
            print(f'--resume auto: no {last_path} yet, starting a new run')
        return None
    checkpoint = _training_checkpoint(path, kind, args.scaling_factor)
    if checkpoint['iteration'] >= args.iterations:  # a finished run: not an error (see training.Run.nothing_to_do)
        if is_main:
            print(f'{path} is at iteration {checkpoint["iteration"]}, --iterations is {args.iterations}: nothing to '
                  f'do (raise --iterations to train on)')
        return checkpoint
    if is_main:
        print(f'resuming from {path} at iteration {checkpoint["iteration"]}')
        config = checkpoint['config']
        changed = [f'--{k.replace("_", "-")} {getattr(args, k)} (was {config[k]})' for k in NOTED_ON_RESUME
                   if k in config and config[k] != getattr(args, k)]
        if changed:
            print(f'note: {", ".join(changed)}: applied from here on, so the run will not continue as it would '
                  f'have')
    return checkpoint


def _training_checkpoint(path, kind, scaling_factor):
    """The checkpoint at `path`, if a `kind` run at `scaling_factor` can continue from it; else a UserError."""
    try:
        checkpoint = load_checkpoint(path)
    except PickledCheckpointError:
        raise UserError(f"{path} is an original-tutorial checkpoint (pickled model objects), which cannot be "
                        f"resumed: start a new run, or start train_srgan.py from it after `python checkpoints.py "
                        f"convert {path} converted.pt` (--srresnet-checkpoint converted.pt)") from None
    if checkpoint.get('kind') != kind:
        raise UserError(f'{path} is not a {kind} training checkpoint written by train_{kind}.py, so it '
                        f'cannot be resumed (found kind {checkpoint.get("kind")!r})')
    if 'rng' not in checkpoint or 'iteration' not in checkpoint:
        raise UserError(f'{path} holds a {kind} model alone (exported or converted: no optimizer or training '
                        f'state), so it cannot be resumed; start a new run from a training last.pt')
    trained = checkpoint['config'].get('scaling_factor', scaling_factor)
    if trained != scaling_factor:
        raise UserError(f'{path} trains x{trained}, not --scaling-factor {scaling_factor}; resume with '
                        f'--scaling-factor {trained}')
    return checkpoint


def remove_partial_checkpoints(output_dir):
    """Checkpoints half-written by a run that was killed while saving (see outputs.atomic_path): the folder holds one
    run, and the calling process is now the only one writing to it."""
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith(('.last.partial', '.best.partial')) and name.endswith('.pt'):
            os.remove(os.path.join(output_dir, name))


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

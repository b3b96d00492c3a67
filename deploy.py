"""
Deployment without PyTorch: a generator exported to ONNX, and an exported model run by onnxruntime behind the same
interface as an SRResNet, so that super_resolve.py and eval.py run it through their usual tiles, alpha, 16-bit and
video paths (inference.load_upscaler picks this for a .onnx file).

    python deploy.py weights/srresnet_x4.pt srresnet_x4.onnx    # any checkpoint of this repo; --fp16: half the file
    python super_resolve.py photo.jpg --model srresnet_x4.onnx  # check it on your own images

The exported graph takes and returns what a user has, at any batch size and image size:
    input  'lr_imgs'  float32 RGB in [0, 1], (N, 3, H, W)
    output 'sr_imgs'  float32 RGB in [0, 1], (N, 3, s H, s W), s the model's scale (2, 4 or 8)
The ImageNet normalisation and the tanh's [-1, 1] -> [0, 1] are inside the graph, every BatchNorm is folded into its
convolution, and the file's metadata names the scale, the ranges and the checkpoint it came from (METADATA_KEYS).

onnx, onnxscript (export) and onnxruntime (running) are imported only here and only when used. ONNX export lives
here, not in `checkpoints.py export`, because it builds the model (models.py), which itself reads checkpoints.
"""

import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import torch
from torch import nn

import speedups
from checkpoints import CheckpointError, generator_of, load_checkpoint
from models import SRResNet
from outputs import OutputError, OutputPlan, atomic_path
from utils import convert_image, first_line, run_main

# torch's exporter's default opset: onnxruntime runs it from 1.17, TensorRT from 10. The graph uses only
# Conv, PRelu, DepthToSpace, Tanh, Add, Sub, Div (and Cast in fp16), unchanged since opset 13, so an older runtime
# can take the file after onnx.version_converter.convert_version(model, 13).
OPSET = 20
INPUT_NAME, OUTPUT_NAME = 'lr_imgs', 'sr_imgs'
# what every export of this repo records, as onnx metadata_props (strings)
METADATA_KEYS = ('scale', 'input', 'output', 'weights', 'model_config', 'kind', 'source')
# what OnnxGenerator runs: onnxruntime's input types -> what it feeds them; the output types it reads
INPUT_TYPES = {'tensor(float)': np.float32, 'tensor(float16)': np.float16}
OUTPUT_TYPES = ('tensor(float)', 'tensor(float16)', 'tensor(double)')
PROBE = (12, 16)  # (h, w) of the image an .onnx's scale is measured on: tiny, not square, so both sides are checked
HOW_TO_EXPORT = 'pass an .onnx written by `python deploy.py CHECKPOINT OUT.onnx`'


class PixelsToPixels(nn.Module):
    """What the exported graph computes: an SRResNet between the ranges a user has.
    (N, 3, H, W) RGB in [0, 1] -> (N, 3, s H, s W) RGB in [0, 1]. fp16: the network computes in half precision
    (half the file); the graph's input and output stay float32."""

    def __init__(self, srresnet, fp16=False):
        super().__init__()
        net = speedups.fold_batchnorm(srresnet)
        self.net = net.half() if fp16 else net
        self.fp16 = fp16

    def forward(self, lr_imgs):  # (N, 3, H, W), in [0, 1]
        lr_imgs = convert_image(lr_imgs, '[0, 1]', 'imagenet-norm')  # (N, 3, H, W), ImageNet-normalised
        sr_imgs = self.net(lr_imgs.half() if self.fp16 else lr_imgs).float()  # (N, 3, s H, s W), in [-1, 1]
        return convert_image(sr_imgs, '[-1, 1]', '[0, 1]')  # (N, 3, s H, s W), in [0, 1]


def export_onnx(path, output_path, average=True, fp16=False):
    """The generator of any checkpoint of this repo (x2, x4, x8; SRResNet or SRGAN) -> an .onnx file at
    `output_path` (written atomically) with dynamic batch, height and width and the metadata a user needs (see the
    module docstring). average: the run's moving average when it kept one, else the trained weights (as
    checkpoints.export_generator). fp16: the network in half precision. -> the largest |onnxruntime - PyTorch fp32|
    on a 17x31 random image, on the [0, 1] scale (None when onnxruntime is not installed)."""
    OutputPlan(reads=[path]).file(output_path, 'output_path', if_exists='replace')  # never over its input
    checkpoint = load_checkpoint(path, unsafe_flag=None)
    config, state_dict = generator_of(checkpoint, path, average)
    iteration, weights = checkpoint.get('iteration'), 'moving average' if average and 'ema' in checkpoint else 'weights'
    about = {'kind': checkpoint.get('kind', 'srresnet'),
             'source': f'{os.path.basename(path)}, {weights}' + (f' at iteration {iteration}' if iteration else '')}
    return export_srresnet(config, {k: v.float() for k, v in state_dict.items()}, output_path, about, fp16)


def export_srresnet(config, state_dict, output_path, about, fp16=False):
    """An SRResNet (its constructor arguments and state_dict) -> an .onnx file; see export_onnx. about: what the
    weights are, for the metadata: {'kind': 'srresnet' or 'srgan', 'source': where they came from}."""
    if tuple(int(part) for part in torch.__version__.split('.')[:2]) < (2, 6):
        raise CheckpointError(f'exporting to ONNX needs torch >= 2.6 (its dynamo exporter), not {torch.__version__}')
    onnx = _require('onnx', 'exporting to ONNX needs the onnx and onnxscript packages: pip install onnx onnxscript')
    _require('onnxscript', 'exporting to ONNX needs the onnxscript package: pip install onnxscript')
    srresnet = SRResNet(**config).eval()
    srresnet.load_state_dict(state_dict)
    graph = PixelsToPixels(srresnet, fp16).eval()
    dims = {0: torch.export.Dim('batch'), 2: torch.export.Dim('height'), 3: torch.export.Dim('width')}
    with torch.no_grad():
        program = torch.onnx.export(graph, (torch.rand(2, 3, 32, 32),), input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], opset_version=OPSET, dynamic_shapes={'lr_imgs': dims},
                                    external_data=False, dynamo=True, verbose=False)
    model = program.model_proto
    s = config['scaling_factor']
    metadata = {'scale': str(s), 'input': f'{INPUT_NAME}: float32 RGB in [0, 1], (N, 3, H, W)',
                'output': f'{OUTPUT_NAME}: float32 RGB in [0, 1], (N, 3, {s}H, {s}W)',
                'weights': 'fp16' if fp16 else 'fp32', 'model_config': json.dumps(config), **about}
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = f'SRResNet x{s} (Ledig et al. 2017): {metadata["input"]} -> {metadata["output"]}'
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(output_path) as tmp_path:
        onnx.save(model, tmp_path)
    return parity(PixelsToPixels(srresnet).eval() if fp16 else graph, output_path)  # against fp32 PyTorch


def parity(graph, onnx_path, size=(17, 31)):
    """The largest |onnxruntime - PyTorch fp32| of the exported graph at `onnx_path` on one random image of `size`
    (odd sides), [0, 1] scale; None when onnxruntime is not installed."""
    if importlib.util.find_spec('onnxruntime') is None:
        return None
    lr_imgs = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = graph(lr_imgs)
    return (OnnxGenerator(onnx_path).run(lr_imgs) - expected).abs().max().item()


def _require(module, message):
    """Import an optional package, or a CheckpointError saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise CheckpointError(message) from None


class OnnxGenerator(nn.Module):
    """An .onnx generator run by onnxruntime, in place of an SRResNet: it takes and returns what an SRResNet does,
    (N, 3, h, w) ImageNet-normalised -> (N, 3, h s, w s) in [-1, 1], so inference.Upscaler tiles, blends and batches
    it as any model. No parameters: it runs on the CPU (or CUDA with onnxruntime-gpu), from CPU tensors.

    The one reader of .onnx files. At load it checks what running it assumes, and refuses in one line a model that
    does not fit: one input, float32 or float16, (N, 3, H, W) with H and W dynamic (any image size); one float
    output. The scale is measured on a tiny probe, never taken from the metadata: a metadata scale that disagrees
    (wrong, '0', 'abc') is said in a note and the measured one is used. A batch axis fixed at k (an export of
    batch 1) is run k images at a time, the last batch padded with copies."""

    def __init__(self, path, device='cpu'):
        super().__init__()
        self.path, self.session = str(path), _session(path, device)
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.input = self._checked_input()
        self.batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else None  # None: any batch size
        self.scaling_factor = self._measured_scale()

    def _checked_input(self):
        """The graph's one input, checked (with its one output) against what run() feeds and reads."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise CheckpointError(f'{self.path}: takes {len(inputs)} inputs ({", ".join(i.name for i in inputs)}), '
                                  f'not one batch of images; {HOW_TO_EXPORT}')
        shape, dtype = inputs[0].shape, inputs[0].type  # ints for fixed axes, strings or None for dynamic ones
        if dtype not in INPUT_TYPES:
            raise CheckpointError(f'{self.path}: its input {inputs[0].name} is {dtype}, not float32 or float16 RGB in '
                                  f'[0, 1]; {HOW_TO_EXPORT}')
        if len(shape) != 4 or isinstance(shape[1], int) and shape[1] != 3:
            raise CheckpointError(f'{self.path}: its input {inputs[0].name} is {shape}, not (N, 3, H, W) RGB '
                                  f'images; {HOW_TO_EXPORT}')
        if any(isinstance(side, int) for side in shape[2:]):
            raise CheckpointError(f'{self.path}: its input {inputs[0].name} {shape} is fixed at {shape[2]}x{shape[3]}, '
                                  f'and images of any size are run here; export it with dynamic height and width, as '
                                  f'`python deploy.py CHECKPOINT OUT.onnx` does')
        if len(outputs) != 1 or outputs[0].type not in OUTPUT_TYPES:
            found = ', '.join(f'{o.name} {o.type}' for o in outputs)
            raise CheckpointError(f'{self.path}: gives {found}, not one float image batch; {HOW_TO_EXPORT}')
        return inputs[0]

    def _measured_scale(self):
        """The scale, measured on a PROBE image (N, 3, h, w) -> (N, 3, s h, s w); a note where the metadata says
        otherwise, or where there is none (an .onnx from elsewhere: what is assumed)."""
        (h, w), n = PROBE, self.batch or 2  # 2 where the batch is dynamic: a graph that only takes 1 shows now
        try:
            out = self._run(torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0)))
        except CheckpointError:
            if self.batch is not None:
                raise
            self.batch, n = 1, 1  # a batch axis declared dynamic that takes one image only
            out = self._run(torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0)))
        s = out.shape[2] // h if out.ndim == 4 else 0
        if s < 1 or tuple(out.shape) != (n, 3, s * h, s * w):
            raise CheckpointError(f'{self.path}: a {n}x3x{h}x{w} input gives {tuple(out.shape)}, not ({n}, 3, {h}s, '
                                  f'{w}s) for a whole scale s; {HOW_TO_EXPORT}')
        recorded = self.metadata.get('scale')
        if recorded is None:
            print(f'note: {self.path} has no metadata of this repo: assuming RGB in [0, 1] in and out, x{s} (measured '
                  f'on a {h}x{w} image)', file=sys.stderr)
        elif recorded != str(s):
            print(f'note: {self.path}: its metadata says scale {recorded!r}, but it upscales x{s} (measured on a '
                  f'{h}x{w} image); using x{s}', file=sys.stderr)
        return s

    def run(self, lr_imgs):
        """(N, 3, h, w) RGB in [0, 1] -> (N, 3, h s, w s) RGB in [0, 1], float32: the graph itself, in batches of the
        size its batch axis is fixed at, if it is (the last one padded with copies of its last image)."""
        if self.batch is None or len(lr_imgs) == self.batch:
            return self._run(lr_imgs)
        sr_imgs = []
        for start in range(0, len(lr_imgs), self.batch):
            batch = lr_imgs[start:start + self.batch]  # (k, 3, h, w), k <= self.batch
            padding = batch[-1:].expand(self.batch - len(batch), -1, -1, -1)
            sr_imgs.append(self._run(torch.cat([batch, padding]))[:len(batch)])
        return torch.cat(sr_imgs)

    def _run(self, lr_imgs):
        """One call of the session: (N, 3, h, w) in [0, 1] -> (N, 3, h s, w s) in [0, 1], float32. An allocation
        failure becomes the RuntimeError Upscaler retries with a smaller tile; another failure a CheckpointError."""
        feed = {self.input.name: lr_imgs.detach().float().contiguous().numpy().astype(INPUT_TYPES[self.input.type],
                                                                                       copy=False)}
        try:
            sr_imgs = self.session.run(None, feed)[0]
        except Exception as e:  # onnxruntime's own exception types
            if 'alloc' in str(e).lower():
                raise RuntimeError(f'out of memory in onnxruntime ({first_line(e)})') from None
            raise CheckpointError(f'{self.path}: onnxruntime fails on a {"x".join(map(str, lr_imgs.shape))} input '
                                  f'({first_line(e)}); {HOW_TO_EXPORT}') from None
        return torch.from_numpy(np.asarray(sr_imgs)).float()

    def forward(self, lr_imgs):  # (N, 3, h, w), ImageNet-normalised
        sr_imgs = self.run(convert_image(lr_imgs.cpu().float(), 'imagenet-norm', '[0, 1]'))  # (N, 3, h s, w s), [0, 1]
        return convert_image(sr_imgs, '[0, 1]', '[-1, 1]')  # (N, 3, h s, w s), in [-1, 1]


def _session(path, device):
    """An onnxruntime session of the .onnx at `path`, on the CPU (or CUDA, with onnxruntime-gpu), with the threads
    torch would use; a CheckpointError when onnxruntime is missing or cannot load the file."""
    ort = _require('onnxruntime', f'{path}: running an .onnx model needs onnxruntime: pip install onnxruntime')
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads torch would use, for a fair comparison
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    providers = ['CPUExecutionProvider']
    if torch.device(device).type == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers():
        providers.insert(0, 'CUDAExecutionProvider')
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime's own exception types: a missing file, not ONNX, an unsupported op
        raise CheckpointError(f'{path}: onnxruntime cannot load it ({first_line(e)}); {HOW_TO_EXPORT}') from None


def main(argv=None):
    parser = argparse.ArgumentParser(description='Export the generator of a checkpoint of this repo to ONNX: any '
                                                 'batch and image size, float32 RGB in [0, 1] in and out, BatchNorm '
                                                 'folded, checked against PyTorch with onnxruntime when installed. '
                                                 'Needs pip install onnx onnxscript onnxruntime.')
    parser.add_argument('checkpoint', help='a shipped model (weights/srresnet_x4.pt), or a last.pt or best.pt of '
                                           'train_srresnet.py or train_srgan.py')
    parser.add_argument('output', help='the .onnx file to write')
    parser.add_argument('--fp16', action='store_true',
                        help='the network in half precision: half the file, a little less exact; the input and '
                             'output stay float32')
    parser.add_argument('--live', action='store_true',
                        help='the trained weights themselves, not the moving average of a run with --ema-decay')
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT if it exists (never CHECKPOINT)')
    args = parser.parse_args(argv)
    plan = OutputPlan(reads=[args.checkpoint], overwrite=args.overwrite)
    plan.file(args.output, 'OUTPUT')  # never CHECKPOINT itself (even with --overwrite), nor an existing file without it
    if not args.output.lower().endswith('.onnx'):  # after the plan: an OUTPUT that is CHECKPOINT is said as such first
        raise OutputError(f'OUTPUT {args.output}: name it *.onnx (the generator as a PyTorch file: python '
                          f'checkpoints.py export {args.checkpoint} {args.output})')
    difference = export_onnx(args.checkpoint, args.output, average=not args.live, fp16=args.fp16)
    if difference is None:
        print(f'wrote {args.output} (not checked: onnxruntime is not installed; pip install onnxruntime to check and '
              f'run it)')
    else:
        print(f'wrote {args.output}; checked with onnxruntime on a 17x31 image: largest difference from PyTorch fp32 '
              f'{difference:.1e} on the [0, 1] scale')


if __name__ == '__main__':
    run_main(main)

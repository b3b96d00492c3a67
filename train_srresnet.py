"""
Train SRResNet (Ledig et al. 2017, section 3): the MSE-optimised generator, and SRGAN's starting point.

    python create_data_lists.py                 # the demo lists (or your own data, see its --help)
    python train_srresnet.py                    # the paper: 1e6 iterations of batch 16, 96x96 HR crops, x4

A quick try on a laptop CPU (a few minutes):

    python train_srresnet.py --iterations 200 --val-every 100 --output-dir runs/try

On N GPUs of one machine (DDP; the effective batch is N x --batch-size, so divide it to keep the paper's 16):

    torchrun --standalone --nproc_per_node=4 train_srresnet.py --batch-size 4

By the clock: after its first steps a run says how long --iterations will take here, and

    python train_srresnet.py --time-budget 10m --output-dir runs/try   # again with --resume auto: 10 more minutes

stops at a saved last.pt (exit code 0) when the budget is spent. Stop any time with Ctrl-C (or SIGTERM): the step in
progress finishes, last.pt is saved, and the exit code (130 or 143) says the run stopped early; continue with
`--resume auto`. With --deterministic, the same flags and --seed give the same bits. Outputs in --output-dir: last.pt,
best.pt (best validation PSNR), log.jsonl, samples/*.png, loss_curves.png, and tensorboard/ when TensorBoard is
installed.
"""

import inspect

import torch
import torch.nn.functional as F

from checkpoints import CheckpointError, generator_of, load_checkpoint
from models import SRResNet
from pictures import animate_run
from training import freeze_batchnorm, make_optimizer, prepare_model, setup_run, train_loop, training_argument_parser
from utils import UserError, number, run_main

# the loss between SR and HR pixels: the paper's MSE, or the L1 that EDSR (Lim et al. 2017) found to converge better
PIXEL_LOSSES = {'mse': F.mse_loss, 'l1': F.l1_loss}


def get_args(argv=None):
    parser = training_argument_parser(__doc__, output_dir='runs/srresnet', iterations=1_000_000, lr_decay_at=None)
    parser.add_argument('--freeze-bn-at', type=number(int, minimum=0), default=None,
                        help='from this iteration on, BatchNorm uses and keeps its running statistics (as in eval '
                             'mode) while the weights train on; default: never, as the paper; may be changed when '
                             'resuming')
    # the architecture (the paper's; fewer blocks make quick experiments and tests cheaper)
    parser.add_argument('--pixel-loss', choices=list(PIXEL_LOSSES), default='mse',
                        help="the loss between SR and HR pixels: mse (the paper's) or l1 (EDSR's, Lim et al. 2017; "
                             "not the paper's)")
    parser.add_argument('--n-blocks', type=number(int, minimum=1), default=16, help='residual blocks')
    parser.add_argument('--n-channels', type=number(int, minimum=1), default=64, help='channels of the residual blocks')
    parser.add_argument('--trunk-from', default=None, metavar='CHECKPOINT',
                        help='start a new run from the weights of another SRResNet of the same size (e.g. '
                             'weights/srresnet_x4.pt): at its scale, every tensor (fine-tuning it); at another scale, '
                             'every layer except the sub-pixel stages, whose number depends on the scale, and for a '
                             'larger scale its stages too, each extra one starting as a nearest-neighbour upsampling; '
                             'not used when resuming')
    return parser.parse_args(argv)


def train_step(model, criterion, optimizer, scaler, batch, amp_dtype):
    """One optimizer step on criterion(SR, HR): PIXEL_LOSSES['mse'], the paper's SRResNet loss, by default.
    batch: LR images (N, 3, 24, 24) ImageNet-normalised, HR images (N, 3, 96, 96) in [-1, 1].
    Returns {'loss': 0-dim}."""
    lr_imgs, hr_imgs = batch
    with torch.autocast(lr_imgs.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        sr_imgs = model(lr_imgs)  # (N, 3, 96, 96), in [-1, 1]
    loss = criterion(sr_imgs.float(), hr_imgs)  # in fp32 whatever the autocast dtype
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {'loss': loss.detach()}


def load_trunk(model, model_config, path):
    """Copy into `model` (an SRResNet of model_config) the weights of the SRResNet in the checkpoint at `path`.
    At the same scale, every tensor: a fine-tuning start. At another scale, the first convolution, the residual
    blocks, the convolution after them and the last convolution; the sub-pixel stages too when `model` has more of
    them (x8 from x4): then each extra stage starts as a nearest-neighbour x2 upsampling of the features
    (start_as_upsampling), so the new model starts as the old one followed by an upsampling, already above bicubic
    (README, Other scales), not from noise. With fewer stages (x2 from
    x4) the stages start at random. -> (tensors copied, what the sub-pixel stages start as: 'copied', 'grown' or
    'random')."""
    try:
        config, state_dict = generator_of(load_checkpoint(path, unsafe_flag=None), path)
    except CheckpointError as e:
        raise UserError(f'--trunk-from {e}') from None
    defaults = {name: p.default for name, p in inspect.signature(SRResNet).parameters.items()}
    config = {**defaults, **config}  # a config that leaves some out means SRResNet's defaults, as when it is loaded
    size = ('large_kernel_size', 'small_kernel_size', 'n_channels', 'n_blocks')
    if any(config.get(k) != model_config[k] for k in size):
        raise UserError(f'--trunk-from {path} is SRResNet({config}); its trunk fits only a model with its '
                        f'{", ".join(size)} (pass them, or another checkpoint)')
    if config['scaling_factor'] == model_config['scaling_factor']:
        model.load_state_dict(state_dict)  # strict: every tensor
        return len(state_dict), 'copied'
    grow = model_config['scaling_factor'] > config['scaling_factor']
    copied = {k: v for k, v in state_dict.items() if grow or not k.startswith('subpixel_convolutional_blocks.')}
    missing, unexpected = model.load_state_dict(copied, strict=False)
    assert not unexpected and all(k.startswith('subpixel_convolutional_blocks.') for k in missing), \
        (missing, unexpected)
    if grow:
        n_old = config['scaling_factor'].bit_length() - 1  # one x2 stage per doubling
        for stage in model.subpixel_convolutional_blocks[n_old:]:
            start_as_upsampling(stage)
    return len(copied), 'grown' if grow else 'random'


TRUNK_STAGES = {'copied': 'every tensor, at the same scale: a fine-tuning start',
                'grown': 'the extra sub-pixel stages start as a nearest-neighbour upsampling',
                'random': 'the sub-pixel stages start at random'}


@torch.no_grad()
def start_as_upsampling(stage):
    """Set a sub-pixel stage (conv to 4C channels, PixelShuffle x2, PReLU) to a nearest-neighbour x2 upsampling of
    its C input channels: PixelShuffle puts conv channel 4c + k at sub-pixel k of channel c, so the conv copies
    channel c into channels 4c..4c+3 (a centre tap of 1), and the PReLU's slope is 1 (the identity)."""
    conv = stage.conv
    n_channels, r2, k = conv.in_channels, conv.out_channels // conv.in_channels, conv.kernel_size[0]
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(n_channels):
        conv.weight[c * r2:(c + 1) * r2, c, k // 2, k // 2] = 1.0
    stage.prelu.weight.fill_(1.0)


def main(argv=None):
    args = get_args(argv)
    if args.animate is not None:  # make a run's progress animation, train nothing
        animate_run(args.animate, args.animate_to, args.overwrite)
        return
    run = setup_run(args, kind='srresnet')
    if run.nothing_to_do:
        return

    model_config = dict(large_kernel_size=9, small_kernel_size=3, n_channels=args.n_channels,
                        n_blocks=args.n_blocks, scaling_factor=args.scaling_factor)
    if run.checkpoint is not None and run.checkpoint['model_config'] != model_config:
        raise UserError(f'the run being resumed is SRResNet({run.checkpoint["model_config"]}); resume it with its '
                        f'--n-blocks and --n-channels, or start a new run in another --output-dir')
    model = SRResNet(**model_config)
    if args.trunk_from is not None and run.checkpoint is None:
        n_loaded, stages = load_trunk(model, model_config, args.trunk_from)
        if run.is_main:
            print(f'--trunk-from: {n_loaded} tensors from {args.trunk_from}; {TRUNK_STAGES[stages]}')
    model, model_ddp = prepare_model(model, run)
    optimizer = make_optimizer(model, run)
    state = run.new_state(model_config, models={'model': model}, optimizers={'optimizer': optimizer})
    if run.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        print(f'SRResNet {model_config}: {n_params / 1e6:.2f}M parameters; {run.describe()}')

    criterion = PIXEL_LOSSES[args.pixel_loss]

    # --freeze-bn-at: BatchNorm normalises a training batch with its own statistics but a test image with the running
    # averages, which the network never trains with; fixing them late in training optimises what is evaluated
    def step(lr_imgs, hr_imgs):
        model.train()
        if args.freeze_bn_at is not None and state.iteration >= args.freeze_bn_at:
            freeze_batchnorm(model)
        return train_step(model_ddp, criterion, optimizer, state.scaler, (lr_imgs, hr_imgs), run.amp_dtype)

    train_loop(run, state, step, sr_model=model)


if __name__ == '__main__':
    run_main(main)

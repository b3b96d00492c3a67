"""
Train SRGAN (Ledig et al. 2017, sections 2.2-2.3): the generator, initialised from a trained SRResNet, against a
discriminator, with the perceptual loss = content loss (VGG19 features) + 1e-3 x adversarial loss.

    python train_srresnet.py                    # first (the paper initialises SRGAN's generator from it)
    python train_srgan.py                       # the paper: 2e5 iterations, lr 1e-4 then 1e-5 from iteration 1e5

A quick try on a laptop CPU (the VGG19 ImageNet weights are downloaded once by torchvision; offline, download
them elsewhere and pass --vgg-weights PATH, or let --content-loss auto fall back to the paper's MSE variant):

    python train_srgan.py --srresnet-checkpoint runs/try/last.pt --iterations 200 --val-every 100 \\
                          --output-dir runs/try-srgan --content-loss auto

On N GPUs of one machine (DDP; the effective batch is N x --batch-size):

    torchrun --standalone --nproc_per_node=4 train_srgan.py --batch-size 4

The content loss compares VGG19 feature maps scaled by 1/12.75, as the paper does (so the MSE is 1/12.75^2, about
0.006, of the unscaled one; the original tutorial left this out, which made the adversarial term ~160x weaker
relative to it). Ctrl-C / SIGTERM save last.pt and exit; `--resume auto` continues. --time-budget 10m stops at a
saved last.pt (exit code 0), and the same command with `--resume auto` goes on for another 10 minutes.
"""

import contextlib
import dataclasses
import io
import socket
import warnings

import torch
import torch.nn.functional as F

from checkpoints import CheckpointError, generator_of, load_checkpoint
from models import Discriminator, Generator, TruncatedVGG19, VGGWeightsUnavailable
from pictures import animate_run
from training import make_optimizer, prepare_model, setup_run, train_loop, training_argument_parser
from utils import UserError, convert_image, number, run_main

VGG_FEATURE_SCALE = 1 / 12.75  # the paper rescales the VGG feature maps by this before the MSE
CONTENT_LAYERS = {'vgg54': (5, 4), 'vgg22': (2, 2)}  # phi(i, j): j-th conv (after ReLU) before the i-th max-pool
VGG_DOWNLOAD_TIMEOUT = 30  # seconds without a byte before the VGG19 download gives up


def get_args(argv=None):
    parser = training_argument_parser(__doc__, output_dir='runs/srgan', iterations=200_000, lr_decay_at=100_000)
    parser.add_argument('--srresnet-checkpoint', default='runs/srresnet/last.pt',
                        help="the SRResNet to start the generator from ('none': random weights, not the paper)")
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='accept an original-tutorial --srresnet-checkpoint (pickled objects: unpickling can '
                             'run code from the file, so only for files you trust)')
    parser.add_argument('--content-loss', default='vgg54', choices=['vgg54', 'vgg22', 'mse', 'auto'],
                        help="MSE of VGG19 phi(5,4) or phi(2,2) features, or of the pixels ('mse', the paper's "
                             "SRGAN-MSE); 'auto': vgg54 if the ImageNet VGG19 weights can be had, else mse, saying so "
                             "in one line (a resumed run keeps the loss it started with)")
    parser.add_argument('--vgg-weights', default='imagenet',
                        help="'imagenet' (torchvision's IMAGENET1K_V1, downloaded once), a local copy of that file, "
                             "or 'none': random weights, for tests only (an untrained VGG is no perceptual loss)")
    parser.add_argument('--adversarial-weight', type=number(float, minimum=0), default=1e-3,
                        help='weight of the adversarial loss')
    return parser.parse_args(argv)


@dataclasses.dataclass
class SRGANModels:
    """What one SRGAN step trains and uses. `discriminator` is the bare module (its forward on the SR images serves
    both steps), `discriminator_ddp` what trains it (the same module, or its DDP wrapper)."""
    generator: torch.nn.Module  # the Generator, or its DDP wrapper
    discriminator: torch.nn.Module
    discriminator_ddp: torch.nn.Module
    vgg: torch.nn.Module | None  # a TruncatedVGG19, or None for the pixel MSE content loss
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def content_loss_of(sr_imgs, hr_imgs, vgg):
    """The paper's content loss: the MSE of VGG19 feature maps scaled by 1/12.75 (or of the pixels, without vgg).
    sr_imgs, hr_imgs: (N, 3, 96, 96) in [-1, 1]."""
    if vgg is None:
        return F.mse_loss(sr_imgs.float(), hr_imgs)
    sr_features = vgg(convert_image(sr_imgs.float(), '[-1, 1]', 'imagenet-norm'))  # (N, 512, 6, 6) at vgg54
    with torch.no_grad():
        hr_features = vgg(convert_image(hr_imgs, '[-1, 1]', 'imagenet-norm'))
    return F.mse_loss(sr_features.float() * VGG_FEATURE_SCALE, hr_features.float() * VGG_FEATURE_SCALE)


def train_step(m, lr_imgs, hr_imgs, amp_dtype, adversarial_weight):
    """One generator step, then one discriminator step, on the models `m` (SRGANModels).
    lr_imgs: (N, 3, 24, 24) ImageNet-normalised, hr_imgs: (N, 3, 96, 96) in [-1, 1].

    D runs once on the SR images: the generator's loss and (with the SR images counted as detached) the
    discriminator's share its logits, as D is not updated in between. All forwards run first, in one autocast region,
    so that each trainable weight is cast to amp_dtype once."""
    with torch.autocast(lr_imgs.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        sr_imgs = m.generator(lr_imgs)  # (N, 3, 96, 96), in [-1, 1]
        content_loss = content_loss_of(sr_imgs, hr_imgs, m.vgg)
        sr_logits = m.discriminator(sr_imgs).float()  # (N,)
        hr_logits = m.discriminator_ddp(hr_imgs).float()  # (N,)

    # Generator: perceptual loss = content loss + 1e-3 x adversarial loss; gradients for G's parameters only,
    # and D's part of the graph is kept for the discriminator step
    adversarial_loss = F.binary_cross_entropy_with_logits(sr_logits, torch.ones_like(sr_logits))
    perceptual_loss = content_loss + adversarial_weight * adversarial_loss
    m.optimizer_g.zero_grad(set_to_none=True)
    m.scaler.scale(perceptual_loss).backward(inputs=list(m.generator.parameters()), retain_graph=True)
    m.scaler.step(m.optimizer_g)

    # Discriminator: BCE on real HR images vs the SR images (gradients for D's parameters only: the SR images count
    # as detached)
    discriminator_loss = (F.binary_cross_entropy_with_logits(hr_logits, torch.ones_like(hr_logits))
                          + F.binary_cross_entropy_with_logits(sr_logits, torch.zeros_like(sr_logits)))
    m.optimizer_d.zero_grad(set_to_none=True)
    m.scaler.scale(discriminator_loss).backward(inputs=list(m.discriminator.parameters()))
    m.scaler.step(m.optimizer_d)
    m.scaler.update()

    return {'content_loss': content_loss.detach(), 'adversarial_loss': adversarial_loss.detach(),
            'perceptual_loss': perceptual_loss.detach(), 'discriminator_loss': discriminator_loss.detach(),
            'D(HR)': torch.sigmoid(hr_logits.detach()).mean(), 'D(SR)': torch.sigmoid(sr_logits.detach()).mean()}


def build_vgg(content_loss, vgg_weights, run):
    """The frozen truncated VGG19 of the content loss (None for the pixel MSE), and the loss actually used:
    --content-loss auto becomes vgg54, or mse when the ImageNet weights cannot be had. -> (vgg or None, loss)."""
    if content_loss == 'mse':
        return None, 'mse'
    auto = content_loss == 'auto'
    content_loss = 'vgg54' if auto else content_loss
    weights = {'imagenet': 'imagenet', 'none': None}.get(vgg_weights, vgg_weights)
    if weights is None:
        warnings.warn('\n' + '!' * 100 + '\n--vgg-weights none: the content loss uses a VGG19 with RANDOM weights. '
                      'That is for tests only; it is no perceptual loss.\n' + '!' * 100, stacklevel=2)
    if run.world_size > 1 and not run.is_main:
        torch.distributed.barrier()  # rank 0 downloads the weights first
    # offline behind a firewall that drops packets, a download would wait minutes to connect: give up sooner
    default_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(VGG_DOWNLOAD_TIMEOUT)
    torch_messages = io.StringIO()  # torchvision's 'Downloading: ...' line: replayed unless auto falls back
    try:
        with contextlib.redirect_stdout(torch_messages) if auto else contextlib.nullcontext():
            vgg = TruncatedVGG19(*CONTENT_LAYERS[content_loss], weights=weights)
    except VGGWeightsUnavailable as e:
        reason = ' '.join(str(e).split())
        if not (auto and weights == 'imagenet'):  # a --vgg-weights PATH that fails is a mistake to fix, not to skip
            hint = '' if auto else ', or auto (vgg54 when the weights can be had, else mse)'
            raise UserError(f'{reason}; or train with --content-loss mse{hint}') from None
        if run.is_main:
            print(f"note: --content-loss auto: {reason}; training with the pixel MSE content loss instead (the "
                  f"paper's SRGAN-MSE variant)")
        return None, 'mse'
    finally:
        socket.setdefaulttimeout(default_timeout)
        if run.world_size > 1 and run.is_main:
            torch.distributed.barrier()
    if run.is_main:
        print(torch_messages.getvalue(), end='')
    return vgg.to(run.device, memory_format=run.memory_format), content_loss


def resumed_loss(args, config):
    """A resumed run keeps the loss it started with (the checkpoint's config records it): --content-loss auto
    becomes the run's; another --content-loss or --adversarial-weight would make the rest another experiment than
    the one the checkpoint describes, so it is refused. -> the run's content loss."""
    content_loss = config['content_loss'] if args.content_loss == 'auto' else args.content_loss
    for flag, value, was in (('--content-loss', content_loss, config.get('content_loss', content_loss)),
                             ('--adversarial-weight', args.adversarial_weight,
                              config.get('adversarial_weight', args.adversarial_weight))):
        if value != was:
            raise UserError(f'the run being resumed trains with {flag} {was}, not {value}; resume it with {flag} '
                            f'{was}, or start a new run in another --output-dir (--srresnet-checkpoint gives it the '
                            f'same start)')
    return content_loss


def generator_start(args, run):
    """-> (model_config, SRResNet weights or None): the generator's architecture and the weights it starts from:
    the run being resumed (restore_run loads them), the SRResNet checkpoint (the paper), or random ('none')."""
    if run.checkpoint is not None:
        return run.checkpoint['model_config'], None
    if args.srresnet_checkpoint.lower() == 'none':
        if run.is_main:
            print('--srresnet-checkpoint none: the generator starts from random weights (the paper starts from '
                  'SRResNet)')
        return dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16,
                    scaling_factor=args.scaling_factor), None
    try:
        srresnet = load_checkpoint(args.srresnet_checkpoint, allow_unsafe_pickle=args.unsafe_pickle)
        return generator_of(srresnet, args.srresnet_checkpoint)
    except CheckpointError as e:
        raise UserError(f'{e}' + ('; train one first with train_srresnet.py, or pass --srresnet-checkpoint PATH'
                                  if 'no such' in str(e) else '')) from None


def main(argv=None):
    args = get_args(argv)
    if args.animate is not None:  # make a run's progress animation, train nothing
        animate_run(args.animate, args.animate_to, args.overwrite)
        return
    run = setup_run(args, kind='srgan')
    if run.nothing_to_do:
        return
    content_loss = args.content_loss if run.checkpoint is None else resumed_loss(args, run.checkpoint['config'])

    model_config, srresnet_weights = generator_start(args, run)
    if model_config['scaling_factor'] != args.scaling_factor:
        raise UserError(f'the generator upscales x{model_config["scaling_factor"]}, not --scaling-factor '
                        f'{args.scaling_factor}')
    generator = Generator(**model_config)
    if srresnet_weights is not None:
        generator.initialize_with_srresnet(srresnet_weights)
    generator, generator_ddp = prepare_model(generator, run)
    discriminator, discriminator_ddp = prepare_model(Discriminator(), run)
    vgg, content_loss = build_vgg(content_loss, args.vgg_weights, run)
    run.resolved['content_loss'] = content_loss  # what the checkpoints record (eval.py names the row by it)
    optimizer_g, optimizer_d = make_optimizer(generator, run), make_optimizer(discriminator, run)
    state = run.new_state(model_config, models={'generator': generator, 'discriminator': discriminator},
                          optimizers={'optimizer_g': optimizer_g, 'optimizer_d': optimizer_d})
    models = SRGANModels(generator_ddp, discriminator, discriminator_ddp, vgg, optimizer_g, optimizer_d, state.scaler)
    if run.is_main:
        print(f'SRGAN: generator {model_config}, content loss {content_loss}; {run.describe()}')

    def step(lr_imgs, hr_imgs):
        generator.train()
        discriminator.train()
        return train_step(models, lr_imgs, hr_imgs, run.amp_dtype, args.adversarial_weight)

    train_loop(run, state, step, sr_model=generator.net)


if __name__ == '__main__':
    run_main(main)

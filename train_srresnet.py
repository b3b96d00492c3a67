"""
Train SRResNet (Ledig et al. 2017, section 3): the MSE-optimised generator, and SRGAN's starting point.

    python create_data_lists.py                 # the demo lists (or your own data, see its --help)
    python train_srresnet.py                    # the paper: 1e6 iterations of batch 16, 96x96 HR crops, x4

A quick try on a laptop CPU (a few minutes):

    python train_srresnet.py --iterations 200 --val-every 100 --output-dir runs/try

On N GPUs of one machine (DDP; the effective batch is N x --batch-size, so divide it to keep the paper's 16):

    torchrun --standalone --nproc_per_node=4 train_srresnet.py --batch-size 4

Stop any time with Ctrl-C (or SIGTERM): the step in progress finishes, last.pt is saved; continue with
`--resume auto`. Outputs in --output-dir: last.pt, best.pt (best validation PSNR), log.jsonl, samples/*.png,
loss_curves.png, and tensorboard/ when TensorBoard is installed.
"""

import torch
import torch.nn.functional as F

from models import SRResNet
from utils import (describe_run, freeze_batchnorm, make_grad_scaler, make_optimizer, make_train_loader, prepare_model,
                   setup_run, train_loop, training_argument_parser)


def get_args(argv=None):
    parser = training_argument_parser(__doc__, output_dir='runs/srresnet', iterations=1_000_000, val_every=5000)
    # the architecture (the paper's; fewer blocks make quick experiments and tests cheaper)
    parser.add_argument('--lr-decay-at', type=int, default=None,
                        help='multiply the lr by 0.1 from this iteration on (default: never, as the paper); may be '
                             'changed when resuming')
    parser.add_argument('--freeze-bn-at', type=int, default=None,
                        help='from this iteration on, BatchNorm uses and keeps its running statistics (as in eval '
                             'mode) while the weights train on; default: never, as the paper; may be changed when '
                             'resuming')
    parser.add_argument('--n-blocks', type=int, default=16, help='residual blocks')
    parser.add_argument('--n-channels', type=int, default=64, help='channels of the residual blocks')
    return parser.parse_args(argv)


def train_step(model, optimizer, scheduler, scaler, lr_imgs, hr_imgs, amp_dtype, freeze_bn=False):
    """One optimizer step on the MSE between SR and HR images. lr_imgs: (N, 3, 24, 24) ImageNet-normalised,
    hr_imgs: (N, 3, 96, 96) in [-1, 1]. freeze_bn: BatchNorm normalises with its running statistics and leaves
    them as they are. Returns {'loss': 0-dim tensor}."""
    model.train()
    if freeze_bn:
        freeze_batchnorm(model)
    with torch.autocast(lr_imgs.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        sr_imgs = model(lr_imgs)  # (N, 3, 96, 96), in [-1, 1]
    loss = F.mse_loss(sr_imgs.float(), hr_imgs)  # in fp32 whatever the autocast dtype
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {'loss': loss.detach()}


def main(argv=None):
    args = get_args(argv)
    run = setup_run(args, kind='srresnet')
    checkpoint = run.checkpoint

    model_config = dict(large_kernel_size=9, small_kernel_size=3, n_channels=args.n_channels,
                        n_blocks=args.n_blocks, scaling_factor=args.scaling_factor)
    if checkpoint is not None:
        model_config = checkpoint['model_config']  # the architecture is the checkpoint's
    model = SRResNet(**model_config)
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
    model, model_ddp = prepare_model(model, run, args)
    optimizer = make_optimizer(model, args, run)
    scaler = make_grad_scaler(run)
    # the lr of iteration t (counted from 0) is lr x lr_factor(t); computed from the flags, not stored, so a resumed
    # run can move --lr-decay-at
    def lr_factor(t):
        return 0.1 if args.lr_decay_at is not None and t >= args.lr_decay_at else 1.0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint['optimizer'])
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr'] = args.lr  # --lr may differ from the checkpoint's (setup_run notes it)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor, last_epoch=run.start_iteration - 1)

    # Why freeze BatchNorm late in training: BN normalises each training batch of 16 crops with that batch's own
    # statistics, but a test image with the running averages. The network never trains with the averages, and its
    # eval-mode output can swing by 1-3 dB on Set5 between checkpoints 1000 iterations apart even at a low lr.
    # Training on with the running statistics fixed removes that gap: what is optimised is what is evaluated.
    def frozen(t):  # iteration t, counted from 0 (the scheduler's last_epoch when step t starts)
        return args.freeze_bn_at is not None and t >= args.freeze_bn_at

    if run.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        print(f'SRResNet {model_config}: {n_params / 1e6:.2f}M parameters; {describe_run(run, args)}')

    def checkpoint_state():
        return {'kind': 'srresnet', 'model_config': model_config, 'model': model.state_dict(),
                'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict()}

    train_loop(args, run, make_train_loader(args, run),
               lambda lr_imgs, hr_imgs: train_step(model_ddp, optimizer, scheduler, scaler, lr_imgs, hr_imgs,
                                                  run.amp_dtype, freeze_bn=frozen(scheduler.last_epoch)),
               checkpoint_state, sr_model=model, optimizer=optimizer,
               best_psnr=checkpoint['best_psnr'] if checkpoint else float('-inf'))


if __name__ == '__main__':
    main()

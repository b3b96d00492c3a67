import contextlib
import importlib
import importlib.abc
import sys
import types
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

import models
import train_srgan
from models import (ConvolutionalBlock, Discriminator, Generator, ResidualBlock, SRResNet, SubPixelConvolutionalBlock,
                    TruncatedVGG19, VGGWeightsUnavailable)
from conftest import REPO, tutorial_srresnet_keys
from utils import convert_image


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_paper_architecture():
    assert n_params(SRResNet()) == 1_549_462
    assert n_params(Generator()) == 1_549_462
    assert n_params(Discriminator()) == 23_565_505


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_srresnet_shapes_and_range(scale):
    torch.manual_seed(0)
    model = SRResNet(n_blocks=2, scaling_factor=scale).eval()
    lr_imgs = torch.randn(2, 3, 12, 10) * 3  # ImageNet-normalised-like input, large values to push tanh
    sr_imgs = model(lr_imgs)
    assert sr_imgs.shape == (2, 3, 12 * scale, 10 * scale)
    assert sr_imgs.min() >= -1 and sr_imgs.max() <= 1
    assert len(model.subpixel_convolutional_blocks) == {2: 1, 4: 2, 8: 3}[scale]


@pytest.mark.parametrize('scale', [3, 1, 16, 2.5])
def test_srresnet_rejects_other_scales(scale):
    with pytest.raises(ValueError, match='2, 4 or 8'):
        SRResNet(scaling_factor=scale)


def test_blocks():
    x = torch.randn(1, 8, 10, 10)
    assert ConvolutionalBlock(8, 16, 3, stride=2, batch_norm=True, activation='LeakyReLU')(x).shape == (1, 16, 5, 5)
    assert isinstance(ConvolutionalBlock(8, 16, 3, activation='PReLU').conv_block[1], torch.nn.PReLU)
    assert ConvolutionalBlock(8, 16, 3, activation='leakyrelu').conv_block[1].negative_slope == 0.2
    tanh_out = ConvolutionalBlock(8, 3, 9, activation='TANH')(x * 100)
    assert tanh_out.abs().max() <= 1
    assert len(ConvolutionalBlock(8, 16, 3).conv_block) == 1  # no BN, no activation
    with pytest.raises(ValueError, match='activation'):
        ConvolutionalBlock(8, 16, 3, activation='relu')
    assert SubPixelConvolutionalBlock(3, 8, 2)(x).shape == (1, 8, 20, 20)
    assert SubPixelConvolutionalBlock(3, 8, 3)(x).shape == (1, 8, 30, 30)
    block = ResidualBlock(3, 8)
    torch.nn.init.zeros_(block.conv_block2.conv_block[1].weight)  # BN gamma 0: the block is the identity
    torch.nn.init.zeros_(block.conv_block2.conv_block[1].bias)
    assert torch.equal(block.eval()(x), x)


def test_tutorial_state_dicts_load_strictly():
    keys = tutorial_srresnet_keys()
    torch.manual_seed(0)
    state_dict = {k: torch.randn(s) if s else torch.tensor(7) for k, s in keys.items()}
    model = SRResNet()
    model.load_state_dict(state_dict, strict=True)
    assert torch.equal(model.conv_block3.conv_block[0].bias, state_dict['conv_block3.conv_block.0.bias'])
    generator = Generator()
    generator.load_state_dict({f'net.{k}': v for k, v in state_dict.items()}, strict=True)
    assert torch.equal(generator.net.conv_block1.conv_block[1].weight, state_dict['conv_block1.conv_block.1.weight'])



def tutorial_srgan_step(generator, discriminator, vgg, lr_imgs, hr_imgs, adversarial_weight):
    """The tutorial's SRGAN step (fp32, VGG features scaled as the paper), D running on the SR images twice, without
    the updates: returns the generator's gradients (and the losses); the discriminator's are left in .grad."""
    sr_imgs = generator(lr_imgs)
    content_loss = F.mse_loss(vgg(convert_image(sr_imgs, '[-1, 1]', 'imagenet-norm')) / 12.75,
                              vgg(convert_image(hr_imgs, '[-1, 1]', 'imagenet-norm')).detach() / 12.75)
    discriminator.requires_grad_(False)
    sr_logits = discriminator(sr_imgs)
    discriminator.requires_grad_(True)
    adversarial_loss = F.binary_cross_entropy_with_logits(sr_logits, torch.ones_like(sr_logits))
    (content_loss + adversarial_weight * adversarial_loss).backward()
    generator_grads = [p.grad.clone() for p in generator.parameters()]
    hr_logits, sr_logits = discriminator(hr_imgs), discriminator(sr_imgs.detach())
    discriminator_loss = (F.binary_cross_entropy_with_logits(hr_logits, torch.ones_like(hr_logits))
                          + F.binary_cross_entropy_with_logits(sr_logits, torch.zeros_like(sr_logits)))
    discriminator_loss.backward()
    return generator_grads, (content_loss, adversarial_loss, discriminator_loss)


def test_srgan_step_has_the_tutorials_gradients_with_one_discriminator_forward_on_sr():
    """train_srgan.train_step runs D on the SR images once for both steps: the same losses and gradients as the
    tutorial's step, which runs it twice."""
    torch.manual_seed(0)
    generator, discriminator = Generator(n_blocks=2), Discriminator(n_blocks=4, fc_size=16)
    vgg = TruncatedVGG19(2, 2, weights=None)
    lr_imgs, hr_imgs = torch.randn(3, 3, 12, 12), torch.rand(3, 3, 48, 48) * 2 - 1
    generator_ref, discriminator_ref = Generator(n_blocks=2), Discriminator(n_blocks=4, fc_size=16)
    generator_ref.load_state_dict(generator.state_dict())
    discriminator_ref.load_state_dict(discriminator.state_dict())
    expected_grads, expected_losses = tutorial_srgan_step(generator_ref, discriminator_ref, vgg, lr_imgs, hr_imgs, 0.1)

    d_forwards = []
    discriminator.register_forward_hook(lambda *_: d_forwards.append(1))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.0) for m in (generator, discriminator)]  # grads stay to compare
    srgan = train_srgan.SRGANModels(generator, discriminator, discriminator, vgg, *optimizers,
                                    torch.amp.GradScaler('cpu', enabled=False))
    values = train_srgan.train_step(srgan, lr_imgs, hr_imgs, None, 0.1)
    assert len(d_forwards) == 2  # SR once (both steps), HR once
    for key, expected in zip(('content_loss', 'adversarial_loss', 'discriminator_loss'), expected_losses):
        torch.testing.assert_close(values[key], expected.detach(), atol=0, rtol=1e-6, msg=key)
    for (name, p), expected in zip(generator.named_parameters(), expected_grads):
        torch.testing.assert_close(p.grad, expected, atol=1e-8, rtol=1e-4, msg=name)
    for (name, p), p_ref in zip(discriminator.named_parameters(), discriminator_ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-8, rtol=1e-4, msg=name)


def test_discriminator_keys_and_inputs():
    d = Discriminator()
    keys = d.state_dict()
    assert keys['conv_blocks.0.conv_block.0.weight'].shape == (64, 3, 3, 3)
    assert 'conv_blocks.0.conv_block.1.weight' not in keys  # no BN in the first block; LeakyReLU has no weights
    assert keys['conv_blocks.1.conv_block.1.running_mean'].shape == (64,)
    assert keys['conv_blocks.7.conv_block.0.weight'].shape == (512, 512, 3, 3)
    assert keys['fc1.weight'].shape == (1024, 512 * 6 * 6) and keys['fc2.weight'].shape == (1, 1024)
    d.eval()
    for size in [(96, 96), (128, 96), (200, 333)]:
        assert d(torch.randn(2, 3, *size)).shape == (2,)


def test_discriminator_honours_fc_size():
    d = Discriminator(n_channels=8, n_blocks=4, fc_size=32).eval()
    assert d.fc1.out_features == 32 and d.fc2.in_features == 32
    assert d(torch.randn(3, 3, 96, 96)).shape == (3,)


@pytest.mark.parametrize('i, j, channels, reduction, layer_index', [(5, 4, 512, 16, 35), (2, 2, 128, 2, 8),
                                                                     (1, 1, 64, 1, 1)])
def test_truncated_vgg19_layers(i, j, channels, reduction, layer_index):
    vgg = TruncatedVGG19(i, j, weights=None)
    assert len(vgg.truncated_vgg19) == layer_index + 1
    assert isinstance(vgg.truncated_vgg19[-1], torch.nn.ReLU)  # features after the activation
    assert isinstance(vgg.truncated_vgg19[-2], torch.nn.Conv2d)
    assert vgg(torch.randn(1, 3, 96, 96)).shape == (1, channels, 96 // reduction, 96 // reduction)


def test_truncated_vgg19_invalid_choice_lists_valid_ones():
    with pytest.raises(ValueError, match=r'\(5, 4\)') as e:
        TruncatedVGG19(2, 3, weights=None)
    assert '(2, 2)' in str(e.value) and '(3, 4)' in str(e.value)


def test_truncated_vgg19_is_frozen_and_stays_in_eval():
    vgg = TruncatedVGG19(2, 2, weights=None)
    parent = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), vgg)
    parent.train()
    assert parent.training and not vgg.training
    assert all(not p.requires_grad for p in vgg.parameters())
    parent(torch.randn(1, 3, 32, 32)).mean().backward()
    assert all(p.grad is None for p in vgg.parameters())
    assert parent[0].weight.grad is not None  # gradients still flow through the VGG to its input


def test_truncated_vgg19_from_local_file(tmp_path):
    torch.manual_seed(1)
    full = torchvision.models.vgg19()
    path = tmp_path / 'vgg19.pth'
    torch.save(full.state_dict(), path)  # the layout of torchvision's vgg19-dcbb9e9d.pth
    vgg = TruncatedVGG19(5, 4, weights=str(path))
    assert torch.equal(vgg.truncated_vgg19[34].weight, full.features[34].weight)


def test_truncated_vgg19_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(torchvision.models.VGG19_Weights.IMAGENET1K_V1.__class__, 'get_state_dict', offline)
    with pytest.raises(VGGWeightsUnavailable, match='--vgg-weights'):
        TruncatedVGG19()
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(VGGWeightsUnavailable, match='--vgg-weights'):
        TruncatedVGG19(weights=str(bad))
    torch.save({'conv.weight': torch.zeros(1)}, tmp_path / 'other.pth')
    with pytest.raises(VGGWeightsUnavailable):
        TruncatedVGG19(weights=str(tmp_path / 'other.pth'))


def test_srresnet_forward_reads_as_the_paper_and_models_imports_no_torchvision():
    """The paper's model is plain modules (nn.PReLU, nn.PixelShuffle, the 9x9 tail after the shuffle); torchvision
    is imported only where the VGG is built, so inference does not pay for it."""
    model = SRResNet(n_blocks=1)
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert len(prelus) == 4 and all(type(m) is torch.nn.PReLU for m in prelus)  # the first layer's, 1 block's, 2 x2's
    assert isinstance(model.subpixel_convolutional_blocks[-1].pixel_shuffle, torch.nn.PixelShuffle)
    assert model.scaling_factor == 4 and SRResNet(n_blocks=1, scaling_factor=8).scaling_factor == 8
    assert models.VGG19_WEIGHTS_URL == torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    assert imports_of_a_fresh_import(['super_resolve', 'eval'], 'torchvision') == []
    assert imports_of_a_fresh_import(['torchvision.models'], 'torchvision') == ['torchvision']  # it sees one


class _Refuse(importlib.abc.MetaPathFinder):
    """Refuses every import of `package`, noting the names asked for."""

    def __init__(self, package):
        self.package, self.asked = package, []

    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == self.package:
            self.asked.append(name)
            raise ImportError(f'{name}: refused by the test')
        return None


def _to_import_again(modules, package):
    """The names of the modules that must leave sys.modules for a fresh import to show what imports `package`: the
    repo's own, `package`'s, and any other (torch's aside) that holds one of these or a part of one, so imported it."""
    leaving = {name for name, module in modules.items()
               if name.split('.')[0] == package or Path(getattr(module, '__file__', None) or '/').parent == REPO}
    others = [(name, module) for name, module in modules.items() if name not in leaving and hasattr(module, '__dict__')
              and name.split('.')[0] != 'torch' and not name.startswith('__')]
    while True:
        more = {name for name, module in others if name not in leaving and _holds(module, leaving)}
        if not more:
            return leaving
        leaving |= more


def _holds(module, names):
    """Whether a module's globals hold one of the modules `names`, or a function or class of one."""
    for value in list(vars(module).values()):
        with contextlib.suppress(Exception):  # objects that fail on attribute access hold nothing of them
            if (value.__name__ if isinstance(value, types.ModuleType) else value.__module__) in names:
                return True
    return False


def imports_of_a_fresh_import(names, package):
    """The imports of `package` that importing the modules `names` in a new interpreter makes, found in this process
    (without the ~7 s a new one spends importing torch): the modules that would import it again leave sys.modules,
    `names` are imported afresh with `package` refused, and sys.modules is put back as it was."""
    saved = dict(sys.modules)
    for name in _to_import_again(saved, package):
        del sys.modules[name]
    refuse = _Refuse(package)
    sys.meta_path.insert(0, refuse)
    try:
        for name in names:
            with contextlib.suppress(ImportError):  # refused: noted
                importlib.import_module(name)
            assert sys.modules.get(name) is not saved.get(name)  # run again, not found in sys.modules
    finally:
        sys.meta_path.remove(refuse)
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]
        sys.modules.update(saved)
    return refuse.asked

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

import train_srgan
from models import (ConvolutionalBlock, Discriminator, Generator, PReLU, ResidualBlock, SRResNet,
                    SubPixelConvolutionalBlock, TruncatedVGG19, VGGWeightsUnavailable, conv_before_pixel_shuffle)
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


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('slope', [0.25, -0.6])
def test_single_slope_prelu_is_nn_prelu(dtype, slope):
    """models.PReLU's own backward (the CPU path) against nn.PReLU: output, input gradient, slope gradient, in fp32
    and under bf16 autocast, channels_last, with exact zeros in the input (where the gradient is the slope's)."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    x[0, :, 0, :] = 0
    results = []
    for prelu in (torch.nn.PReLU(), PReLU()):
        prelu.weight.data.fill_(slope)
        inputs = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            output = prelu(inputs)
        assert output.dtype == dtype and output.is_contiguous(memory_format=torch.channels_last)
        grad = torch.linspace(-1, 1, output.numel()).view(output.shape).to(dtype)
        output.backward(grad)
        assert prelu.weight.grad.dtype == torch.float32 and prelu.weight.grad.shape == (1,)
        results.append((output, inputs.grad, prelu.weight.grad, output.grad_fn.name()))
    (theirs, their_grad, their_slope_grad, _), (ours, our_grad, our_slope_grad, our_grad_fn) = results
    assert 'SingleSlopePReLU' in our_grad_fn  # the fast path ran
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)  # bf16 too: the same slope, rounded the same way
    torch.testing.assert_close(our_grad, their_grad, atol=0, rtol=0)
    rtol = 1e-5 if dtype == torch.float32 else 2 ** -7  # bf16: summed in fp32, rounded to bf16 as nn.PReLU does
    torch.testing.assert_close(our_slope_grad, their_slope_grad, atol=0, rtol=rtol)
    expected = (grad.double() * x.clamp(max=0).to(dtype).double()).sum()  # the slope's gradient, summed exactly
    torch.testing.assert_close(our_slope_grad.double(), expected.view(1), atol=0, rtol=rtol)


def test_prelu_keeps_nn_prelu_where_the_fast_path_does_not_apply():
    per_channel = PReLU(8)
    per_channel.weight.data.uniform_(-1, 1)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    output = per_channel(x)
    assert 'SingleSlopePReLU' not in output.grad_fn.name()
    torch.testing.assert_close(output, F.prelu(x, per_channel.weight), atol=0, rtol=0)
    assert set(PReLU().state_dict()) == {'weight'}  # the tutorial's key, as nn.PReLU
    with torch.no_grad():  # inference: no graph, same values
        assert torch.equal(PReLU()(x), torch.nn.PReLU()(x))


def tutorial_srresnet_keys(n_blocks=16, n_subpixel=2):
    """The original tutorial's SRResNet state_dict layout, written out by hand: {key: shape}."""
    keys = {'conv_block1.conv_block.0.weight': (64, 3, 9, 9), 'conv_block1.conv_block.0.bias': (64,),
            'conv_block1.conv_block.1.weight': (1,)}
    bn = {'weight': (64,), 'bias': (64,), 'running_mean': (64,), 'running_var': (64,), 'num_batches_tracked': ()}
    for b in range(n_blocks):
        for c in (1, 2):
            keys[f'residual_blocks.{b}.conv_block{c}.conv_block.0.weight'] = (64, 64, 3, 3)
            keys[f'residual_blocks.{b}.conv_block{c}.conv_block.0.bias'] = (64,)
            keys.update({f'residual_blocks.{b}.conv_block{c}.conv_block.1.{k}': s for k, s in bn.items()})
        keys[f'residual_blocks.{b}.conv_block1.conv_block.2.weight'] = (1,)  # PReLU
    keys['conv_block2.conv_block.0.weight'] = (64, 64, 3, 3)
    keys['conv_block2.conv_block.0.bias'] = (64,)
    keys.update({f'conv_block2.conv_block.1.{k}': s for k, s in bn.items()})
    for b in range(n_subpixel):
        keys[f'subpixel_convolutional_blocks.{b}.conv.weight'] = (256, 64, 3, 3)
        keys[f'subpixel_convolutional_blocks.{b}.conv.bias'] = (256,)
        keys[f'subpixel_convolutional_blocks.{b}.prelu.weight'] = (1,)
    keys['conv_block3.conv_block.0.weight'] = (3, 64, 9, 9)
    keys['conv_block3.conv_block.0.bias'] = (3,)
    return keys


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



def plain_srresnet_forward(model, lr_imgs):
    """SRResNet as the tutorial composes it: the last 9x9 convolution after the last pixel shuffle."""
    output = model.conv_block1(lr_imgs)
    output = model.conv_block2(model.residual_blocks(output)) + output
    return model.conv_block3(model.subpixel_convolutional_blocks(output))


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_srresnet_forward_is_the_plain_composition_with_the_same_gradients(scale):
    torch.manual_seed(scale)
    model = SRResNet(n_channels=16, n_blocks=1, scaling_factor=scale)
    lr_imgs = torch.randn(2, 3, 7, 6)
    target = torch.rand(2, 3, 7 * scale, 6 * scale) * 2 - 1
    grads = []
    for forward in (model, lambda x: plain_srresnet_forward(model, x)):
        model.zero_grad()
        sr_imgs = forward(lr_imgs)
        torch.nn.functional.mse_loss(sr_imgs, target).backward()
        grads.append((sr_imgs.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (ours, our_grads), (plain, plain_grads) = grads
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=0)
    assert our_grads.keys() == plain_grads.keys()
    for key in our_grads:  # the 9x9 weight and bias included: the derived weight trains the stored one
        torch.testing.assert_close(our_grads[key], plain_grads[key], atol=1e-6, rtol=1e-5, msg=key)
    assert our_grads['conv_block3.conv_block.0.weight'].abs().sum() > 0
    # the parameters and their keys are the tutorial's: nothing derived is stored
    assert set(model.state_dict()) == set(tutorial_srresnet_keys(n_blocks=1, n_subpixel={2: 1, 4: 2, 8: 3}[scale]))
    assert {k: tuple(v.shape) for k, v in SRResNet(scaling_factor=scale).state_dict().items()} == \
        tutorial_srresnet_keys(n_subpixel={2: 1, 4: 2, 8: 3}[scale])


def test_srresnet_forward_with_per_channel_prelu_keeps_the_plain_order():
    torch.manual_seed(0)
    model = SRResNet(n_channels=8, n_blocks=1, scaling_factor=2)
    model.subpixel_convolutional_blocks[-1].prelu = torch.nn.PReLU(8, init=0.0)  # does not commute with the shuffle
    model.subpixel_convolutional_blocks[-1].prelu.weight.data.uniform_(-1, 1)
    lr_imgs = torch.randn(1, 3, 6, 5)
    torch.testing.assert_close(model(lr_imgs), plain_srresnet_forward(model, lr_imgs), atol=0, rtol=0)


@pytest.mark.parametrize('kernel_size, r', [(9, 2), (9, 3), (3, 2), (5, 4), (1, 2)])
def test_conv_before_pixel_shuffle(kernel_size, r):
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 5, kernel_size, kernel_size), torch.randn(3)
    y = torch.randn(2, 5 * r * r, 6, 7, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pixel_shuffle(y, r), weight.double(), bias.double(),
                                          padding=kernel_size // 2)
    folded_weight, folded_bias = conv_before_pixel_shuffle(weight.double(), bias.double(), r)
    assert folded_weight.shape[:2] == (3 * r * r, 5 * r * r)
    assert folded_weight.shape[-1] == 2 * -(-(kernel_size // 2) // r) + 1  # 9x9 at x2: 5x5
    output = torch.nn.functional.conv2d(y, folded_weight, folded_bias, padding=folded_weight.shape[-1] // 2)
    torch.testing.assert_close(torch.nn.functional.pixel_shuffle(output, r), expected, atol=1e-10, rtol=0)


def test_srresnet_trains_after_inference_mode():
    """The tail's index tables are cached: a first forward under inference_mode (eval.py, validation) must not
    leave an inference tensor behind that a later training step cannot save for backward (a CI failure once)."""
    import models
    models._conv_before_pixel_shuffle_index.cache_clear()
    model = SRResNet(n_blocks=1)
    with torch.inference_mode():
        model.eval()(torch.randn(1, 3, 8, 8))
    model.train()(torch.randn(2, 3, 8, 8)).square().mean().backward()
    assert model.conv_block3.conv_block[0].weight.grad.abs().sum() > 0


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
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(o, [10]) for o in optimizers]
    values = train_srgan.train_step(generator, discriminator, discriminator, vgg, *optimizers, *schedulers,
                                    torch.amp.GradScaler('cpu', enabled=False), lr_imgs, hr_imgs, None, 0.1)
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

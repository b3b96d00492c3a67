"""speedups.py: each rewrite computes the same function as the paper's model in models.py, keeps its state_dict keys,
and leaves the weights it was given alone."""

import copy

import pytest
import torch
import torch.nn.functional as F

import speedups
from models import Generator, SRResNet
from speedups import SingleSlopePReLU, conv_before_pixel_shuffle
from conftest import tutorial_srresnet_keys


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('slope', [0.25, -0.6])
def test_single_slope_prelu_is_nn_prelu(dtype, slope):
    """SingleSlopePReLU's own backward (the CPU path) against nn.PReLU: output, input gradient, slope gradient, in fp32
    and under bf16 autocast, channels_last, with exact zeros in the input (where the gradient is the slope's)."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    x[0, :, 0, :] = 0
    results = []
    for prelu in (torch.nn.PReLU(), SingleSlopePReLU()):
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
    per_channel = SingleSlopePReLU(8)
    per_channel.weight.data.uniform_(-1, 1)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    output = per_channel(x)
    assert 'SingleSlopePReLU' not in output.grad_fn.name()
    torch.testing.assert_close(output, F.prelu(x, per_channel.weight), atol=0, rtol=0)
    assert set(SingleSlopePReLU().state_dict()) == {'weight'}  # the tutorial's key, as nn.PReLU
    with torch.no_grad():  # inference: no graph, same values
        assert torch.equal(SingleSlopePReLU()(x), torch.nn.PReLU()(x))


def plain_srresnet_forward(model, lr_imgs):
    """SRResNet as the tutorial composes it: the last 9x9 convolution after the last pixel shuffle."""
    output = model.conv_block1(lr_imgs)
    output = model.conv_block2(model.residual_blocks(output)) + output
    return model.conv_block3(model.subpixel_convolutional_blocks(output))


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_for_training_is_the_plain_composition_with_the_same_gradients(scale):
    torch.manual_seed(scale)
    model = SRResNet(n_channels=16, n_blocks=1, scaling_factor=scale)
    lr_imgs = torch.randn(2, 3, 7, 6)
    target = torch.rand(2, 3, 7 * scale, 6 * scale) * 2 - 1
    grads = []
    fast = speedups.for_training(copy.deepcopy(model))
    assert isinstance(fast.conv_block3, speedups.TailBeforeShuffle)  # the rewrite is in place
    for forward in (fast, lambda x: plain_srresnet_forward(model, x)):
        fast.zero_grad()
        model.zero_grad()
        sr_imgs = forward(lr_imgs)
        torch.nn.functional.mse_loss(sr_imgs, target).backward()
        grads.append((sr_imgs.detach(), {k: p.grad.clone() for k, p in (fast if forward is fast else model)
                                         .named_parameters()}))
    (ours, our_grads), (plain, plain_grads) = grads
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=0)
    assert our_grads.keys() == plain_grads.keys()
    for key in our_grads:  # the 9x9 weight and bias included: the derived weight trains the stored one
        torch.testing.assert_close(our_grads[key], plain_grads[key], atol=1e-6, rtol=1e-5, msg=key)
    assert our_grads['conv_block3.conv_block.0.weight'].abs().sum() > 0
    # the parameters and their keys are the tutorial's: nothing derived is stored
    assert set(fast.state_dict()) == set(tutorial_srresnet_keys(n_blocks=1, n_subpixel={2: 1, 4: 2, 8: 3}[scale]))
    assert {k: tuple(v.shape) for k, v in SRResNet(scaling_factor=scale).state_dict().items()} == \
        tutorial_srresnet_keys(n_subpixel={2: 1, 4: 2, 8: 3}[scale])


def test_for_training_leaves_a_per_channel_prelu_tail_in_the_plain_order():
    torch.manual_seed(0)
    model = SRResNet(n_channels=8, n_blocks=1, scaling_factor=2)
    model.subpixel_convolutional_blocks[-1].prelu = torch.nn.PReLU(8, init=0.0)  # does not commute with the shuffle
    model.subpixel_convolutional_blocks[-1].prelu.weight.data.uniform_(-1, 1)
    speedups.for_training(model)
    assert not isinstance(model.conv_block3, speedups.TailBeforeShuffle)
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
    speedups._conv_before_pixel_shuffle_index.cache_clear()
    model = speedups.for_training(SRResNet(n_blocks=1))
    with torch.inference_mode():
        model.eval()(torch.randn(1, 3, 8, 8))
    model.train()(torch.randn(2, 3, 8, 8)).square().mean().backward()
    assert model.conv_block3.conv_block[0].weight.grad.abs().sum() > 0




def test_for_training_swaps_every_single_slope_prelu_and_keeps_the_parameters():
    generator = Generator(n_blocks=2)
    parameters = dict(generator.named_parameters())
    keys = set(generator.state_dict())
    speedups.for_training(generator)
    prelus = [m for m in generator.modules() if isinstance(m, torch.nn.PReLU)]
    assert len(prelus) == 1 + 2 + 2 and all(isinstance(m, SingleSlopePReLU) for m in prelus)
    assert set(generator.state_dict()) == keys
    assert all(p is parameters[name] for name, p in generator.named_parameters())  # optimizers see the same ones


@pytest.mark.parametrize('scale', [2, 4])
def test_for_inference_is_the_same_function_on_a_copy(scale):
    torch.manual_seed(0)
    model = SRResNet(n_channels=16, n_blocks=2, scaling_factor=scale)
    for module in model.modules():  # BatchNorm statistics that are not the identity, so folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = speedups.for_inference(model)
    lr_imgs = torch.randn(2, 3, 10, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(lr_imgs), model(lr_imgs), atol=2e-5, rtol=0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # folded
    # the tail before the shuffle, computed once; on the CPU padded with zero filters to 16 outputs, 12 used
    assert fast.conv_block3[0].weight.shape == (16, 16 * 4, 5, 5)
    assert isinstance(fast.conv_block3[1], speedups.FirstChannels) and fast.conv_block3[1].n == 3 * 4
    assert not fast.conv_block3[0].weight[12:].any() and not fast.conv_block3[0].bias[12:].any()
    # the model it was given is untouched: same modules, same weights
    assert isinstance(model.conv_block3.conv_block[0], torch.nn.Conv2d) and len(model.conv_block3.conv_block) == 2
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert len(prelus) == {2: 4, 4: 5}[scale] and all(type(m) is torch.nn.PReLU for m in prelus)


def test_for_inference_of_a_training_model_is_the_same_function():
    """Validation rewrites the model being trained (already speedups.for_training'd) for inference."""
    torch.manual_seed(0)
    model = speedups.for_training(SRResNet(n_channels=8, n_blocks=1)).eval()
    lr_imgs = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(speedups.for_inference(model)(lr_imgs), model(lr_imgs), atol=2e-5, rtol=0)
    assert isinstance(model.conv_block3, speedups.TailBeforeShuffle)  # still the training model


def _srresnet_with_batchnorm_statistics(seed=0, **config):
    torch.manual_seed(seed)
    model = SRResNet(**config)
    for module in model.modules():  # BatchNorm statistics that are not the identity, so folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    for prelu in (m for m in model.modules() if isinstance(m, torch.nn.PReLU)):
        prelu.weight.data.uniform_(-0.6, 0.6)  # negative slopes too: leaky_relu_ must take them
    return model.eval()


def test_for_inference_computes_in_place_and_leaves_its_input_alone():
    """Each piece of the inference rewrite against the module it replaces, exactly: the in-place PReLU (one
    slope, read once) and residual addition, and the tail padded to 16 outputs; and a forward that works in place
    inside never writes into the images it is given."""
    model = _srresnet_with_batchnorm_statistics(n_channels=16, n_blocks=2, scaling_factor=4)
    fast = speedups.for_inference(model)
    prelus = [m for m in fast.modules() if isinstance(m, speedups.InferencePReLU)]
    assert len(prelus) == 1 + 2 + 2 and not any(isinstance(m, torch.nn.PReLU) for m in fast.modules())
    assert all(isinstance(block, speedups.InplaceResidualBlock) for block in fast.residual_blocks)
    lr_imgs = torch.randn(2, 3, 11, 9).contiguous(memory_format=torch.channels_last)
    before = lr_imgs.clone()
    with torch.inference_mode():
        sr_imgs = fast(lr_imgs)
        unpadded = copy.deepcopy(fast)
        unpadded.conv_block3 = speedups.TailBeforeShuffle(model.conv_block3, 2).fixed(pad_to=1)
        torch.testing.assert_close(sr_imgs, unpadded(lr_imgs), atol=1e-6, rtol=0)  # the zero filters change nothing
        torch.testing.assert_close(sr_imgs, model(lr_imgs), atol=2e-5, rtol=0)
    assert torch.equal(lr_imgs, before)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('slope', [0.25, -0.6, 0.1])
def test_inference_prelu_is_nn_prelu_in_place(dtype, slope):
    torch.manual_seed(0)
    prelu = torch.nn.PReLU(init=slope)
    fast = speedups.InferencePReLU(prelu)
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    x[0, :, 0] = 0
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        expected = prelu(x)
        inputs = x.to(dtype)
        output = fast(inputs)
    assert output.dtype == dtype and output.data_ptr() == inputs.data_ptr()  # in place
    torch.testing.assert_close(output, expected, atol=0, rtol=0)  # the slope rounded to bf16 as F.prelu does
    with torch.enable_grad():  # a gradient wanted: out of place, and still the same function
        inputs = x.clone().requires_grad_()
        output = fast(inputs)
        output.sum().backward()
    torch.testing.assert_close(output, F.prelu(x, prelu.weight), atol=0, rtol=0)
    assert torch.equal(inputs.grad, torch.where(x > 0, 1.0, torch.tensor(slope).float()))
    assert set(fast.state_dict()) == {'weight'}


def test_inplace_residual_block_is_the_residual_block():
    from models import ResidualBlock
    torch.manual_seed(0)
    block = ResidualBlock(n_channels=8).eval()
    x = torch.randn(2, 8, 7, 6)
    with torch.no_grad():
        expected = block(x)
        fast = speedups.InplaceResidualBlock(block)
        torch.testing.assert_close(fast(x), expected, atol=0, rtol=0)
    assert set(fast.state_dict()) == set(block.state_dict())
    inputs = x.clone().requires_grad_()
    fast(inputs).sum().backward()  # with a gradient wanted it adds out of place, so autograd still works
    assert inputs.grad is not None

"""Networks and EMA."""

import pytest
import torch

from sbdiff import SbdiffError
from sbdiff.nets import TimeEmbedding, TimeMLP, UNet, make_ema


def test_time_mlp_shapes_and_time_dependence():
    net = TimeMLP(3, hidden=32, blocks=2, time_dim=16)
    torch.nn.init.normal_(net.out[-1].weight)  # the output layer starts at zero
    x = torch.randn(5, 3)
    assert net(x, torch.rand(5)).shape == (5, 3)
    assert net(x, 0.5).shape == (5, 3)
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))
    assert TimeEmbedding(15)(torch.rand(4)).shape == (4, 15)


def test_zero_initialised_output():
    net = TimeMLP(2, hidden=16, blocks=1)
    assert torch.all(net(torch.randn(4, 2), 0.3) == 0)


def test_ema_tracks_the_average():
    net = torch.nn.Linear(2, 1)
    ema = make_ema(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # first update copies
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update_parameters(net)
    assert torch.allclose(ema.module.weight, torch.full_like(net.weight, 2.0))


@pytest.mark.parametrize("shape, mult, attention", [((1, 8, 8), (1, 2), False), ((3, 8, 4), (1, 2, 2), True),
                                                     ((2, 5, 7), (1,), False)])
def test_unet_flat_shapes_zero_init_and_time_dependence(shape, mult, attention):
    torch.manual_seed(0)
    net = UNet(shape, channels=8, channel_mult=mult, res_blocks=1, attention=attention, time_dim=16)
    D = shape[0] * shape[1] * shape[2]
    x = torch.randn(5, D)
    assert net(x, torch.rand(5)).shape == (5, D)
    assert torch.all(net(x, 0.3) == 0)  # zero-initialised output convolution
    for p in net.parameters():  # break the zero init everywhere
        torch.nn.init.normal_(p, std=0.2)
    y = net(x, 0.3)
    assert y.shape == (5, D) and torch.isfinite(y).all()
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))


def test_unet_samples_are_independent():
    """Output row i depends on input row i only (GroupNorm is per sample), as divergences need."""
    torch.manual_seed(0)
    net = UNet((1, 8, 8), channels=8, time_dim=16)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(4, 64)
    x2 = x.clone()
    x2[1:] = torch.randn(3, 64)
    assert torch.allclose(net(x, 0.5)[0], net(x2, 0.5)[0], atol=1e-6)
    assert not torch.allclose(net(x, 0.5)[1], net(x2, 0.5)[1])


def test_unet_bad_settings():
    with pytest.raises(SbdiffError, match=r"image size 6x6 is not divisible by 2\*\*2 = 4"):
        UNet((1, 6, 6), channel_mult=(1, 2, 2))
    with pytest.raises(SbdiffError, match="invalid settings"):
        UNet((1, 8, 8), channels=0)


def test_debiased_ema_is_the_mean_weighted_over_the_phase_only():
    """``train.phase_average``: updates with ``debiased_decay`` give ``Σ (1−d) d^(n−i) w_i / (1 − d^n)``
    over the weights since the restart, whatever the average held before; frozen names are kept."""
    from sbdiff.nets import debiased_decay, make_ema, update_ema

    net = torch.nn.Linear(3, 2)
    ema = make_ema(net, 0.9)
    with torch.no_grad():
        ema.module.weight.fill_(100.0)  # an old average: forgotten at the restart
    ws, d = [], 0.9
    for n in range(1, 6):
        with torch.no_grad():
            net.weight.normal_()
            net.bias.normal_()
        ws.append(net.weight.detach().clone())
        bias_before = ema.module.bias.detach().clone()
        update_ema(ema, net, ("bias",), decay=debiased_decay(d, n))
        assert torch.equal(ema.module.bias, bias_before)  # frozen prefix untouched
    expected = sum((1 - d) * d ** (5 - i) * w for i, w in enumerate(ws, 1)) / (1 - d ** 5)
    torch.testing.assert_close(ema.module.weight, expected)
    assert debiased_decay(d, 1) == 0.0

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


def _window_net(**kw):
    from sbdiff.nets import WindowNet

    torch.manual_seed(0)
    kw = {"horizon": 5, "past": 7, "series": 3, "channels": 16, "blocks": 3, "time_dim": 16,
          "context": ("vector", 21)} | kw
    return WindowNet(**kw)


def _perturb(net, std=0.2):
    """Break the zero initialisation everywhere."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, std)
    return net


@pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)
@pytest.mark.parametrize("context", [("vector", 21), None])
def test_window_net_shapes_and_zero_init(context):
    net = _window_net(context=context)
    x = torch.randn(4, 15)
    c = torch.randn(4, 21) if context else None
    for t in (0.3, torch.rand(4)):
        y = net(x, t, c)
        assert y.shape == (4, 15) and torch.all(y == 0)  # the output conv starts at zero
    _perturb(net)
    assert not torch.allclose(net(x, 0.1, c), net(x, 0.9, c))


@pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)
def test_window_net_uses_the_history_and_its_null_is_no_history():
    from sbdiff.nets import drop_context

    net = _perturb(_window_net())
    x, c = torch.randn(4, 15), torch.randn(4, 21)
    y = net(x, 0.5, c)
    assert not torch.allclose(y, net(x, 0.5, c + 1.0))
    dropped = drop_context(c, torch.tensor([False, True, False, True]), ("vector", 21))
    c_nan = c.clone()
    c_nan[2, 4] = float("nan")  # any NaN drops the row
    y_null = net(x, 0.5, None)
    y_drop = net(x, 0.5, dropped)
    torch.testing.assert_close(y_drop[[1, 3]], y_null[[1, 3]])
    torch.testing.assert_close(y_drop[[0, 2]], y[[0, 2]])
    torch.testing.assert_close(net(x, 0.5, c_nan)[2], y_null[2])
    torch.testing.assert_close(net(x, 0.5, torch.full_like(c, float("nan"))), y_null)
    assert torch.isfinite(y_null).all() and not torch.allclose(y_null, y)


@pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)
def test_window_net_samples_are_independent():
    """Output row i depends on row i of x, t and c only, as divergences need."""
    net = _perturb(_window_net())
    x, c, t = torch.randn(4, 15), torch.randn(4, 21), torch.rand(4)
    c2 = c.clone()
    c2[1, 20] += 1.0  # the last history step, series 2, of sample 1
    x2 = x.clone()
    x2[2, 0] += 1.0
    y = net(x, t, c)
    for y2, changed in ((net(x, t, c2), 1), (net(x2, t, c), 2)):
        others = [i for i in range(4) if i != changed]
        torch.testing.assert_close(y2[others], y[others], rtol=0, atol=1e-6)
        assert not torch.allclose(y2[changed], y[changed])


@pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)
def test_window_net_gradients_flow():
    net = _window_net()
    torch.nn.init.normal_(net.out[-1].weight)  # else only the output conv gets a gradient at init
    x = torch.randn(4, 15, requires_grad=True)
    c = torch.randn(4, 21)
    c[3] = float("nan")
    net(x, torch.rand(4), c).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_window_net_bad_context():
    from sbdiff.nets import WindowNet

    with pytest.raises(ValueError, match="context must be"):
        WindowNet(5, 7, 3, context=("vector", 20))
    with pytest.raises(ValueError, match="context must be"):
        WindowNet(5, 7, 3, context=("label", 21))
    with pytest.raises(ValueError, match="context must be"):
        WindowNet(5, 0, 3, context=("vector", 0))
    with pytest.raises(ValueError, match="unconditional"):
        WindowNet(5, 7, 3)(torch.randn(2, 15), 0.5, torch.randn(2, 21))
    assert WindowNet(5, 0, 3)(torch.randn(2, 15), 0.5).shape == (2, 15)  # no history needed without a context


@pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)
def test_window_net_fits_a_persistence_forecast():
    """Sixty Adam steps learn the forecast ``last history step, repeated`` (time-major layout)."""
    torch.manual_seed(0)
    net = _window_net(horizon=4, past=6, series=2, blocks=2, context=("vector", 12))
    c = torch.randn(128, 12)
    target = c[:, -2:].repeat(1, 4)  # time-major: the last step's 2 series, at each of 4 steps
    x = torch.randn(128, 8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = (net(x, 0.5, c) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first

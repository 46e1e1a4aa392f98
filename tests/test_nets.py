"""Networks and EMA."""

import torch

from sbdiff.nets import TimeEmbedding, TimeMLP, make_ema


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

"""The differentiable look-ahead equals a real SGD step and carries gradients to what the loss used."""

import torch
from torch import nn

from training.methods.common.lookahead import forward_with, lookahead


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_lookahead_matches_an_sgd_step():
    net = _net()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(net(x), y)
    ahead = lookahead(net, loss, lr=0.1, weight_decay=0.01)
    running = net[1].running_mean.clone()
    out = forward_with(net, ahead, x)
    torch.testing.assert_close(net[1].running_mean, running)  # real BN statistics untouched
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.01)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    for name, p in net.named_parameters():
        torch.testing.assert_close(ahead[name].detach(), p.detach())
    assert out.shape == (8, 3)


def test_lookahead_gradient_flows_to_sample_weights():
    """d(loss at w')/d(eps) through the look-ahead equals a finite difference (L2RW's meta gradient)."""
    net = _net().double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    xv, yv = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))

    def meta_loss(eps):
        ce = nn.functional.cross_entropy(net(x), y, reduction="none")
        ahead = lookahead(net, (eps * ce).sum(), lr=0.5)
        return nn.functional.cross_entropy(forward_with(net, ahead, xv), yv)

    eps = torch.full((8,), 0.1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(meta_loss(eps), eps)
    h = 1e-6
    for i in range(3):
        e = torch.zeros(8, dtype=torch.float64)
        e[i] = h
        fd = (meta_loss(eps.detach() + e) - meta_loss(eps.detach() - e)).detach() / (2 * h)
        torch.testing.assert_close(grad[i], fd, rtol=1e-4, atol=1e-8)

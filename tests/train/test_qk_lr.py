import torch
from torch import nn

from cka_lab.models import create_edt
from cka_lab.train.qk_lr import QKLearningRate, qkv_modules


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.other = nn.Linear(12, 1)

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b.qkv(x))[:, :4]
        return x.sum()


def _run(scale: float, steps: int = 3):
    torch.manual_seed(0)
    m = _Toy()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, eps=1e-15)
    x = torch.linspace(-1, 1, 8).view(2, 4)
    w0 = [b.qkv.weight.detach().clone() for b in m.blocks]
    with QKLearningRate(m, opt, scale) as hook:
        for _ in range(steps):
            opt.zero_grad()
            m(x).backward()
            opt.step()
    return m, opt, w0, hook


def test_one_step_moves_q_and_k_rows_scale_times_as_far_and_leaves_v_and_moments():
    ref, o1, w0, _ = _run(1.0, steps=1)
    sc, o2, w0b, hook = _run(4.0, steps=1)
    assert len(hook.params) == 4
    for a, b, w in zip(ref.blocks, sc.blocks, w0):
        d_ref, d_sc = a.qkv.weight.detach() - w, b.qkv.weight.detach() - w
        torch.testing.assert_close(d_sc[:8], 4.0 * d_ref[:8])
        torch.testing.assert_close(d_sc[8:], d_ref[8:])
    for p1, p2 in zip(ref.blocks.parameters(), sc.blocks.parameters()):  # first moments: the same gradient
        torch.testing.assert_close(o1.state[p1]["exp_avg"], o2.state[p2]["exp_avg"])


def test_hooks_are_removed_and_scale_one_registers_none():
    sc, opt, _, hook = _run(2.0, steps=1)
    assert hook._handles == []  # removed by the with block
    before = [p.detach().clone() for p in sc.parameters()]
    opt.zero_grad()
    sc(torch.ones(1, 4)).backward()
    opt.step()  # a plain step now
    assert QKLearningRate(sc, opt, 1.0)._handles == []
    assert any(not torch.equal(a, b) for a, b in zip(before, sc.parameters()))


def test_finds_every_edt_block():
    assert len(qkv_modules(create_edt("SRx2_EDTT", image_size=24))) == 24

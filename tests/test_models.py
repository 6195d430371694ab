"""Backbones, masks and the functional dynamic head."""

import copy

import pytest
import torch
from torch import nn

from duet.config import ModelConfig
from duet.models.head import DynamicHead, ModuleHead
from duet.tasks.recommendation.data.store import PAD
from duet.tasks.recommendation.models.backbones import GRU4Rec, SASRec
from duet.tasks.recommendation.models.recommender import Recommender

BACKBONES = ["sasrec", "gru4rec", "din"]
NUM_ITEMS, L = 50, 8


def make(backbone: str, **kw) -> Recommender:
    torch.manual_seed(0)
    return Recommender(NUM_ITEMS, L, ModelConfig(backbone=backbone, embed_dim=16, **kw)).eval()


def histories(n: int = 6, length: int = L) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    h = torch.randint(1, NUM_ITEMS, (n, length), generator=g)
    lengths = torch.tensor([length, 1, 3, 5, length - 1, 2])[:n]
    return h * (torch.arange(length) < lengths.unsqueeze(1))  # left-aligned, 0-padded


@pytest.mark.parametrize("backbone", BACKBONES)
def test_padding_never_changes_the_output(backbone):
    model = make(backbone)
    h = histories()
    short = h[:, :5]  # same histories where they fit in 5 positions, fewer pads
    keep = (h[:, 5:] == PAD).all(1)
    items = torch.randint(1, NUM_ITEMS, (int(keep.sum()),))
    with torch.no_grad():
        long_out = model(h[keep], items)
        short_out = model(short[keep], items)
    torch.testing.assert_close(long_out, short_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pad_embedding_stays_zero(backbone):
    model = make(backbone)
    assert torch.count_nonzero(model.item_embedding.weight[PAD]) == 0


def test_sasrec_step_t_never_depends_on_later_items():
    torch.manual_seed(0)
    sasrec = SASRec(NUM_ITEMS, L, ModelConfig(embed_dim=16)).eval()
    h = torch.randint(1, NUM_ITEMS, (4, L))
    changed = h.clone()
    t = 3
    changed[:, t + 1 :] = torch.randint(1, NUM_ITEMS, (4, L - t - 1))
    with torch.no_grad():
        a, b = sasrec.encode(h), sasrec.encode(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_sasrec_padded_query_rows_are_zero_and_finite():
    sasrec = SASRec(NUM_ITEMS, L, ModelConfig(embed_dim=16)).eval()
    h = histories()
    h[0] = PAD  # an empty history must not produce NaN
    with torch.no_grad():
        states = sasrec.encode(h)
        user = sasrec(h)
    assert torch.isfinite(states).all()
    assert torch.all(states[h == PAD] == 0)
    assert torch.all(user[0] == 0)


def test_gru4rec_uses_last_valid_state():
    gru = GRU4Rec(NUM_ITEMS, L, ModelConfig(embed_dim=16, num_blocks=1)).eval()
    h = histories()
    with torch.no_grad():
        states, _ = gru.gru(gru.items(h))
        user = gru(h)
    lengths = (h != PAD).sum(1)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(user[row], states[row, n - 1])


@pytest.mark.parametrize("widths", [(16, 16, 16), (48, 32, 1), (8, 4, 6, 2)])
def test_functional_head_equals_linear_stack(widths):
    torch.manual_seed(0)
    head = DynamicHead(widths, "tanh")
    linears = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    reference = nn.Sequential(*[m for lin in linears for m in (lin, nn.Tanh())][:-1])
    params = {f"layers.{i}.{k}": getattr(lin, k) for i, lin in enumerate(linears) for k in ("weight", "bias")}
    x = torch.randn(5, widths[0])
    torch.testing.assert_close(head(x, params), reference(x))
    batched = {k: v.detach().unsqueeze(0).expand(5, *v.shape).clone() for k, v in params.items()}
    torch.testing.assert_close(head(x, batched), reference(x))


def test_batched_head_uses_each_rows_own_params():
    head = DynamicHead((4, 3, 2))
    params = {k: torch.randn(3, *s) for k, s in head.param_spec.entries}
    x = torch.randn(3, 4)
    out = head(x, params)
    for b in range(3):
        row = head(x[b : b + 1], {k: v[b] for k, v in params.items()})
        torch.testing.assert_close(out[b : b + 1], row)


class ChannelScale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)
        self.shift = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


def module_heads() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """name -> (head module, shape of one input row)."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), ChannelScale(4),
                         nn.Conv2d(4, 2, 1, bias=False), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    mlp = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2, bias=False))
    return {"conv": (conv, (3, 5, 5)), "mlp": (mlp, (6,)), "bare": (nn.Linear(4, 3), (4,))}


@pytest.mark.parametrize("name", ["conv", "mlp", "bare"])
def test_module_head_spec_and_shared_params_are_the_module(name):
    module, row = module_heads()[name]
    head = ModuleHead(module)
    assert head.param_spec.entries == tuple((n, tuple(p.shape)) for n, p in module.named_parameters())
    assert list(head.parameters()) == [] and list(head.state_dict()) == []  # inputs, not weights
    x = torch.randn(4, *row)
    params = head.init_params()
    with torch.no_grad():
        torch.testing.assert_close(head(x, params), module(x), rtol=0, atol=0)
        for p in params.values():
            p.add_(1.0)  # a copy: the head's own initial values stay
        assert all(torch.equal(head.init_params()[n], p) for n, p in module.named_parameters())
        moved = head(x, params)
    assert not torch.allclose(moved, module(x))


@pytest.mark.parametrize("name", ["conv", "mlp", "bare"])
def test_module_head_batched_params_equal_a_per_row_loop(name):
    module, row = module_heads()[name]
    head = ModuleHead(module)
    B = 5
    g = torch.Generator().manual_seed(1)
    params = {n: torch.randn(B, *shape, generator=g, requires_grad=True) for n, shape in head.param_spec.entries}
    x = torch.randn(B, *row, generator=g)
    out = head(x, params)
    out.pow(2).sum().backward()
    for b in range(B):  # a plain module per row, loaded with that row's params
        plain = copy.deepcopy(module)
        with torch.no_grad():
            for n, p in plain.named_parameters():
                p.copy_(params[n][b])
        expected = plain(x[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], expected)
        expected.pow(2).sum().backward()
        for n, p in plain.named_parameters():  # gradients reach row b's params and no other row's
            torch.testing.assert_close(params[n].grad[b], p.grad, rtol=1e-4, atol=1e-5)


def test_module_head_refuses_params_that_do_not_fit():
    head = ModuleHead(module_heads()["conv"][0])
    params = head.init_params()
    with pytest.raises(ValueError, match="0.weight"):
        head(torch.randn(2, 3, 5, 5), {**params, "0.weight": torch.zeros(2, 4, 3, 3, 2)})
    with pytest.raises(ValueError, match="missing"):
        head(torch.randn(2, 3, 5, 5), {k: v for k, v in params.items() if k != "2.shift"})


@pytest.mark.parametrize("backbone", BACKBONES)
def test_theta_g_for_every_device_equals_global_path(backbone):
    model = make(backbone)
    h = histories()
    inverse = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    items = torch.randint(1, NUM_ITEMS, (len(inverse),))
    per_device = {k: v.detach().unsqueeze(0).repeat(len(h), *[1] * v.dim()) for k, v in model.theta_g().items()}
    with torch.no_grad():
        torch.testing.assert_close(model(h, items, inverse), model(h, items, inverse, per_device))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_trainable_tensor_is_registered(backbone):
    model = make(backbone)
    names = {n for n, _ in model.named_parameters()}
    state = set(model.state_dict())
    assert names <= state
    assert {f"global_params.{n.replace('.', '_')}" for n in model.param_spec.names} <= names


def test_head_spec_matches_config():
    model = make("sasrec", head_hidden=(24, 8))
    assert model.param_spec.shapes == {
        "layers.0.weight": (24, 16), "layers.0.bias": (24,), "layers.1.weight": (8, 24), "layers.1.bias": (8,),
        "layers.2.weight": (16, 8), "layers.2.bias": (16,),
    }
    din = make("din")
    assert din.param_spec.shapes["layers.0.weight"] == (32, 48)
    assert din.param_spec.shapes["layers.1.weight"] == (1, 32)


def test_unknown_backbone_lists_valid_ones():
    cfg = ModelConfig.model_construct(backbone="bert4rec", embed_dim=16)
    with pytest.raises(ValueError, match="sasrec"):
        Recommender(NUM_ITEMS, L, cfg)


def test_deepcopy_is_independent():
    model = make("sasrec")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert not torch.equal(next(clone.parameters()), next(model.parameters()))


# ---------------------------------------------------------------- the fast dropout path


def test_fast_dropout_keeps_the_expected_share_and_the_mean():
    from duet.models.layers import fast_dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.3, training=True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.005  # 0.7 of the elements kept (binomial sd ~0.001)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))  # inverted: the mean is kept
    assert fast_dropout(x, 0.3, training=False) is x and fast_dropout(x, 0.0, training=True) is x
    x.requires_grad_(True)
    fast_dropout(x, 0.5, training=True).sum().backward()
    assert set(x.grad.unique().tolist()) <= {0.0, 2.0}  # the gradient goes through the kept elements only


def test_attention_training_path_is_sdpa_without_its_dropout(monkeypatch):
    """The training path writes attention out (for the cheaper dropout mask); with the dropout
    masks made the identity it must compute what sdpa computes, padding and causal masks included."""
    import duet.models.layers as layers

    torch.manual_seed(1)
    model = SASRec(50, 6, ModelConfig(embed_dim=16, num_heads=2, num_blocks=2, dropout=0.3))
    history = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 8, 9, 10, 11, 12], [1, 0, 0, 0, 0, 0]])
    model.eval()
    expected = model.encode(history)
    monkeypatch.setattr(layers, "fast_dropout", lambda x, *_: x)  # masks off, training path on
    model.train()
    for module in model.modules():
        if isinstance(module, layers.FastDropout):
            module.p = 0.0
    torch.testing.assert_close(model.encode(history), expected, rtol=1e-5, atol=1e-6)


def test_a_grouped_head_is_the_head_of_each_row():
    """x (B, C, in) with one head per group b: row (b, c) gets what head(x[b, c]) gives alone."""
    torch.manual_seed(2)
    head = DynamicHead((6, 5, 2), "tanh")
    params = {name: torch.randn(4, *shape) for name, shape in head.param_spec.entries}  # 4 heads
    x = torch.randn(4, 3, 6)
    grouped = head(x, params)  # (4, 3, 2)
    for b in range(4):
        one = {name: p[b] for name, p in params.items()}
        torch.testing.assert_close(grouped[b], head(x[b], one))  # the shared-head path, F.linear
        torch.testing.assert_close(head(x[b], {n: p[b].expand(3, *p.shape[1:]) for n, p in params.items()}),
                                   grouped[b])  # the per-row path


@pytest.mark.parametrize("counts", [(3, 3, 3, 3), (3, 1, 4, 2)])
def test_din_scores_with_one_head_per_event_as_record_by_record(counts):
    """DIN's head runs once per event on its C records when every event has C records (else per
    record): either way each record is scored, and trained, as it would be alone."""
    torch.manual_seed(3)
    model = Recommender(40, 5, ModelConfig(backbone="din", embed_dim=8))
    E = len(counts)
    history = torch.randint(0, 40, (E, 5))
    inverse = torch.tensor([e for e, n in enumerate(counts) for _ in range(n)])[torch.randperm(sum(counts))]
    item = torch.randint(1, 40, (len(inverse),))
    params = {name: (p.detach() + 0.1 * torch.randn(E, *p.shape)).requires_grad_(True)
              for name, p in model.theta_g().items()}
    logits = model(history, item, inverse, params)
    alone = torch.stack([model(history[inverse[b]][None], item[b][None], None,
                               {k: v[inverse[b]][None] for k, v in params.items()})[0] for b in range(len(item))])
    torch.testing.assert_close(logits, alone)
    grads = torch.autograd.grad(logits.square().sum(), list(params.values()))
    expected = torch.autograd.grad(alone.square().sum(), list(params.values()))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)

"""The generator built from any ParamSpec: units, chunks, conv heads, folding, and today's heads unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from legacy_ppg import LegacyParamGenerator
from torch import Tensor, nn

from duet.cloud.generation import FlatGenerator
from duet.config import GeneratorConfig
from duet.duet_model import DuetModel
from duet.generator.ppg import ParamGenerator, spec_units
from duet.models.head import DynamicHead, ModuleHead, WithGlobalHead
from duet.spec import ParamSpec

D, W, IMAGE = 6, 5, (3, 5, 5)
SMALL = {"hidden_dim": 16, "layer_embed_dim": 8, "decoder_hidden": 12}


class ChannelScale(nn.Module):
    """Per-channel scale and shift: two standalone 1-D tensors."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


def conv_head() -> nn.Module:
    """(B, 3, 5, 5) -> (B, 5): conv with bias, scale/shift, 1x1 conv without bias, linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), ChannelScale(4),
                         nn.Conv2d(4, 6, 1, bias=False), nn.Flatten(), nn.Linear(6 * 5 * 5, 5))


CONV_SPEC = ModuleHead(conv_head()).param_spec  # unit sizes 112, 4, 4, 24, 755


def generator(spec: ParamSpec = CONV_SPEC, seed: int = 0, **gen) -> ParamGenerator:
    torch.manual_seed(seed)
    return ParamGenerator(spec, D, W, GeneratorConfig(**{**SMALL, **gen}))


def window(n: int = 8, seed: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, W, D, generator=g)
    return features, torch.arange(W) < torch.randint(1, W + 1, (n, 1), generator=g)


def flat(params: dict[str, Tensor], spec: ParamSpec) -> Tensor:
    return torch.cat([params[name].reshape(params[name].shape[0], -1) for name in spec.names], dim=1)


# --- today's linear heads: bitwise the old generator ---------------------------------------

LINEAR_GENS = [{}, {"mode": "paper"}, {"rank": 2}, {"rank": 2, "mode": "paper"}, {"num_generators": 1},
               {"encoder": "attention"}, {"encoder": "attnpool", "num_generators": 4, "temperature": 0.5},
               {"chunk_size": 10_000}]  # a chunk size no unit exceeds changes nothing


@pytest.mark.parametrize("widths", [(16, 16, 16), (9, 7, 1)])
@pytest.mark.parametrize("gen", LINEAR_GENS)
def test_linear_heads_are_bitwise_the_old_generator(widths, gen):
    spec = DynamicHead(widths).param_spec
    cfg = GeneratorConfig(**{**SMALL, **gen})
    torch.manual_seed(0)
    old = LegacyParamGenerator(spec, D, W, cfg.model_copy(update={"chunk_size": None}))
    new = generator(spec, **gen)
    assert [(n, type(m)) for n, m in new.named_modules()][1:] == [(n, type(m)) for n, m in old.named_modules()][1:]
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)
    for key in old_state:  # same seed, same draws in the same order
        assert torch.equal(new_state[key], old_state[key]), key
    features, mask = window()
    outputs = []
    for model in (old, new):
        torch.manual_seed(1)  # dropout draws the same masks
        params = model.train()(features, mask)
        loss = sum((p * torch.linspace(-1, 1, p[0].numel()).view(p[0].shape)).sum() for p in params.values())
        loss.backward()
        outputs.append((params, {n: p.grad for n, p in model.named_parameters()}, model.eval().folded()))
    (old_params, old_grads, old_folded), (new_params, new_grads, new_folded) = outputs
    assert list(new_params) == list(old_params) == spec.names
    for name in spec.names:
        assert torch.equal(new_params[name], old_params[name]), name
    for name in old_grads:
        assert torch.equal(new_grads[name], old_grads[name]), name
    assert (new_folded is None) == (old_folded is None)
    if old_folded is not None:
        assert all(torch.equal(a, b) for a, b in zip(new_folded, old_folded, strict=True))
    reloaded = generator(spec, seed=5, **gen)
    reloaded.load_state_dict(old_state)  # strict: an old checkpoint loads unchanged
    with torch.no_grad():
        again = reloaded.eval()(features, mask)
        old_eval = old(features, mask)
    assert all(torch.equal(again[n], old_eval[n]) for n in spec.names)


# --- units ---------------------------------------------------------------------------------

def test_spec_units_pair_a_weight_with_its_bias_only():
    spec = ParamSpec.from_pairs([
        ("conv.weight", (4, 3, 3, 3)), ("conv.bias", (4,)),  # pair
        ("scale", (4,)),  # alone
        ("fc.weight", (5, 4)),  # no bias: alone
        ("fc2.weight", (3, 5)), ("other.bias", (3,)),  # another module's bias: two units
        ("bn.weight", (4,)), ("bn.bias", (4,)),  # a 1-D weight and its bias: pair
        ("x.weight", (3, 2)), ("x.bias", (2,)),  # bias of the wrong size: two units
        ("weight", (2, 3)), ("bias", (2,)),  # a bare module's names: pair
        ("temperature", ()),  # a scalar
    ])
    units = spec_units(spec, rank=2, chunk_size=50)
    assert [[name for name, _ in u.entries] for u in units] == [
        ["conv.weight", "conv.bias"], ["scale"], ["fc.weight"], ["fc2.weight"], ["other.bias"],
        ["bn.weight", "bn.bias"], ["x.weight"], ["x.bias"], ["weight", "bias"], ["temperature"]]
    assert [u.fan_in for u in units] == [27, 1, 4, 5, 1, 1, 2, 1, 3, 1]
    # rank 2 < min(out, fan_in) only for the conv (4, 27), fc (5, 4) and fc2 (3, 5)
    assert [u.rank for u in units] == [2, None, 2, 2, None, None, None, None, None, None]
    assert [u.size for u in units] == [(4 + 27) * 2 + 4, 4, (5 + 4) * 2, (3 + 5) * 2, 3, 8, 6, 2, 8, 1]
    assert [u.chunks for u in units] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # 66 outputs in chunks of 50
    with torch.no_grad():
        params = generator(spec, rank=2, chunk_size=50)(*window(3))
    assert list(params) == spec.names
    assert all(params[name].shape == (3, *shape) for name, shape in spec.entries)


def test_generated_conv_weights_are_low_rank_when_asked():
    with torch.no_grad():
        params = generator(rank=2)(*window(3))
    conv = params["0.weight"].reshape(3, 4, 27)
    assert all(int(torch.linalg.matrix_rank(m)) == 2 for m in conv)  # (4, 27) reshaped, rank 2
    with torch.no_grad():
        full = generator()(*window(3))
    assert all(int(torch.linalg.matrix_rank(m)) == 4 for m in full["0.weight"].reshape(3, 4, 27))


# --- any spec: shapes, training, init scale --------------------------------------------------

CONV_GENS = [{}, {"mode": "paper"}, {"rank": 2}, {"num_generators": 1}, {"encoder": "mean"},
             {"chunk_size": 64}, {"chunk_size": 64, "mode": "paper", "rank": 3}, {"chunk_size": 1}]


@pytest.mark.parametrize("gen", CONV_GENS)
def test_conv_scale_head_shapes_and_every_generator_tensor_is_trained(gen):
    model = generator(**gen)
    head = ModuleHead(conv_head())
    theta_g = head.init_params()
    names = {n for n, _ in model.named_parameters()}
    assert names == set(model.state_dict())  # nothing lives outside parameters()
    if gen.get("chunk_size"):
        assert "chunk_embeddings" in names and any(n.startswith("chunk_decoder.") for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    features, mask = window()
    params = model(features, mask)
    assert list(params) == CONV_SPEC.names
    for name, shape in CONV_SPEC.entries:
        assert params[name].shape == (8, *shape), name
    if model.cfg.mode == "residual":
        params = {n: theta_g[n] + p for n, p in params.items()}
    x = torch.randn(8, *IMAGE, generator=torch.Generator().manual_seed(4))
    head(x, params).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name


@pytest.mark.parametrize(("gen", "bound"), [({"chunk_size": 64}, 0.6), ({"chunk_size": 64, "rank": 2}, 0.85)])
def test_chunked_generator_learns_window_dependent_params(gen, bound):
    """Regress the generated params on s(window) * direction: the loss must fall well below
    that of the best window-independent answer (the target's mean over windows)."""
    torch.set_num_threads(1)
    model = generator(dropout=0.0, encoder="mean", **gen)
    features, mask = window(32)
    direction = torch.randn(CONV_SPEC.numel, generator=torch.Generator().manual_seed(2)) * 0.05
    target = (features[..., :1] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) * direction  # (32, numel)
    constant_loss = (target - target.mean(0)).pow(2).mean().item()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        loss = (flat(model(features, mask), CONV_SPEC) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < bound * constant_loss, loss.item() / constant_loss


def test_chunks_of_a_unit_read_the_window_differently():
    """A linear decoder on [unit embedding, chunk embedding] would give every chunk of a unit
    the same window-dependent part (chunks differing by a constant): ours must not."""
    model = generator(chunk_size=64).eval()
    features, mask = window(2)
    with torch.no_grad():
        out = model(features, mask)["5.weight"].reshape(2, -1)  # unit 4: 12 chunks of the same target std
    delta = (out[0] - out[1])[: 11 * 64].view(11, 64)  # window-dependent part of each full chunk
    for k in range(1, 11):
        assert not torch.allclose(delta[k], delta[0], rtol=0.05, atol=0), k


def test_each_chunk_embedding_drives_its_own_chunk_only():
    """Chunk embedding r moves exactly its chunk's outputs, in spec order, the tail cut."""
    model = generator(chunk_size=64).eval()
    units = model.units
    assert [u.chunks for u in units] == [2, 0, 0, 0, 12]
    starts = [sum(u.size for u in units[:i]) for i in range(len(units))]
    expected = [range(starts[u] + k * 64, starts[u] + min((k + 1) * 64, units[u].size))
                for u in (0, 4) for k in range(units[u].chunks)]
    features, mask = window(2)
    with torch.no_grad():
        base = flat(model(features, mask), CONV_SPEC)
        for row, columns in enumerate(expected):
            saved = model.chunk_embeddings[row].clone()
            model.chunk_embeddings[row] += 1.0
            changed = (flat(model(features, mask), CONV_SPEC) != base).any(0).nonzero().flatten().tolist()
            model.chunk_embeddings[row] = saved
            assert changed == list(columns), row


@pytest.mark.parametrize("gen", [{"mode": "paper"}, {"mode": "paper", "chunk_size": 64},
                                 {"mode": "residual"}, {"mode": "residual", "chunk_size": 64}])
def test_initial_scale_follows_fan_in_and_unit_scale(gen):
    """Paper: weights ~ 1/sqrt(fan_in), scales/shifts ~ 1; residual: a tenth of that."""
    with torch.no_grad():
        params = generator(**gen)(*window(512))
    target = {"0.weight": 1 / math.sqrt(27), "0.bias": 1 / math.sqrt(27), "2.scale": 1.0, "2.shift": 1.0,
              "3.weight": 1 / math.sqrt(4), "5.weight": 1 / math.sqrt(150), "5.bias": 1 / math.sqrt(150)}
    factor = 1.0 if gen["mode"] == "paper" else 0.1
    for name, p in params.items():
        ratio = p.std().item() / (target[name] * factor)
        assert 0.4 < ratio < 2.5, (name, ratio)


# --- folding and serving -----------------------------------------------------------------------

@pytest.mark.parametrize("gen", [{}, {"mode": "paper"}, {"num_generators": 1}, {"chunk_size": 64},
                                 {"chunk_size": 7, "mode": "paper"}])
def test_folded_generator_is_the_generator_for_any_spec(gen):
    model = generator(**gen).eval()
    constant = torch.randn(CONV_SPEC.numel)
    weight, bias = model.folded(constant)
    features, mask = window(9)
    with torch.no_grad():
        expected = flat(model(features, mask), CONV_SPEC) + constant
        got = torch.nn.functional.linear(model.encoder(features, mask), weight, bias)
    assert got.shape == (9, CONV_SPEC.numel)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("gen", [{"rank": 2}, {"rank": 2, "chunk_size": 64}])
def test_low_rank_generator_is_not_folded(gen):
    assert generator(**gen).folded() is None


class ConvDevice(WithGlobalHead):
    """A device model whose head is the conv head, its window features a linear map of the images."""

    feature_dim = D

    def __init__(self):
        super().__init__()
        self._set_head(ModuleHead(conv_head()))
        self.features = nn.Linear(math.prod(IMAGE), D)

    def window_features(self, window: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if mask is None:
            mask = torch.ones(window.shape[:2], dtype=torch.bool)
        return self.features(window.flatten(2)), mask


@pytest.mark.parametrize("gen", [{}, {"mode": "paper"}, {"chunk_size": 64}, {"rank": 2, "chunk_size": 64}])
@pytest.mark.parametrize("fold", [True, False])
def test_flat_generator_serves_a_conv_head(gen, fold):
    torch.manual_seed(0)
    model = DuetModel(ConvDevice(), W, GeneratorConfig(**{**SMALL, **gen})).eval()
    assert model.device_model.param_spec == CONV_SPEC
    g = torch.Generator().manual_seed(6)
    images = torch.randn(5, W, *IMAGE, generator=g)
    mask = torch.arange(W) < torch.tensor([[5], [1], [3], [5], [2]])
    with torch.no_grad():
        expected = flat(model.generate(images, mask), CONV_SPEC)
        served = FlatGenerator(model, fold=fold).eval()
        got = served(images, mask)
    assert served.folded == (fold and "rank" not in gen)
    if served.folded:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    else:  # frozen decoders: the same two linears on the same mixed weights
        assert torch.equal(got, expected)

"""PPG + SWA: registration, gradients, shapes, SWA properties, padding invariance, init scale."""

import math

import pytest
import torch

from duet.config import GeneratorConfig, ModelConfig
from duet.duet_model import DuetModel
from duet.generator.swa import SWADecoder, swa_weights
from duet.tasks.recommendation.models.recommender import Recommender

NUM_ITEMS, L, W = 60, 10, 5


def make(backbone="sasrec", **gen) -> DuetModel:
    torch.manual_seed(0)
    rec = Recommender(NUM_ITEMS, L, ModelConfig(backbone=backbone, embed_dim=16))
    return DuetModel(rec, W, GeneratorConfig(**gen))


def windows(n=4):
    g = torch.Generator().manual_seed(3)
    return torch.randint(1, NUM_ITEMS, (n, W), generator=g)


@pytest.mark.parametrize("gen", [{}, {"rank": 2}, {"mode": "paper"}, {"encoder": "attention"}, {"num_generators": 1}])
def test_every_generator_tensor_is_trained(gen):
    model = make(**gen)
    names = {n for n, _ in model.generator.named_parameters()}
    assert names == {k for k in model.generator.state_dict()}  # nothing lives outside parameters()
    before = {n: p.detach().clone() for n, p in model.generator.named_parameters()}
    optimizer = torch.optim.Adam(model.generator.parameters(), lr=1e-2)
    h = torch.randint(1, NUM_ITEMS, (4, L))
    items = torch.randint(1, NUM_ITEMS, (4,))
    loss = model(h, items, window=windows()).pow(2).mean()
    loss.backward()
    for name, p in model.generator.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    optimizer.step()
    for name, p in model.generator.named_parameters():
        assert not torch.equal(p, before[name]), name


def test_generator_survives_save_and_load(tmp_path):
    from safetensors.torch import load_file, save_file

    model = make().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    torch.manual_seed(99)
    other = DuetModel(Recommender(NUM_ITEMS, L, ModelConfig(embed_dim=16)), W, GeneratorConfig()).eval()
    other.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    w = windows()
    with torch.no_grad():
        a, b = model.generate(w), other.generate(w)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "din"])
@pytest.mark.parametrize("gen", [{}, {"rank": 3}, {"mode": "paper"}])
def test_generated_shapes_match_the_head(backbone, gen):
    model = make(backbone, **gen)
    params = model.generate(windows(7))
    spec = model.device_model.param_spec
    assert list(params) == spec.names
    for name, shape in spec.entries:
        assert tuple(params[name].shape) == (7, *shape)


def test_swa_weights_sum_to_one_and_ignore_order():
    torch.manual_seed(0)
    w1 = torch.randn(5, 8, 4)
    alpha = swa_weights(w1, temperature=2.0)
    assert alpha.shape == (5,)
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0))
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(swa_weights(w1[perm], 2.0), alpha[perm])


def test_swa_decoder_output_does_not_depend_on_generator_order():
    torch.manual_seed(0)
    dec = SWADecoder(6, 8, torch.full((10,), 0.1), torch.zeros(10), num_generators=4, temperature=3.0, input_var=1.0)
    e = torch.randn(3, 6)
    out = dec(e)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        for p in (dec.w1, dec.b1, dec.w2, dec.b2):
            p.copy_(p[perm])
    torch.testing.assert_close(dec(e), out)


def test_single_generator_swa_is_identity():
    torch.manual_seed(0)
    dec = SWADecoder(6, 8, torch.full((10,), 0.1), torch.zeros(10), num_generators=1, temperature=1.0, input_var=1.0)
    assert dec.weights().item() == 1.0
    e = torch.randn(3, 6)
    plain = (e @ dec.w1[0].T + dec.b1[0]) @ dec.w2[0].T + dec.b2[0]  # theta = (W1 e + B1) W2 + B2
    torch.testing.assert_close(dec(e), plain)


def test_swa_mixes_decoders_by_alpha():
    torch.manual_seed(0)
    dec = SWADecoder(6, 8, torch.full((10,), 0.1), torch.zeros(10), num_generators=3, temperature=5.0, input_var=1.0)
    alpha = dec.weights()
    w1 = sum(a * w for a, w in zip(alpha, dec.w1, strict=True))
    b1 = sum(a * b for a, b in zip(alpha, dec.b1, strict=True))
    w2 = sum(a * w for a, w in zip(alpha, dec.w2, strict=True))
    b2 = sum(a * b for a, b in zip(alpha, dec.b2, strict=True))
    e = torch.randn(2, 6)
    torch.testing.assert_close(dec(e), (e @ w1.T + b1) @ w2.T + b2)


@pytest.mark.parametrize("encoder", ["gru", "attention", "set"])
def test_window_changes_params_and_padding_does_not(encoder):
    model = make(encoder=encoder).eval()
    w = windows(2)
    padded = w.clone()
    padded[:, 3:] = 0  # left-aligned window of 3 items, padded to W
    with torch.no_grad():
        a = model.generate(padded)
        b = model.generate(w[:, :3])  # the same 3 items, no padding
        c = model.generate(w)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a[k], c[k])
    assert not torch.allclose(a["layers.0.weight"][0], a["layers.0.weight"][1])


@pytest.mark.parametrize("backbone", ["sasrec", "din"])
@pytest.mark.parametrize("rank", [None, 4])
def test_paper_mode_generated_weights_start_at_xavier_scale(backbone, rank):
    model = make(backbone, mode="paper", rank=rank)
    torch.manual_seed(1)
    w = torch.randint(1, NUM_ITEMS, (512, W))
    with torch.no_grad():
        params = model.generate(w)
    for name, p in params.items():
        if name.endswith("weight"):
            fan_in = p.shape[-1]
            ratio = p.std().item() * math.sqrt(fan_in)
            assert 0.5 < ratio < 2.0, (name, ratio)


def test_residual_mode_starts_near_the_global_head():
    model = make(mode="residual")
    with torch.no_grad():
        params = model.generate(windows(64))
    theta = model.device_model.theta_g()
    for name, p in params.items():
        delta = (p - theta[name]).std().item()
        scale = theta[name].std().item()
        assert 0 < delta < 0.5 * scale * 1.8, name


@pytest.mark.parametrize("gen", [{}, {"mode": "paper"}, {"encoder": "attention"}, {"num_generators": 1}])
def test_folded_generator_is_the_generator(gen):
    """Serving folds layer embedding -> SWA decoder (+ theta_g) into one matrix: same parameters."""
    model = make(**gen).eval()
    names = model.device_model.param_spec.names
    theta_g = model.device_model.theta_g()
    constant = None if model.cfg.mode == "paper" else torch.cat([theta_g[n].detach().reshape(-1) for n in names])
    weight, bias = model.generator.folded(constant)
    w = windows(9)
    w[::2, 3:] = 0
    with torch.no_grad():
        params = model.generate(w)
        c = model.generator.encoder(model.device_model.item_embedding(w), w != 0)
        flat = torch.nn.functional.linear(c, weight, bias)
    expected = torch.cat([params[n].reshape(9, -1) for n in names], 1)
    assert flat.shape == expected.shape == (9, model.device_model.param_spec.numel)
    torch.testing.assert_close(flat, expected, rtol=0, atol=1e-6)


def test_low_rank_generator_is_not_folded():
    assert make(rank=2).generator.folded() is None  # U V^T is not linear in the encoder output

"""Generation inside the static part for any module: FiLM after named layers (`duet.models.film`),
and `--film` in recommendation (SASRec's blocks, GRU4Rec's and DIN's history embeddings), down
to the exported device graph."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import NUM_ITEMS, L, train_export_and_check_tiny
from torch import nn
from typer.testing import CliRunner

from duet.config import ModelConfig
from duet.models.film import LayerFilm, film_at
from duet.tasks.recommendation.models.recommender import Recommender

runner = CliRunner()


def small() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(15, 4))


def test_film_at_on_a_worked_example():
    h = torch.arange(12.0).reshape(2, 3, 2)  # (N, C, T)
    shared = film_at(h, torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 5.0]), axis=1)
    assert torch.equal(shared[:, 0], h[:, 0]) and torch.equal(shared[:, 1], 2 * h[:, 1])
    assert torch.equal(shared[:, 2], torch.full((2, 2), 5.0))
    per_row = film_at(h, torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.zeros(2, 2), axis=-1)  # channels last
    assert torch.equal(per_row[0], h[0]) and torch.equal(per_row[1], 3 * h[1])


def test_layer_film_scales_only_inside_its_context_and_per_row():
    module = small()
    x = torch.randn(4, 2, 5)
    films = LayerFilm(module, ("0", "3"), lambda: module(x[:2]))
    assert films.channels == {"0": 3, "3": 4}
    plain = module(x)
    scale = torch.ones(4, 3)
    scale[1] = 2.0  # row 1's convolution output doubled
    identity = {"film.0.scale": torch.ones(3), "film.0.shift": torch.zeros(3),
                "film.3.scale": torch.ones(4), "film.3.shift": torch.zeros(4)}
    assert {k: v.tolist() for k, v in films.identity().items()} == {k: v.tolist() for k, v in identity.items()}
    with torch.no_grad():
        with films.applied(identity):
            torch.testing.assert_close(module(x), plain)
        with films.applied({**identity, "film.0.scale": scale, "film.0.shift": torch.zeros(4, 3)}):
            out = module(x)
        with films.applied({**identity, "film.3.shift": torch.full((4,), 0.5)}):
            shifted = module(x)
    torch.testing.assert_close(out[[0, 2, 3]], plain[[0, 2, 3]])
    assert not torch.allclose(out[1], plain[1])
    torch.testing.assert_close(shifted, plain + 0.5)
    torch.testing.assert_close(module(x), plain)  # outside the context: the module as it was


def test_another_threads_call_does_not_see_the_films_of_this_one():
    module = small()
    x = torch.randn(3, 2, 5)
    films = LayerFilm(module, ("3",), lambda: module(x))
    plain = module(x).detach()
    seen = {}
    with films.applied({"film.3.scale": torch.zeros(4), "film.3.shift": torch.zeros(4)}):  # here: every output 0
        worker = threading.Thread(target=lambda: seen.setdefault("out", module(x).detach()))
        worker.start()
        worker.join()
        assert torch.equal(module(x), torch.zeros(3, 4))
    torch.testing.assert_close(seen["out"], plain)


def test_bad_film_layers_are_named():
    module = small()
    with pytest.raises(ValueError, match=r"\['9'\] are not submodules of Sequential"):
        LayerFilm(module, ("9",), lambda: None)
    gru = nn.GRU(2, 2, batch_first=True)
    holder = nn.Sequential(gru)
    with pytest.raises(ValueError, match="returns tuple, not one tensor"):
        LayerFilm(holder, ("0",), lambda: holder(torch.zeros(1, 3, 2)))


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "din"])
def test_film_in_a_recommender_starts_as_the_identity_and_reads_per_event_parameters(backbone):
    cfg = ModelConfig(backbone=backbone, embed_dim=8, num_blocks=2, dropout=0.0)
    torch.manual_seed(0)
    plain = Recommender(NUM_ITEMS, L, cfg).eval()
    filmed = Recommender(NUM_ITEMS, L, cfg.model_copy(update={"film": True})).eval()
    missing, unexpected = filmed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("global_params.film_") for k in missing)
    layers = ("blocks.0", "blocks.1") if backbone == "sasrec" else ("items",)
    film_names = [f"film.{layer}.{k}" for layer in layers for k in ("scale", "shift")]
    assert filmed.param_spec.names == [*plain.param_spec.names, *film_names]
    assert all(dict(filmed.param_spec.entries)[n] == (8,) for n in film_names)
    gen = torch.Generator().manual_seed(1)
    history = torch.randint(1, NUM_ITEMS, (3, L), generator=gen)
    items = torch.randint(1, NUM_ITEMS, (6,), generator=gen)
    inverse = torch.arange(6) % 3
    with torch.no_grad():
        torch.testing.assert_close(filmed(history, items, inverse), plain(history, items, inverse))
        params = {n: v.expand(3, *v.shape).clone() for n, v in filmed.theta_g().items()}
        params[film_names[0]][1] *= 3.0  # only event 1's first FiLM layer
        scores = filmed(history, items, inverse, params)
    base = plain(history, items, inverse).detach()
    torch.testing.assert_close(scores[inverse != 1], base[inverse != 1])
    assert not torch.allclose(scores[inverse == 1], base[inverse == 1])


def test_film_on_recommendation_trains_exports_and_the_device_graph_takes_it(tmp_path):
    """`duet train --film` (base, then DUET), `duet export`: onnxruntime agrees with torch for
    generated FiLM parameters, which are graph inputs beside the head's."""
    model, bundle = train_export_and_check_tiny(tmp_path, ["--film"], (1, L))
    assert "film.blocks.0.scale" in model.device_model.param_spec.names
    assert {"film_blocks_0_scale", "film_blocks_0_shift"} <= {i.name for i in bundle.session.get_inputs()}

"""The image task: the digits fleet, its windows, the CNN + generated head, the baselines,
the metrics (against scikit-learn) and the commands, on a small fleet."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from duet.cli import app
from duet.config import GeneratorConfig, ModelConfig
from duet.duet_model import DuetModel
from duet.errors import DuetError
from duet.tasks.fleet.store import SPLIT_CODE, load_fleet
from duet.tasks.images.baselines import (
    adaptation_rows,
    batch_norms,
    bnstats_images,
    finetune_images,
    tent_images,
)
from duet.tasks.images.fleet import FleetConfig, build_digits_fleet, digits, prepare_fleet
from duet.tasks.images.metrics import classification_metrics, macro_f1, per_group_accuracy
from duet.tasks.images.model import ImageClassifier

SMALL = FleetConfig(seen_devices=24, unseen_valid_devices=6, unseen_test_devices=6, train_per_device=20,
                    valid_per_device=16, test_per_device=16, unseen_per_device=24, adapt=8, window_len=6)
runner = CliRunner()


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("images") / "fleet"
    prepare_fleet(out, "digits-fleet", SMALL)
    return out


def test_fleet_is_deterministic_for_a_seed_and_no_image_is_in_two_pools():
    a, ya, fa = build_digits_fleet(SMALL)
    b, yb, fb = build_digits_fleet(SMALL)
    c, _, _ = build_digits_fleet(SMALL.model_copy(update={"seed": 1}))
    assert all(np.array_equal(a[k], b[k]) for k in a) and np.array_equal(ya, yb) and fa == fb
    assert not np.array_equal(a["source"], c["source"])
    pools = [set(a["source"][a["split"] == code].tolist()) for code in SPLIT_CODE.values()]
    assert pools[0] and pools[1] and pools[2]
    assert not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])
    images, labels = digits()
    assert np.array_equal(ya, labels[a["source"]])  # every sample keeps its image's label


def test_each_device_shift_is_applied_as_its_manifest_says(fleet_dir):
    data = load_fleet(fleet_dir)
    images, _ = digits()
    checked = set()
    for device in data.device_info():
        shift = device["shift"]
        rows = np.flatnonzero(data.device == device["id"])
        source = images[data.source[rows]].astype(np.float64)
        if shift["type"] == "rotation":
            want = ndimage.rotate(source, shift["angle"], axes=(1, 2), reshape=False, order=1)
        elif shift["type"] == "inversion":
            want = 1.0 - shift["contrast"] * source
        elif shift["type"] == "thickness":
            want = (1 - shift["strength"]) * source + shift["strength"] * ndimage.grey_dilation(source, size=(1, 2, 2))
        else:
            continue
        np.testing.assert_allclose(data.x[rows, 0], np.clip(want, 0, 1), atol=1e-6)
        checked.add(shift["type"])
    assert checked == {"rotation", "inversion", "thickness"}


def test_unseen_devices_never_appear_in_training(fleet_dir):
    data = load_fleet(fleet_dir, ("train", "valid"))
    unseen = {d["id"] for d in data.device_info() if d["kind"] == "unseen"}
    assert len(unseen) == SMALL.unseen_valid_devices + SMALL.unseen_test_devices
    assert not unseen & set(data["train"].device.tolist())
    assert not unseen & set(data.device[data.split == SPLIT_CODE["train"]].tolist())
    assert unseen & set(data["valid"].device.tolist())  # scored on validation, never trained on
    assert "test" not in data.labels  # training never loads the test labels


def test_a_window_is_its_devices_most_recent_samples_up_to_itself(fleet_dir):
    data = load_fleet(fleet_dir, ("valid",))
    rows = data["valid"].rows
    index, mask = data.window_rows(rows, 6)
    for row, idx, m in zip(rows, index, mask, strict=True):
        got = idx[m]
        assert got[-1] == row and np.all(np.diff(got) == 1)
        assert np.all(data.device[got] == data.device[row])
        assert len(got) == min(6, data.position[row] + 1)
        assert not m[len(got):].any()  # left-aligned: padding only after the samples


def test_scored_samples_exclude_each_devices_adaptation_prefix(fleet_dir):
    data = load_fleet(fleet_dir, ("valid", "test"))
    for name in ("valid", "test"):
        assert not data.adapt[data[name].rows].any()
        per_device = np.bincount(data.device[(data.split == SPLIT_CODE[name]) & (data.adapt == 1)])
        assert set(per_device[per_device > 0].tolist()) == {SMALL.adapt}


def _image_duet(encoder: str) -> DuetModel:
    torch.manual_seed(0)
    classifier = ImageClassifier((1, 8, 8), 10, ModelConfig(backbone="cnn", embed_dim=16))
    return DuetModel(classifier, 6, GeneratorConfig(encoder=encoder, dropout=0.0)).eval()


@pytest.mark.parametrize("encoder", ["mean", "attnpool", "set"])
def test_generated_head_depends_on_the_window_and_not_on_its_order(fleet_dir, encoder):
    data = load_fleet(fleet_dir, ("train",))
    model = _image_duet(encoder)
    by_type = {}
    for device in data.device_info():
        by_type.setdefault(device["shift"]["type"], device["id"])
    windows = [torch.from_numpy(data.x[np.flatnonzero(data.device == d)[:6]]) for d in by_type.values()]
    window = torch.stack(windows)  # (devices, 6, 1, 8, 8), one per shift type
    mask = torch.ones(window.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        params = model.generate(window, mask)
        shuffled = model.generate(window[:, torch.randperm(6)], mask)
        padded = torch.cat([window, torch.zeros_like(window[:, :2])], 1)
        with_padding = model.generate(padded, torch.cat([mask, torch.zeros(len(window), 2, dtype=torch.bool)], 1))
    for name, value in params.items():
        assert not torch.allclose(value[0], value[1], atol=1e-6), name  # different shifts, different heads
        torch.testing.assert_close(shuffled[name], value, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(with_padding[name], value, atol=1e-5, rtol=1e-5)


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 2 * np.eye(5)[y] * rng.integers(0, 2, (300, 1))
    pred = logits.argmax(1)
    groups = {"half": np.arange(300) < 150}
    metrics = classification_metrics(y, logits, groups)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert metrics["accuracy_half"] == pytest.approx(accuracy_score(y[:150], pred[:150]))
    # A class predicted but never true counts as an F1 of 0, as scikit-learn's default does.
    assert macro_f1(np.array([0, 0, 1]), np.array([0, 2, 1])) == pytest.approx(
        f1_score([0, 0, 1], [0, 2, 1], average="macro"))
    assert per_group_accuracy(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]), np.array([7, 7, 3, 3])) == {
        3: 1.0, 7: 0.5}


def test_tent_updates_batch_norm_and_fine_tuning_uses_labels_without_touching_the_global_model(fleet_dir):
    data = load_fleet(fleet_dir, ("valid",))
    torch.manual_seed(0)
    base = ImageClassifier((1, 8, 8), 10, ModelConfig(backbone="cnn", embed_dim=16)).eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    plain = np.concatenate([base(torch.from_numpy(data.x[data["valid"].rows])).detach().numpy()])
    tent = tent_images(base, data["valid"], steps=3, lr=1e-2)
    tuned = finetune_images(base, data["valid"], k=5, steps=5, lr=1e-2)
    for name, value in base.state_dict().items():
        assert torch.equal(value, before[name]), name  # every device's copy is discarded
    assert not np.allclose(tent.logits, plain, atol=1e-4)
    assert not np.allclose(tuned.logits, plain, atol=1e-4)
    assert np.all(tent.seconds > 0) and len(tent.seconds) == len(np.unique(data["valid"].device))
    assert len(batch_norms(base)) == 3


def test_batch_norm_statistics_come_from_the_device_and_its_prior(fleet_dir):
    """Prior 0: each device's copy normalises with its own samples' statistics (a worked check against
    torch's batch statistics); a huge prior gives back the global model; no gradient, base untouched."""
    data = load_fleet(fleet_dir, ("valid",))
    torch.manual_seed(0)
    base = ImageClassifier((1, 8, 8), 10, ModelConfig(backbone="cnn", embed_dim=16)).eval()
    for norm in batch_norms(base):  # training-time statistics far from any device's
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(9.0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    split = data["valid"]
    plain = base(torch.from_numpy(data.x[split.rows])).detach().numpy()
    np.testing.assert_allclose(bnstats_images(base, split, prior=10**9).logits, plain, atol=1e-4)
    own = bnstats_images(base, split, prior=0)
    device = int(split.device[0])
    x = torch.from_numpy(data.x[adaptation_rows(data, "valid", device)])
    local = copy.deepcopy(base).eval()
    for norm in batch_norms(local):  # layer by layer: the statistics of its input on the device's samples
        captured: list[torch.Tensor] = []
        handle = norm.register_forward_pre_hook(lambda _, inputs, into=captured: into.append(inputs[0]))
        with torch.no_grad():
            local(x)
        handle.remove()
        dims = [0, *range(2, captured[0].dim())]
        norm.running_mean.copy_(captured[0].mean(dims))
        norm.running_var.copy_(captured[0].var(dims, unbiased=True))
    mine = split.device == device
    with torch.no_grad():
        expected = local(torch.from_numpy(data.x[split.rows[mine]])).numpy()
    # training-mode normalisation divides by the biased variance, this check by the unbiased one
    np.testing.assert_allclose(own.logits[mine], expected, rtol=2e-2, atol=2e-2)
    assert not np.allclose(own.logits, plain, atol=1e-3)
    for name, value in base.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_npz_source_keeps_a_users_own_devices_and_refuses_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((120, 6, 6)).astype(np.float32) * 255
    y = rng.integers(0, 3, 120)
    device = np.repeat(np.arange(6), 20)
    np.savez(tmp_path / "own.npz", x=x, y=y, device=device)
    manifest = prepare_fleet(tmp_path / "own", "npz", FleetConfig(window_len=4, adapt=3), path=tmp_path / "own.npz")
    assert manifest["image_shape"] == [1, 6, 6] and manifest["num_classes"] == 3
    data = load_fleet(tmp_path / "own")
    assert data.x.max() <= 1.0 and sorted(data.source.tolist()) == list(range(120))
    for name in ("train", "valid", "test"):
        split = data[name]
        np.testing.assert_array_equal(split.y, y[data.source[split.rows]])
    np.savez(tmp_path / "bad.npz", x=x, device=device)
    with pytest.raises(DuetError, match=r"bad\.npz: missing array\(s\) y"):
        prepare_fleet(tmp_path / "bad", "npz", FleetConfig(), path=tmp_path / "bad.npz")
    np.savez(tmp_path / "nan.npz", x=np.full((10, 4, 4), np.nan), y=np.zeros(10, int), device=np.zeros(10, int))
    with pytest.raises(DuetError, match="x must be finite"):
        prepare_fleet(tmp_path / "nan", "npz", FleetConfig(), path=tmp_path / "nan.npz")


def test_commands_train_and_evaluate_an_image_fleet(fleet_dir, tmp_path):
    base, duet = tmp_path / "base", tmp_path / "duet"
    common = ["--data", str(fleet_dir), "--epochs", "2", "--threads", "1", "--no-progress", "--embed-dim", "16"]
    result = runner.invoke(app, ["train", "--out", str(base), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--out", str(duet), "--method", "duet", "--init", str(base), *common])
    assert result.exit_code == 0, result.output
    config = json.loads((duet / "config.json").read_text())
    assert config["task"] == "images" and config["model"]["backbone"] == "cnn"
    assert config["generator"]["encoder"] == "mean"  # the image task's order-free default
    result = runner.invoke(app, ["evaluate", "--run", str(duet), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and {"accuracy_seen", "accuracy_unseen", "macro_f1"} <= set(metrics)
    per_device = json.loads((duet / "device_accuracy_test.json").read_text())
    data = load_fleet(fleet_dir, ("test",))
    assert set(map(int, per_device)) == set(np.unique(data["test"].device).tolist())
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--backbone", "sasrec", *common])
    assert result.exit_code == 2 and "not a static part of the images task" in result.output


def test_compare_scores_every_method_on_the_same_devices_and_writes_the_report(fleet_dir, tmp_path, monkeypatch):
    import duet.tasks.images.compare as image_compare
    from duet.checkpoint import load_run
    from duet.tasks.images.compare import ImageCompareConfig, compare_images
    from duet.training.evaluation import evaluate_run

    cfg = ImageCompareConfig(data=str(fleet_dir), seeds=1, epochs=2, duet_epochs=1, ks=(3,), finetune_steps=(3,),
                             finetune_lrs=(1e-2,), tent_steps=(2,), tent_lrs=(1e-2,), windows=(1, 6))
    results = compare_images(cfg, tmp_path / "report", progress=False)
    seed = results["seeds"]["0"]
    assert set(seed["metrics"]) == {"global", "finetune-3", "tent", "bnstats", "armbn", "oracle", "duet-static",
                                    "duet-noswa", "duet"}
    # ARM-BN: its own run, trained with per-device statistics; its prior chosen on validation, its cost per device
    armbn_run = tmp_path / "report" / "runs" / "seed0" / "armbn"
    assert json.loads((armbn_run / "config.json").read_text())["train"]["method"] == "armbn"
    assert set(results["choices"]["armbn"][0]) == {"prior", "valid"}
    assert results["choices"]["armbn"][0]["prior"] in cfg.bn_priors
    assert seed["costs"]["armbn"]["median_s"] > 0
    assert set(seed["valid_metrics"]) == set(seed["metrics"]) - {"oracle"}
    assert seed["valid_metrics"]["armbn"]["accuracy"] == results["choices"]["armbn"][0]["valid"]
    summary = json.loads((tmp_path / "report" / "results.json").read_text())["summary"]
    for name in ("duet - armbn (unseen)", "duet - armbn (seen)", "armbn - bnstats (unseen)"):
        assert {"mean", "lo", "hi", "seed_level"} <= set(summary["differences"][name])
    assert "accuracy_unseen" in summary["valid_table"]["armbn"]
    assert {"lo", "hi", "seed_level"} <= set(summary["valid_differences"]["duet - global (unseen)"])
    devices = {m: set(acc) for m, acc in seed["device_accuracy"].items()}
    assert len({frozenset(d) for d in devices.values()}) == 1  # the same devices for every method
    base_test = evaluate_run(tmp_path / "report" / "runs" / "seed0" / "base", "test")
    assert seed["metrics"]["global"]["accuracy"] == pytest.approx(base_test["accuracy"])
    # At the dataset's own W, the window curve is the DUET row itself.
    assert seed["window_curve"]["duet"]["6"]["accuracy"] == pytest.approx(seed["metrics"]["duet"]["accuracy"])
    text = (tmp_path / "report" / "results.md").read_text()
    assert "| DUET (PPG+SWA) |" in text and "duet - global (unseen)" in text and "duet - armbn (unseen)" in text
    assert "| ARM-BN, trained for batch-norm statistics (no labels, no gradient) | device, no gradient |" in text
    assert "## Validation devices" in text
    assert (tmp_path / "report" / "accuracy_vs_window.png").stat().st_size > 0
    assert (tmp_path / "report" / "adaptation_time.png").stat().st_size > 0
    # DUET's variants: each trained (FiLM from its own base), the best on validation is DUET's row.
    variants = seed["variants"]
    assert set(variants) == {"head", "film", "set"}
    chosen = results["choices"]["duet"][0]["variant"]
    assert chosen == max(variants, key=lambda v: variants[v]["valid_accuracy"])
    assert seed["valid_metrics"]["duet"]["accuracy"] == variants[chosen]["valid_accuracy"]
    runs = tmp_path / "report" / "runs" / "seed0"
    assert json.loads((runs / "base-film" / "config.json").read_text())["model"]["film"] is True
    assert json.loads((runs / "duet-set" / "config.json").read_text())["generator"]["encoder"] == "set"
    assert json.loads((runs / "duet-set" / "config.json").read_text())["train"]["init_run"] == str(runs / "base")
    head_model = load_run(runs / "duet")[1]
    assert variants["head"]["payload_bytes"] == 4 * head_model.device_model.param_spec.numel
    film_channels = sum(load_run(runs / "duet-film")[1].device_model.backbone.block_channels)
    assert variants["film"]["payload_bytes"] == variants["head"]["payload_bytes"] + 4 * 2 * film_channels
    assert variants["set"]["payload_bytes"] == variants["head"]["payload_bytes"]
    assert all(v["generation_single_s"] > 0 for v in variants.values())
    assert summary["variants"][chosen]["chosen"] == 1 and "## DUET variants" in text
    # Rerun with the same configuration: the finished seed is reused, nothing is trained again.
    monkeypatch.setattr(image_compare, "_run", lambda *_a, **_k: pytest.fail("retrained a finished seed"))
    again = compare_images(cfg, tmp_path / "report", progress=False)
    assert again["seeds"]["0"]["metrics"] == seed["metrics"] and again["choices"] == results["choices"]
    with pytest.raises(BaseException, match="retrained"):  # another configuration starts the seeds again
        compare_images(cfg.model_copy(update={"bn_priors": (0,)}), tmp_path / "report", progress=False)


def test_a_rerun_reuses_only_the_first_finished_seeds_of_the_same_configuration(tmp_path):
    from duet.tasks.images.compare import ImageCompareConfig, _resumable

    cfg = ImageCompareConfig(data="fleet", seeds=3)
    saved = json.loads(cfg.model_dump_json())
    (tmp_path / "results.json").write_text(json.dumps(
        {"seeds": {"0": {"m": 0}, "2": {"m": 2}}, "choices": {"tent": ["seed 0", "seed 2"]}, "summary": {}}))
    (tmp_path / "compare_config.json").write_text(json.dumps({**saved, "seeds": 5}))
    assert _resumable(tmp_path, cfg) == {"seeds": {"0": {"m": 0}}, "choices": {"tent": ["seed 0"]}}
    (tmp_path / "compare_config.json").write_text(json.dumps({**saved, "bn_priors": [0]}))
    assert _resumable(tmp_path, cfg) == {"seeds": {}, "choices": {}}
    saved.pop("duet_variants")  # written before variants existed: not the same comparison
    (tmp_path / "compare_config.json").write_text(json.dumps(saved))
    assert _resumable(tmp_path, cfg) == {"seeds": {}, "choices": {}}


def test_compare_refuses_an_unknown_variant_in_one_line(fleet_dir, tmp_path):
    result = runner.invoke(app, ["compare", "--data", str(fleet_dir), "--out", str(tmp_path / "r"),
                                 "--variants", "head,wings"])
    assert result.exit_code == 2 and "wings" in result.output and "Traceback" not in result.output


def test_data_info_describes_an_image_fleet(fleet_dir):
    result = runner.invoke(app, ["data", "info", str(fleet_dir)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((fleet_dir / "manifest.json").read_text())
    assert f"{manifest['counts']['train']['samples']:,}" in result.output
    assert "unseen" in result.output and "rotation" in result.output


def test_film_makes_the_static_part_dynamic_and_the_generator_writes_it(fleet_dir):
    """With --film, each conv block's per-channel scale and shift join the dynamic parameters: the
    global model starts as without them (scale 1, shift 0), and per-sample values change the features."""
    data = load_fleet(fleet_dir, ("train",))
    torch.manual_seed(0)
    plain = ImageClassifier((1, 8, 8), 10, ModelConfig(backbone="cnn", embed_dim=16)).eval()
    torch.manual_seed(0)
    filmed = ImageClassifier((1, 8, 8), 10, ModelConfig(backbone="cnn", embed_dim=16, film=True)).eval()
    names = filmed.param_spec.names
    assert names[: len(plain.param_spec.names)] == plain.param_spec.names
    assert names[len(plain.param_spec.names):] == [f"film.{i}.{k}" for i in range(3) for k in ("scale", "shift")]
    x = torch.from_numpy(data.x[:4])
    with torch.no_grad():
        torch.testing.assert_close(filmed(x), plain(x))  # theta_g's FiLM is the identity
        params = {n: v.expand(4, *v.shape).clone() for n, v in filmed.theta_g().items()}
        params["film.1.scale"][2] *= 2.0  # only sample 2's second block is scaled
        out = filmed(x, params)
    torch.testing.assert_close(out[[0, 1, 3]], plain(x)[[0, 1, 3]])
    assert not torch.allclose(out[2], plain(x)[2])
    duet = DuetModel(filmed, 6, GeneratorConfig(encoder="mean", dropout=0.0)).eval()
    window = torch.from_numpy(data.x[:12]).reshape(2, 6, 1, 8, 8)
    with torch.no_grad():
        generated = duet.generate(window)
    assert {n: tuple(t.shape[1:]) for n, t in generated.items()} == dict(filmed.param_spec.entries)
    assert not torch.allclose(generated["film.0.scale"][0], generated["film.0.scale"][1])

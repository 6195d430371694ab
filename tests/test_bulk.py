"""`duet generate --windows FILE --out FILE`: the same heads as the service and `--window`, from every
input format; bad files are one-line errors naming the row or line; the output is never half there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NUM_ITEMS, W
from safetensors.numpy import save_file
from typer.testing import CliRunner

from duet.cli import app
from duet.cloud.bulk import load_heads
from duet.cloud.generation import GeneratorService
from duet.generate import generate_for_window
from duet.tasks.recommendation.data.store import tail_window

runner = CliRunner()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def fleet(n: int = 37, width: int = W + 3, seed: int = 0) -> np.ndarray:
    """Left-aligned windows of 1..width items, some longer than the run's W (their last W items count)."""
    rng = np.random.default_rng(seed)
    windows = rng.integers(1, NUM_ITEMS, (n, width))
    lengths = rng.integers(1, width + 1, n)
    windows[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return windows


def generate(run: Path, windows: Path, out: Path, *extra: str) -> None:
    result = runner.invoke(app, ["generate", "--run", str(run), "--windows", str(windows), "--out", str(out),
                                 "--no-progress", *extra])
    assert result.exit_code == 0, result.output


def text_file(path: Path, windows: np.ndarray, ids: np.ndarray | None = None) -> Path:
    lines = [",".join(str(i) for i in row[row != 0]) for row in windows]
    if ids is not None:
        lines = [f"{d}\t{line}" for d, line in zip(ids, lines, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bulk_heads_are_the_services_and_the_single_windows(duet_run: Path, tmp_path: Path) -> None:
    windows = fleet()
    np.save(tmp_path / "w.npy", windows.astype(np.int32))
    generate(duet_run, tmp_path / "w.npy", tmp_path / "heads.safetensors", "--chunk-size", "8")
    spec, metadata, params, ids = load_heads(tmp_path / "heads.safetensors")
    service = GeneratorService(duet_run)
    assert ids is None and metadata["spec_hash"] == service.spec_hash == spec.hash
    assert metadata["model_version"] == service.version and metadata["dtype"] == "fp32"
    assert params.shape == (len(windows), spec.numel) and params.dtype == np.float32
    # The service's own forward on the same windows, cut to the last W items as the service does.
    rows, mask = (np.stack(part) for part in zip(*(service.raw_rows(row[row != 0]) for row in windows), strict=True))
    np.testing.assert_array_equal(rows, tail_window(windows, W))
    np.testing.assert_allclose(params, service.generate(rows, mask), rtol=0, atol=1e-6)
    # `duet generate --window`: the unfolded model, one window at a time.
    for b in (0, 5, len(windows) - 1):
        single, _ = generate_for_window(duet_run, ",".join(str(i) for i in windows[b][windows[b] != 0]))
        np.testing.assert_allclose(params[b], spec.flatten({k: v[None] for k, v in single.items()})[0],
                                   rtol=0, atol=1e-6)


def test_every_input_format_gives_the_same_heads(duet_run: Path, tmp_path: Path) -> None:
    windows, device_id = fleet(20, W), np.arange(20, dtype=np.int64) * 7 + 1_000_000_000_000
    np.save(tmp_path / "w.npy", windows)
    save_file({"windows": windows.astype(np.int32), "device_id": device_id}, str(tmp_path / "w.safetensors"))
    inputs = {"npy": tmp_path / "w.npy", "safetensors": tmp_path / "w.safetensors",
              "text": text_file(tmp_path / "w.txt", windows), "text-ids": text_file(tmp_path / "w.tsv", windows, device_id)}
    got = {}
    for name, path in inputs.items():
        generate(duet_run, path, tmp_path / f"{name}.safetensors", "--chunk-size", "6")
        got[name] = load_heads(tmp_path / f"{name}.safetensors")
    for name, (_, _, params, ids) in got.items():
        np.testing.assert_array_equal(params, got["npy"][2], err_msg=name)
        if name in ("safetensors", "text-ids"):
            np.testing.assert_array_equal(ids, device_id)
        else:
            assert ids is None, name


def test_fp16_output_and_chunking(duet_run: Path, tmp_path: Path) -> None:
    windows = fleet(50)
    np.save(tmp_path / "w.npy", windows)
    generate(duet_run, tmp_path / "w.npy", tmp_path / "a.safetensors", "--chunk-size", "1")
    generate(duet_run, tmp_path / "w.npy", tmp_path / "b.safetensors", "--chunk-size", "1000")
    generate(duet_run, tmp_path / "w.npy", tmp_path / "h.safetensors", "--dtype", "fp16", "--chunk-size", "1000")
    a, b, h = (load_heads(tmp_path / f"{n}.safetensors")[2] for n in "abh")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # chunking changes at most float rounding
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h, b.astype(np.float16))


BAD = [  # (file name, content maker, message)
    ("w.npy", lambda p: np.save(p, np.array([[1, 2], [3, NUM_ITEMS]])), f"row 2: token ids must be in 1..{NUM_ITEMS - 1}"),
    ("w.npy", lambda p: np.save(p, np.array([[1, 2, 0], [3, 0, 4]])), "row 2: padding (0) before a token id at column 3"),
    ("w.npy", lambda p: np.save(p, np.array([[1, 2], [0, 0]])), "row 2: empty window"),
    ("w.npy", lambda p: np.save(p, np.array([[-1, 2]])), "row 1: token ids must be in"),
    ("w.npy", lambda p: np.save(p, np.array([[1, 2**64 - 1]], np.uint64)), "row 1: token ids must be in"),
    ("w.npy", lambda p: np.save(p, np.ones((3, 4), np.float32)), "2-D integer array (N, W) of token ids, got float32"),
    ("w.npy", lambda p: np.save(p, np.ones(3, np.int64)), "2-D integer array"),
    ("w.npy", lambda p: p.write_bytes(b"not numpy"), "not a readable .npy array"),
    ("w.safetensors", lambda p: save_file({"items": np.ones((2, 2), np.int64)}, str(p)), "expected a tensor `windows`"),
    ("w.safetensors", lambda p: save_file({"windows": np.ones((2, 2), np.int64), "device_id": np.ones(3, np.int64)},
                                          str(p)), "`device_id` must be an integer tensor (2,)"),
    ("w.safetensors", lambda p: p.write_bytes(b"\x01"), "not a readable safetensors file"),
    ("w.txt", lambda p: p.write_text("1,2\n3,x\n"), "w.txt:2: expected comma-separated token ids, got '3,x'"),
    ("w.txt", lambda p: p.write_text("1,2\n\n3\n"), "w.txt:2: empty window"),
    ("w.txt", lambda p: p.write_text("7\t1,2\n3\n"), "w.txt:2: expected DEVICE_ID<TAB>IDS like line 1"),
    ("w.txt", lambda p: p.write_text("a\t1,2\n"), "w.txt:1: device id must be an integer, got 'a'"),
    ("w.txt", lambda p: p.write_text("1_0\t1,2\n"), "w.txt:1: device id must be an integer, got '1_0'"),
    # strict integers: int() would read these as 10, 1 and 1
    ("w.txt", lambda p: p.write_text("1,2\n1_0\n"), "w.txt:2: expected comma-separated token ids, got '1_0'"),
    ("w.txt", lambda p: p.write_text("1,\u0661\n"), "w.txt:1: expected comma-separated token ids"),
    ("w.txt", lambda p: p.write_text("1,1.0\n"), "w.txt:1: expected comma-separated token ids, got '1,1.0'"),
    ("w.txt", lambda p: p.write_text("1,2\n" * 5 + f"{NUM_ITEMS}\n"), "w.txt:6: token ids must be in"),
    ("w.txt", lambda p: p.write_text(""), "no windows in the file"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD, ids=[m[:30] for _, _, m in BAD])
def test_bad_windows_files_are_one_line_errors(duet_run: Path, tmp_path: Path, name, make, message) -> None:
    make(tmp_path / name)
    out = tmp_path / "out" / "heads.safetensors"
    result = runner.invoke(app, ["generate", "--run", str(duet_run), "--windows", str(tmp_path / name),
                                 "--out", str(out), "--chunk-size", "2"])
    assert result.exit_code == 2, result.output
    line = one_line(result.stderr)
    assert str(tmp_path / name) in line and message in line, line
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_a_failure_late_in_the_file_leaves_no_output_and_keeps_an_old_one(duet_run: Path, tmp_path: Path) -> None:
    windows = fleet(100)
    windows[97, 0] = NUM_ITEMS  # found in the last chunk, after many were written
    np.save(tmp_path / "w.npy", windows)
    out = tmp_path / "heads.safetensors"
    out.write_bytes(b"the previous night's heads")
    result = runner.invoke(app, ["generate", "--run", str(duet_run), "--windows", str(tmp_path / "w.npy"),
                                 "--out", str(out), "--chunk-size", "4", "--overwrite"])
    assert result.exit_code == 2 and "row 98: token ids must be in" in one_line(result.stderr)
    assert out.read_bytes() == b"the previous night's heads"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.safetensors", "w.npy"]  # no temporary left


@pytest.mark.parametrize(("args", "message"), [
    (["--window", "1", "--windows", "{tmp}/w.npy"], "give exactly one of --window"),
    ([], "give exactly one of --window"),
    (["--windows", "{tmp}/w.npy"], "--windows needs --out"),
    (["--window", "1", "--out", "{tmp}/h.safetensors"], "--out is for bulk generation"),
    (["--windows", "{tmp}/nope.npy", "--out", "{tmp}/h.safetensors"], "no such windows file"),
    (["--windows", "{tmp}/w.npy", "--out", "{tmp}/w.npy"], "already exists (pass --overwrite"),
    (["--windows", "{tmp}/w.npy", "--out", "{tmp}/h.safetensors", "--dtype", "fp64"], "--dtype must be fp32 or fp16"),
    (["--windows", "{tmp}/w.npy", "--out", "{tmp}/h.safetensors", "--chunk-size", "0"], "--chunk-size must be at least 1"),
    (["--window", "1", "--device", "tpu"], "--device must be one of cpu, cuda, auto"),
    (["--window", f"3,{NUM_ITEMS}"], f"--window: values must be in 1..{NUM_ITEMS - 1}, got [{NUM_ITEMS}]"),
    (["--window", "3,x"], "--window: expected comma-separated integers, got '3,x'"),
    (["--window", " , "], "--window: at least one value is needed"),
])
def test_bad_generate_options_are_one_line_errors(duet_run: Path, tmp_path: Path, args, message) -> None:
    np.save(tmp_path / "w.npy", fleet(3))
    result = runner.invoke(app, ["generate", "--run", str(duet_run), *(a.format(tmp=tmp_path) for a in args)])
    assert result.exit_code == 2, result.output
    assert message in one_line(result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npy"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(duet_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", fleet(3))
    for argv in (["--window", "1"], ["--windows", str(tmp_path / "w.npy"), "--out", str(tmp_path / "h.safetensors")]):
        result = runner.invoke(app, ["generate", "--run", str(duet_run), "--device", "cuda", *argv])
        assert result.exit_code == 2 and "--device cuda: no CUDA device is available" in one_line(result.stderr)
    assert not (tmp_path / "h.safetensors").exists()


def test_device_cpu_is_the_default(duet_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", fleet(9))
    generate(duet_run, tmp_path / "w.npy", tmp_path / "a.safetensors")
    generate(duet_run, tmp_path / "w.npy", tmp_path / "b.safetensors", "--device", "cpu")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


# ---------------------------------------------------------------- a run whose samples are float arrays

def test_float_sample_runs_take_float_arrays_and_refuse_token_input(image_run: Path, tmp_path: Path) -> None:
    """An image run: (N, W', *shape) float windows give the service's heads (every position a sample,
    the last W used, shorter ones masked); --window and text files are refused in one line naming the way."""
    service = GeneratorService(image_run)
    shape, W_run = service.sample.shape, service.window_len
    rng = np.random.default_rng(3)
    for width in (W_run + 2, W_run - 1):
        windows = rng.random((5, width, *shape), dtype=np.float32)
        np.save(tmp_path / "w.npy", windows)
        generate(image_run, tmp_path / "w.npy", tmp_path / "heads.safetensors", "--chunk-size", "2", "--overwrite")
        _, metadata, params, _ = load_heads(tmp_path / "heads.safetensors")
        assert json.loads(metadata["sample"]) == service.sample.to_json()
        rows, mask = (np.stack(part) for part in zip(*(service.raw_rows(w) for w in windows), strict=True))
        assert mask.sum(1).tolist() == [min(width, W_run)] * 5
        np.testing.assert_allclose(params, service.generate(rows, mask), rtol=0, atol=1e-6)
    save_file({"windows": windows}, str(tmp_path / "w.safetensors"))
    generate(image_run, tmp_path / "w.safetensors", tmp_path / "st.safetensors", "--chunk-size", "2")
    np.testing.assert_array_equal(load_heads(tmp_path / "st.safetensors")[2], params)

    windows[1, 2, 0, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", windows)
    hint = f"this run's windows are float samples of shape ({', '.join(map(str, shape))})"
    cases = {("--windows", str(tmp_path / "bad.npy")): "row 2: sample 3 is not finite",
             ("--windows", str(text_file(tmp_path / "w.txt", fleet(3)))): hint,
             ("--windows", str(tmp_path / "heads.safetensors")): "`windows`",  # a heads file is no windows file
             ("--windows", str(tmp_path / "ints.npy")): f"a float array (N, W, {', '.join(map(str, shape))})"}
    np.save(tmp_path / "ints.npy", fleet(3))
    for argv, message in cases.items():
        result = runner.invoke(app, ["generate", "--run", str(image_run), *argv, "--out", str(tmp_path / "o.st")])
        assert result.exit_code == 2 and message in one_line(result.stderr), (argv, result.output)
    assert not (tmp_path / "o.st").exists()
    # The old bug: `--window` took an image run, then failed with "item ids must be in 1..-1".
    result = runner.invoke(app, ["generate", "--run", str(image_run), "--window", "1,2"])
    assert result.exit_code == 2
    assert one_line(result.stderr) == f"error: --window: {hint}: use POST /v1/parameters or --windows with a .npy " \
                                      f"of shape (N, W, {', '.join(map(str, shape))})"

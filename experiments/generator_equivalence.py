"""Does a change to the generator keep today's linear heads bitwise identical? Record, change, compare.

    PYTHONPATH=src python experiments/generator_equivalence.py record /tmp/before.pt   # on the old code
    PYTHONPATH=src python experiments/generator_equivalence.py compare /tmp/before.pt  # on the new code

For several heads (`layers.N.weight/bias` stacks) and generator configs (residual/paper,
low rank on and off, SWA on and off, every encoder) it records, right after
`torch.manual_seed(0)` and construction: the module tree (names and types), the state
dict, the outputs in eval mode and in train mode (dropout drawn after a fixed seed), the
gradients of a fixed loss, and `folded()`. `compare` rebuilds each generator with the
current code and requires every tensor to be bitwise equal, then loads each recorded
state dict into a generator built from another seed (strict) and requires the same
outputs: old checkpoints load unchanged. Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import sys

import torch

from duet.config import GeneratorConfig
from duet.generator.ppg import ParamGenerator
from duet.models.head import DynamicHead

EMBED_DIM, WINDOW = 12, 5
HEADS = [(16, 16, 16), (48, 32, 1), (8, 12, 6, 3)]
GENERATORS: list[dict] = [
    {}, {"mode": "paper"}, {"rank": 2}, {"rank": 2, "mode": "paper"}, {"rank": 64},
    {"num_generators": 1}, {"num_generators": 1, "rank": 3}, {"num_generators": 5, "temperature": 0.5},
    {"encoder": "attention"}, {"encoder": "mean"}, {"encoder": "attnpool", "mode": "paper"},
]


def build(widths: tuple[int, ...], gen: dict, seed: int = 0) -> ParamGenerator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(hidden_dim=24, layer_embed_dim=8, decoder_hidden=20, **gen)
    return ParamGenerator(DynamicHead(widths).param_spec, EMBED_DIM, WINDOW, cfg)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    features = torch.randn(6, WINDOW, EMBED_DIM, generator=g)
    lengths = torch.tensor([WINDOW, 1, 3, WINDOW, 2, 4])
    return features, torch.arange(WINDOW) < lengths[:, None]


def outputs(generator: ParamGenerator) -> dict[str, torch.Tensor]:
    """Everything a change could alter, flattened to {key: tensor}."""
    features, mask = inputs()
    out: dict[str, torch.Tensor] = {}
    generator.eval()
    with torch.no_grad():
        out.update({f"eval/{k}": v for k, v in generator(features, mask).items()})
    generator.train()
    torch.manual_seed(1)
    params = generator(features, mask)
    out.update({f"train/{k}": v.detach() for k, v in params.items()})
    loss = sum((v * torch.linspace(-1, 1, v[0].numel()).view(v[0].shape)).sum() for v in params.values())
    generator.zero_grad()
    loss.backward()
    out.update({f"grad/{k}": p.grad.clone() for k, p in generator.named_parameters()})
    generator.eval()
    folded = generator.folded(torch.arange(generator.spec.numel, dtype=torch.float32))
    if folded is not None:
        out["folded/weight"], out["folded/bias"] = folded
    return out


def record_one(widths: tuple[int, ...], gen: dict) -> dict:
    generator = build(widths, gen)
    return {
        "modules": [(name, type(m).__name__) for name, m in generator.named_modules()],
        "state": {k: v.clone() for k, v in generator.state_dict().items()},
        "outputs": outputs(generator),
    }


def cases() -> list[tuple[str, tuple[int, ...], dict]]:
    return [(f"{widths} {gen}", widths, gen) for widths in HEADS for gen in GENERATORS]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ in any bit, shape or dtype (or are missing on one side)."""
    if list(a) != list(b):
        return [f"keys {list(a)} != {list(b)}"]
    return [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]


def compare(recorded: dict) -> int:
    failures = 0
    features, mask = inputs()
    for key, widths, gen in cases():
        before, now = recorded[key], record_one(widths, gen)
        bad = [] if before["modules"] == now["modules"] else ["module tree"]
        bad += [f"state:{k}" for k in same(before["state"], now["state"])]
        bad += [f"output:{k}" for k in same(before["outputs"], now["outputs"])]
        other = build(widths, gen, seed=123).eval()
        other.load_state_dict(before["state"], strict=True)  # an old checkpoint, loaded by the new code
        with torch.no_grad():
            loaded = {f"eval/{k}": v for k, v in other(features, mask).items()}
        bad += [f"loaded:{k}" for k in same({k: before["outputs"][k] for k in loaded}, loaded)]
        print(f"{'OK  ' if not bad else 'DIFF'} {key}" + (f": {bad[:4]}" if bad else ""))
        failures += bool(bad)
    print(f"{len(cases()) - failures}/{len(cases())} configs bitwise identical")
    return int(failures > 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["record", "compare"])
    parser.add_argument("path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.action == "record":
        torch.save({key: record_one(widths, gen) for key, widths, gen in cases()}, args.path)
        print(f"recorded {len(cases())} configs to {args.path}")
        return 0
    return compare(torch.load(args.path))


if __name__ == "__main__":
    sys.exit(main())

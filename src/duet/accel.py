"""Where tensors live: `--device cpu | cuda | auto`, resolved once per command.

Models and batches are moved with `.to(device)`; results go back with `.cpu()`
before numpy. Asking for CUDA where there is none is a user mistake, said in
one line, not a traceback from deep inside torch.
"""

from __future__ import annotations

import torch

from duet.errors import DuetError

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` (or `cuda:N`) or `auto` (cuda when available) -> a torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no device found"
            raise DuetError(f"--device {name}: no CUDA device is available (torch {torch.__version__}, {build}); "
                            "use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DuetError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    raise DuetError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")

"""Service settings: one pydantic-settings class, validated at start-up (env prefix DUET_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of `duet serve`; `DUET_RUN=... DUET_MAX_BATCH=...` in the environment work too."""

    model_config = SettingsConfigDict(env_prefix="DUET_", extra="forbid", frozen=True)

    run: Path = Field(description="a finished DUET run directory (duet train --method duet)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes, each with its own model copy")
    max_batch: int = Field(64, ge=1, le=8192, description="most windows in one generator forward")
    # 0 = natural batching: a forward takes every request that arrived meanwhile
    # (while the previous forward ran, or in the same event-loop turn) without
    # waiting for more. Measured against 2 ms on 2 cores: same throughput at
    # concurrency 64, 3-4x the throughput at concurrency 1 (docs/PERFORMANCE.md).
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0,
                               description="extra time a request may wait for others to share its forward")
    # The generator's GRU takes a different kernel below 4 rows, which changes the
    # last bit of some outputs; padding every forward to >= 8 rows makes an answer
    # independent of how many requests happened to share its forward.
    min_rows: int = Field(8, ge=1, description="pad each forward to at least this many rows")
    threads: int = Field(1, ge=1, description="torch intra-op threads per worker")
    # inline: the forward runs on the event loop (measured faster at these sizes,
    # see docs/PERFORMANCE.md); thread: in a one-thread executor.
    executor: Literal["inline", "thread"] = "inline"
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a uvicorn worker process."""
        return {f"DUET_{name.upper()}": str(value) for name, value in self.model_dump().items()}

"""Service settings: one pydantic-settings class, validated at start-up (env prefix DUET_)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# RFC 6750 b64token characters; at least 16 of them, so a token cannot be guessed.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]{16,}=*")


def _parse_tokens(value: object) -> object:
    """`a,b,c` (DUET_TOKENS) -> ["a", "b", "c"]; lists pass through."""
    if isinstance(value, str):
        return [token.strip() for token in value.split(",") if token.strip()]
    return value


def _checked_tokens(tokens: list[str], where: str) -> list[str]:
    for n, token in enumerate(tokens, 1):
        if not TOKEN_PATTERN.fullmatch(token):
            # Never echo the token itself: the message names its position only.
            raise ValueError(f"{where}: token {n} is not a bearer token of at least 16 characters "
                             "from A-Z a-z 0-9 - . _ ~ + / (then optional '=')")
    return tokens


class Settings(BaseSettings):
    """Every knob of `duet serve`; `DUET_RUN=... DUET_MAX_BATCH=...` in the environment work too."""

    # hide_input_in_errors: a validation error must never print a token.
    model_config = SettingsConfigDict(env_prefix="DUET_", extra="forbid", frozen=True, hide_input_in_errors=True)

    run: Path = Field(description="a finished DUET run directory (duet train --method duet), or a symlink to one")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes, each with its own model copy")
    max_batch: int = Field(64, ge=1, le=8192, description="most windows in one generator forward")
    # 0 = natural batching: a forward takes every request that arrived meanwhile
    # (while the previous forward ran, or in the same event-loop turn) without
    # waiting for more. Measured against 2 ms on 2 cores: same throughput at
    # concurrency 64, 3-4x the throughput at concurrency 1 (docs/performance.md).
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0,
                               description="extra time a request may wait for others to share its forward")
    # The generator's GRU takes a different kernel below 4 rows, which changes the
    # last bit of some outputs; padding every forward to >= 8 rows makes an answer
    # independent of how many requests happened to share its forward.
    min_rows: int = Field(8, ge=1, description="pad each forward to at least this many rows")
    threads: int = Field(1, ge=1, description="torch intra-op threads per worker")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$", description="where generation runs: cpu | cuda | auto")
    # inline: the forward runs on the event loop (measured faster at these sizes,
    # see docs/performance.md); thread: in a one-thread executor.
    executor: Literal["inline", "thread"] = "inline"
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"

    # ---- auth (docs/reliability.md). No tokens at all = auth off.
    tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="bearer tokens, comma-separated in DUET_TOKENS")
    tokens_file: Path | None = Field(None, description="file with one bearer token per line (# comments allowed)")

    # ---- limits
    # A window of ~10,000 ids is ~60 KB of JSON; 64 KiB leaves room for the other fields.
    max_body_bytes: int = Field(65_536, ge=256, le=64 * 2**20, description="larger bodies get 413, unread")
    # None: 10 x the run's window length W. Longer windows are cut to their last W items;
    # beyond this they are refused (422), not silently cut.
    max_window: int | None = Field(None, ge=1, le=10_000, description="longest window accepted (default 10 x W)")
    request_timeout_s: float = Field(10.0, gt=0.0, le=600.0,
                                     description="deadline of a request: body read (408), queue + generation (504)")
    max_queue: int = Field(4096, ge=1, description="windows waiting for a forward; beyond it 503 + Retry-After")
    # Before a request exists (duet.cloud.connections): a connection owes its request head within
    # header_timeout of opening (or of its previous answer), and each worker keeps at most
    # max_connections open (lowered to fit `ulimit -n`); over the cap the oldest idle one is closed.
    header_timeout_s: float = Field(5.0, gt=0.0, le=600.0, description="seconds a connection may take to send a "
                                                                      "complete request head (408, closed)")
    max_connections: int = Field(1000, ge=1, le=1_000_000, description="open connections per worker; a new one "
                                                                       "beyond closes the oldest idle one")
    rate_limit: float = Field(0.0, ge=0.0, description="requests/s per token (per client IP without auth); 0 = off")
    rate_burst: float = Field(50.0, ge=1.0, description="requests allowed at once (the window is "
                                                        "ceil(burst / rate) seconds)")
    # memory: each worker process keeps its own windows (N workers: N x the limit);
    # redis: one limit across every worker and replica that names the same store.
    limits_store: str = Field("memory://", description="where rate limits are kept: memory:// or redis://HOST:PORT/DB")
    limits_fail: Literal["open", "closed"] = Field(
        "open", description="when the limits store does not answer: open = admit, closed = 503")

    # ---- signing (docs/reliability.md): the path travels to workers, never the key itself
    sign_key: Path | None = Field(None, description="Ed25519 private key file (duet keys generate): "
                                                    "every answer is signed in X-Duet-Signature")

    # ---- model lifecycle
    watch_interval_s: float = Field(1.0, ge=0.0, description="how often the run path is checked for a new "
                                                             "model (hot reload); 0 = never")
    graceful_timeout_s: float = Field(10.0, ge=0.0, description="on SIGTERM/SIGINT, how long in-flight "
                                                                "requests may take to finish")
    # Tests only (DUET_DEBUG_DELAY_MS; no CLI flag): every forward holds its answers this
    # much longer, without blocking the event loop, to make in-flight requests observable.
    debug_delay_ms: float = Field(0.0, ge=0.0, le=60_000.0)

    _file_tokens: list[str] = PrivateAttr(default_factory=list)

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        return _parse_tokens(value)

    @field_validator("tokens")
    @classmethod
    def _check_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        _checked_tokens([t.get_secret_value() for t in value], "DUET_TOKENS")
        return value

    @field_validator("limits_store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if value != "memory://" and not re.fullmatch(r"rediss?://[^\s/]+(/\d+)?(\?\S*)?", value):
            raise ValueError("expected memory:// or redis://HOST:PORT/DB")
        return value

    @model_validator(mode="after")
    def _read_tokens_file(self) -> Settings:
        if self.tokens_file is not None:
            try:
                text = self.tokens_file.read_text()
            except OSError as exc:
                raise ValueError(f"cannot read the tokens file {self.tokens_file}: {exc.strerror}") from None
            tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            if not tokens:
                raise ValueError(f"{self.tokens_file}: no tokens in the file (auth would refuse everyone)")
            self._file_tokens = _checked_tokens(tokens, str(self.tokens_file))
        return self

    def auth_tokens(self) -> list[str]:
        """Every accepted token (DUET_TOKENS and the file), duplicates removed; empty = auth off."""
        return list(dict.fromkeys([t.get_secret_value() for t in self.tokens] + self._file_tokens))

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a uvicorn worker process."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if name == "tokens":
                if value:  # explicit tokens only; a tokens file is re-read by each worker
                    env["DUET_TOKENS"] = ",".join(t.get_secret_value() for t in value)
                continue
            env[f"DUET_{name.upper()}"] = str(value)
        return env

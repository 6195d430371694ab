"""DeviceRuntime: one device's loop of observe -> refresh (cloud-generated head) -> score (local).

No gradient is ever computed here: the device uploads its recent window, the
service answers with its head parameters, and onnxruntime scores candidates.
When the service cannot be reached (or answers parameters made for another
head, or, with trusted keys, an answer that is not signed by one of them), the
device keeps the last parameters it received, or uses the bundle's global head
theta_g if it has none yet. A new bundle that fails verification is refused
the same way: the device keeps its bundle and its parameters.

A request policy (`duet.device.policy`) decides whether a refresh asks the service
at all: when it is not due, the device keeps the parameters it has (`kept`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import numpy as np

from duet.device.bundle import PAD, Bundle, left_aligned
from duet.device.client import ParameterClient, ServiceError
from duet.device.policy import RequestPolicy
from duet.errors import ArtifactError
from duet.signing import Keyring

log = logging.getLogger("duet.device")

SERVICE, LAST, GLOBAL, KEPT = "service", "last", "global", "kept"
DTYPES = ("fp32", "fp16")


class DeviceRuntime:
    """A device: its bundle, its real-time window, the head it currently scores with.

    `source` says where the head came from (`service`: the latest refresh
    succeeded; `last`: it failed and the previous answer is kept; `global`: no
    answer yet, theta_g; `kept`: the policy did not ask, the previous answer is kept)
    and `version` which model version produced it. `requests` and `bytes_received`
    count what the device sent for and got.

    `trusted_keys` (a Keyring or a public key file; for a bundle path): the bundle
    must be signed by one of them, and every answer by one of them or by a key
    the bundle lists. None: no signatures are checked.
    """

    def __init__(self, bundle: str | Path | Bundle, service_url: str, device_id: str, *,
                 timeout: float = 2.0, retries: int = 2, backoff: float = 0.05, dtype: str = "fp32",
                 token: str | None = None, trusted_keys: Keyring | str | Path | None = None,
                 policy: RequestPolicy | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if isinstance(bundle, Bundle) and trusted_keys is not None:
            raise ValueError("a loaded Bundle was verified already: give trusted_keys to Bundle(...)")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, trusted_keys=trusted_keys)
        self.client = ParameterClient(service_url, timeout=timeout, retries=retries, backoff=backoff, token=token,
                                      keys=self.bundle.answer_keys)
        self.device_id, self.dtype = device_id, dtype
        self.recent: deque[int] = deque(maxlen=self.bundle.window_len)
        self.params = self.bundle.theta_g
        self.source, self.version = GLOBAL, self.bundle.version
        self.last_error: str | None = None
        self.adaptation_seconds: float | None = None  # request sent -> parameters applied, last success
        self.last_answer_bytes = 0
        self.policy = policy or RequestPolicy()
        if self.policy.kind == "drift" and self.bundle.item_embedding is None:
            raise ValueError(f"{self.bundle.path}: the drift policy needs item embeddings; re-export the bundle")
        self.requests, self.bytes_received = 0, 0
        self._have_service_params = False
        self._generated_for: np.ndarray | None = None  # the window the service's parameters were made for

    def update_bundle(self, path: str | Path) -> None:
        """Switch to a new bundle (new static layers), verified with the same trusted keys.

        A bundle that fails verification (tampered, unsigned, signed by an unknown
        key) raises ArtifactError and changes nothing: the device keeps its bundle
        and its last good parameters. An accepted one starts from its global head.
        """
        try:
            new = Bundle(path, threads=self.bundle.threads, trusted_keys=self.bundle.trusted_keys)
        except ArtifactError as exc:
            self.last_error = str(exc)
            log.warning("device %s: new bundle refused (%s); keeping %s", self.device_id, exc, self.bundle.version)
            raise
        self.bundle, self.client.keys = new, new.answer_keys
        self.recent = deque(self.recent, maxlen=new.window_len)
        self.params, self.source, self.version, self.last_error = new.theta_g, GLOBAL, new.version, None
        self._have_service_params = False

    def observe(self, item_id: int) -> None:
        """Record an interaction (internal item id) in the real-time window."""
        if int(item_id) != PAD:
            self.recent.append(int(item_id))

    @property
    def window(self) -> list[int]:
        return list(self.recent)

    def refresh(self, window: object | None = None) -> str:
        """Ask the service for parameters for `window` (default: the observed one); return `source`."""
        ids = left_aligned(self.window if window is None else window, self.bundle.window_len)
        if not ids.any():
            # Nothing observed yet: there is nothing to personalise from (the service refuses
            # an empty window), so the device scores with the global head.
            self.params, self.source, self.version, self.last_error = self.bundle.theta_g, GLOBAL, self.bundle.version, None
            self._have_service_params = False
            return self.source
        if not self.policy.due(self._generated_for if self._have_service_params else None, ids,
                               self.bundle.item_embedding):
            self.source = KEPT
            return self.source
        started = time.perf_counter()
        self.requests += 1
        try:
            answer = self.client.fetch(self.device_id, ids[ids != PAD].tolist(), self.dtype, self.bundle.version)
            if answer.spec_hash != self.bundle.spec_hash:
                raise ServiceError(f"parameters for spec {answer.spec_hash!r}, the bundle's is {self.bundle.spec_hash!r}")
            self.bundle.spec.check(answer.params, batched=False)
        except (ServiceError, ValueError) as exc:  # ValueError: shapes that do not fit the bundle's head
            return self._fall_back(str(exc))
        self.params = {name: np.asarray(answer.params[name], dtype=np.float32)[None] for name in self.bundle.spec.names}
        self.adaptation_seconds = time.perf_counter() - started
        self.last_answer_bytes = answer.size
        self.bytes_received += answer.size
        self._generated_for = ids
        self.source, self.version, self.last_error = SERVICE, answer.version, None
        self._have_service_params = True
        return self.source

    def _fall_back(self, error: str) -> str:
        self.last_error = error
        self.source = LAST if self._have_service_params else GLOBAL
        if self.source == GLOBAL:
            self.params, self.version = self.bundle.theta_g, self.bundle.version
        log.warning("device %s: refresh failed (%s); using %s parameters", self.device_id, error, self.source)
        return self.source

    def score(self, history: object, candidates: object) -> np.ndarray:
        """history: item ids oldest first (padding ignored); candidates (C,) -> logits (C,) float32."""
        return self.bundle.score(history, candidates, self.params)

"""The device runtime: one device's loop of observe -> refresh (cloud-generated head) -> score (local).

One class for every task: the bundle says what a raw window sample is (`SampleSpec`) and
what the graph takes (`GraphInput`s), so the same loop serves token ids and float samples alike.

No gradient is ever computed here: the device uploads its recent window, the
service answers with its head parameters, and onnxruntime scores locally.
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

from duet.device.bundle import PAD, Bundle
from duet.device.client import ParameterClient, ServiceError, answer_cap
from duet.device.policy import RequestPolicy
from duet.device.rollback import BundleHistory, check_answer_version
from duet.errors import ArtifactError
from duet.signing import Keyring

log = logging.getLogger("duet.device")

SERVICE, LAST, GLOBAL, KEPT = "service", "last", "global", "kept"
DTYPES = ("fp32", "fp16")


class DeviceRuntime:
    """A device: its real-time window of raw samples, its head, and local scoring.

    `source` says where the head came from (`service`: the latest refresh
    succeeded; `last`: it failed and the previous answer is kept; `global`: no
    answer yet, theta_g; `kept`: the policy did not ask, the previous answer is kept)
    and `version` which model version produced it. `requests` and `bytes_received`
    count what the device sent for and got.

    `trusted_keys` (a Keyring or a public key file; for a bundle path): the bundle
    must be signed by one of them, and every answer by one of them or by a key
    the bundle lists. None: no signatures are checked.

    `privacy`: upload the window's features (the bundle's features graph, the generator's
    input) instead of the raw window; the service answers the same parameters. For item
    ids the features are embedding rows, which whoever holds the table (the cloud does)
    can map back to ids: weaker than for float samples, whose features are not a lookup.

    `state_file`: where the device remembers the newest bundle it accepted, so an
    older or expired one is refused across restarts too (duet.device.rollback).
    """

    def __init__(self, bundle: str | Path | Bundle, service_url: str, device_id: str, *,
                 timeout: float = 2.0, retries: int = 2, backoff: float = 0.05, dtype: str = "fp32",
                 token: str | None = None, trusted_keys: Keyring | str | Path | None = None, privacy: bool = False,
                 policy: RequestPolicy | None = None, state_file: str | Path | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if isinstance(bundle, Bundle) and trusted_keys is not None:
            raise ValueError("a loaded Bundle was verified already: give trusted_keys to Bundle(...)")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, trusted_keys=trusted_keys)
        self.history = BundleHistory(state_file)  # rollback protection: never an older or expired bundle
        self.history.admit(self.bundle)
        self.device_id, self.dtype, self.privacy = device_id, dtype, privacy
        # `timeout`: a deadline for each whole attempt (answer included), not for each read.
        self.client = ParameterClient(service_url, timeout=timeout, retries=retries, backoff=backoff, token=token,
                                      keys=self.bundle.answer_keys, max_answer_bytes=self._answer_cap(self.bundle))
        # Observed samples, oldest first, each with its features once computed (privacy mode).
        self.recent: deque[list] = deque(maxlen=self.bundle.window_len)
        self.params = self.bundle.theta_g
        self.source, self.version = GLOBAL, self.bundle.version
        self.last_error: str | None = None
        self.adaptation_seconds: float | None = None  # request sent -> parameters applied, last success
        self.last_answer_bytes = 0
        self.policy = policy or RequestPolicy()
        self.requests, self.bytes_received = 0, 0
        self._have_service_params = False
        self._generated_for: np.ndarray | None = None  # the window rows the service's parameters were made for

    # ------------------------------------------------------------ the window

    def observe(self, sample: object) -> None:
        """Record one raw sample (any layout of one sample) in the real-time window; padding (token 0) is ignored."""
        if self.bundle.sample.is_token and np.asarray(sample).size == 1 and int(np.asarray(sample).reshape(-1)[0]) == PAD:
            return
        rows = self.bundle.sample.rows(sample)
        if len(rows) != 1:
            raise ValueError(f"observe takes one sample, got {len(rows)}")
        self.recent.append([rows[0], None])

    @property
    def window(self) -> list[int] | np.ndarray:
        """The observed window, oldest first: item ids for token samples, else samples (n, *shape)."""
        if self.bundle.sample.is_token:
            return [int(row) for row, _ in self.recent]
        return self._observed_rows()

    def _observed_rows(self) -> np.ndarray:
        sample = self.bundle.sample
        if not self.recent:
            return np.zeros((0, *sample.shape), dtype=sample.dtype)
        return np.stack([row for row, _ in self.recent])

    def _rows(self, window: object) -> np.ndarray:
        """An explicit window (oldest first; token padding dropped) -> its last W samples."""
        sample = self.bundle.sample
        values = np.asarray(window, dtype=sample.dtype)
        if sample.is_token:
            values = values.reshape(-1)
            values = values[values != PAD]
        if values.size == 0:
            return np.zeros((0, *sample.shape), dtype=sample.dtype)
        return sample.rows(values)[-self.bundle.window_len:]

    def _observed_features(self) -> np.ndarray:
        """Features of the observed window, each sample's computed once (as it is first needed)."""
        missing = [entry for entry in self.recent if entry[1] is None]
        if missing:
            for entry, feature in zip(missing, self.bundle.features(np.stack([e[0] for e in missing])), strict=True):
                entry[1] = feature
        return np.stack([feature for _, feature in self.recent])

    # ------------------------------------------------------------ parameters

    def refresh(self, window: object | None = None) -> str:
        """Ask the service for parameters for `window` (default: the observed one); return `source`."""
        rows = self._observed_rows() if window is None else self._rows(window)
        if not len(rows):
            # Nothing observed yet: there is nothing to personalise from (the service refuses
            # an empty window), so the device scores with the global head.
            return self._use_global()
        if not self.policy.due(self._generated_for if self._have_service_params else None, rows,
                               self.bundle.features):
            self.source = KEPT
            return self.source
        if self.privacy:
            features = self._observed_features() if window is None else self.bundle.features(rows)
            source = self._ask(embedding=features.tolist())
        elif self.bundle.sample.is_token:
            source = self._ask(**{self.bundle.sample.field: rows.tolist()})
        else:
            source = self._ask(**{self.bundle.sample.field: rows.reshape(len(rows), -1).tolist()})
        if source == SERVICE:
            self._generated_for = rows
        return source

    def score(self, *args: object, **inputs: object) -> np.ndarray:
        """The graph's first output with the current head; values for the graph inputs in order
        (e.g. `score(history, candidates)` or `score(x)`) or by name."""
        outputs = self.bundle.run(self.bundle.named(args, inputs), self.params)
        return outputs[self.bundle.outputs[0]]

    def update_bundle(self, path: str | Path) -> None:
        """Switch to a new bundle (new static layers), verified with the same trusted keys.

        A bundle that fails verification (tampered, unsigned, signed by an unknown
        key, older than the newest accepted) or that cannot be recorded in the state
        file (a full disk) raises ArtifactError and changes nothing: the device keeps
        its bundle and its last good parameters. An accepted one starts from its global head.
        """
        try:
            try:
                new = Bundle(path, threads=self.bundle.threads, trusted_keys=self.bundle.trusted_keys)
                self.history.admit(new)
            except OSError as exc:  # a file that cannot be read: one line like any other refusal
                raise ArtifactError(f"{exc.filename or path}: unreadable ({exc.strerror or exc})") from None
        except ArtifactError as exc:
            self.last_error = str(exc)
            log.warning("device %s: new bundle refused (%s); keeping %s", self.device_id, exc, self.bundle.version)
            raise
        same_samples = new.sample == self.bundle.sample
        self.bundle, self.client.keys, self.client.max_answer_bytes = new, new.answer_keys, self._answer_cap(new)
        # Features come from the new static part; samples of another kind do not carry over.
        kept = [[row, None] for row, _ in self.recent] if same_samples else []
        self.recent = deque(kept, maxlen=new.window_len)
        self._use_global()

    def _answer_cap(self, bundle: Bundle) -> int:
        """The largest answer this bundle's head can need: its parameters in the requested dtype, plus the header."""
        return answer_cap(bundle.spec.numel, 2 if self.dtype == "fp16" else 4, bundle.spec.names)

    def _use_global(self) -> str:
        """Score with the bundle's global head (nothing to personalise from, or a new bundle)."""
        self.params, self.source, self.version, self.last_error = self.bundle.theta_g, GLOBAL, self.bundle.version, None
        self._have_service_params = False
        return self.source

    def _ask(self, **window: list) -> str:
        """Ask the service for parameters for one form of the window (`window=`, `samples=` or `embedding=`)."""
        started = time.perf_counter()
        self.requests += 1
        try:
            answer = self.client.fetch(self.device_id, dtype=self.dtype, version=self.bundle.version, **window)
            check_answer_version(answer.version, self.bundle, self.client.url)
            if answer.spec_hash != self.bundle.spec_hash:
                raise ServiceError(f"parameters for spec {answer.spec_hash!r}, the bundle's is {self.bundle.spec_hash!r}")
            self.bundle.spec.check(answer.params, batched=False)
        except (ServiceError, ValueError) as exc:  # ValueError: shapes that do not fit the bundle's head
            return self._fall_back(str(exc))
        self.params = {name: np.asarray(answer.params[name], dtype=np.float32)[None] for name in self.bundle.spec.names}
        self.adaptation_seconds = time.perf_counter() - started
        self.last_answer_bytes = answer.size
        self.bytes_received += answer.size
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

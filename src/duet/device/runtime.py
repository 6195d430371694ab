"""Device runtimes: one device's loop of observe -> refresh (cloud-generated head) -> score (local).

`DeviceRuntime` (recommendation: item ids, candidates scored) and `ImageRuntime`
(images classified) share everything but what a window is and what is scored.

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

from duet.device.bundle import PAD, BaseBundle, Bundle, ImageBundle, left_aligned
from duet.device.client import ParameterClient, ServiceError
from duet.device.policy import RequestPolicy
from duet.device.rollback import BundleHistory, check_answer_version
from duet.errors import ArtifactError
from duet.signing import Keyring

log = logging.getLogger("duet.device")

SERVICE, LAST, GLOBAL, KEPT = "service", "last", "global", "kept"
DTYPES = ("fp32", "fp16")


class _Runtime:
    """What every device runtime shares: the bundle, the client, the head in use and its fallbacks.

    `source` says where the head came from (`service`: the latest refresh
    succeeded; `last`: it failed and the previous answer is kept; `global`: no
    answer yet, theta_g; `kept`: the policy did not ask, the previous answer is kept)
    and `version` which model version produced it. `requests` and `bytes_received`
    count what the device sent for and got.

    `trusted_keys` (a Keyring or a public key file; for a bundle path): the bundle
    must be signed by one of them, and every answer by one of them or by a key
    the bundle lists. None: no signatures are checked.

    `privacy`: upload the window's features computed here (the generator's input)
    instead of the raw window; the service answers the same parameters.

    `state_file`: where the device remembers the newest bundle it accepted, so an
    older or expired one is refused across restarts too (duet.device.rollback).
    """

    BUNDLE: type[BaseBundle] = BaseBundle  # the task's bundle class

    def __init__(self, bundle: str | Path | BaseBundle, service_url: str, device_id: str, *,
                 timeout: float = 2.0, retries: int = 2, backoff: float = 0.05, dtype: str = "fp32",
                 token: str | None = None, trusted_keys: Keyring | str | Path | None = None, privacy: bool = False,
                 policy: RequestPolicy | None = None, state_file: str | Path | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if isinstance(bundle, BaseBundle) and trusted_keys is not None:
            raise ValueError("a loaded Bundle was verified already: give trusted_keys to Bundle(...)")
        self.bundle = bundle if isinstance(bundle, BaseBundle) else self.BUNDLE(bundle, trusted_keys=trusted_keys)
        if not isinstance(self.bundle, self.BUNDLE):
            raise ValueError(f"{type(self).__name__} needs a {self.BUNDLE.__name__}, got a {type(self.bundle).__name__}")
        self.history = BundleHistory(state_file)  # rollback protection: never an older or expired bundle
        self.history.admit(self.bundle)
        self.client = ParameterClient(service_url, timeout=timeout, retries=retries, backoff=backoff, token=token,
                                      keys=self.bundle.answer_keys)
        self.device_id, self.dtype, self.privacy = device_id, dtype, privacy
        self.recent: deque = deque(maxlen=self.bundle.window_len)
        self.params = self.bundle.theta_g
        self.source, self.version = GLOBAL, self.bundle.version
        self.last_error: str | None = None
        self.adaptation_seconds: float | None = None  # request sent -> parameters applied, last success
        self.last_answer_bytes = 0
        self.policy = policy or RequestPolicy()
        if self.policy.kind == "drift" and getattr(self.bundle, "item_embedding", None) is None:
            raise ValueError(f"{self.bundle.path}: the drift policy needs the bundle's item embeddings")
        self.requests, self.bytes_received = 0, 0
        self._have_service_params = False

    def update_bundle(self, path: str | Path) -> None:
        """Switch to a new bundle (new static layers), verified with the same trusted keys.

        A bundle that fails verification (tampered, unsigned, signed by an unknown
        key) raises ArtifactError and changes nothing: the device keeps its bundle
        and its last good parameters. An accepted one starts from its global head.
        """
        try:
            new = self.BUNDLE(path, threads=self.bundle.threads, trusted_keys=self.bundle.trusted_keys)
            self.history.admit(new)
        except ArtifactError as exc:
            self.last_error = str(exc)
            log.warning("device %s: new bundle refused (%s); keeping %s", self.device_id, exc, self.bundle.version)
            raise
        self.bundle, self.client.keys = new, new.answer_keys
        self.recent = deque(self.recent, maxlen=new.window_len)
        self._use_global()

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


class DeviceRuntime(_Runtime):
    """A recommendation device: its real-time window of item ids, scoring candidates locally.

    In privacy mode it uploads the window's item embeddings (from the bundle) instead
    of the ids. This keeps ids off the wire and out of the service's logs, but whoever
    holds the embedding table (the cloud does) can map embeddings back to ids: it is
    weaker than the image task's privacy mode, whose features are not a lookup.
    """

    BUNDLE = Bundle
    bundle: Bundle
    _generated_for: np.ndarray | None = None  # the window the service's parameters were made for

    def observe(self, item_id: int) -> None:
        """Record an interaction (internal item id) in the real-time window."""
        if int(item_id) != PAD:
            self.recent.append(int(item_id))

    @property
    def window(self) -> list[int]:
        return list(self.recent)

    def refresh(self, window: object | None = None) -> str:
        """Ask the service for parameters for `window` (default: the observed one); return `source`."""
        padded = left_aligned(self.window if window is None else window, self.bundle.window_len)
        ids = padded[padded != PAD]
        if not len(ids):
            # Nothing observed yet: there is nothing to personalise from (the service refuses
            # an empty window), so the device scores with the global head.
            return self._use_global()
        if not self.policy.due(self._generated_for if self._have_service_params else None, padded,
                               self.bundle.item_embedding):
            self.source = KEPT
            return self.source
        source = (self._ask(embedding=self.bundle.embeddings(ids).tolist()) if self.privacy
                  else self._ask(window=ids.tolist()))
        if source == SERVICE:
            self._generated_for = padded
        return source

    def score(self, history: object, candidates: object) -> np.ndarray:
        """history: item ids oldest first (padding ignored); candidates (C,) -> logits (C,) float32."""
        return self.bundle.score(history, candidates, self.params)


class ImageRuntime(_Runtime):
    """An image device: its W most recent images (unlabeled), classifying locally.

    `observe(image)` adds an image to the window; `refresh()` sends the window (the
    images, or in privacy mode their static features, computed here as each image is
    observed) and receives the head; `classify(images)` runs the bundle's graph.
    """

    BUNDLE = ImageBundle
    bundle: ImageBundle

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)
        if self.policy.kind != "always":
            raise ValueError(f"the image runtime asks on every refresh; policy {self.policy.kind!r} is for "
                             "recommendation devices")

    def observe(self, image: object) -> None:
        """Record one image (C*H*W floats in any layout) in the window; in privacy mode, its features too."""
        x = self.bundle.images(image)
        if len(x) != 1:
            raise ValueError(f"observe takes one image, got {len(x)}")
        self.recent.append(self.bundle.features(x)[0] if self.privacy else x[0])

    def refresh(self) -> str:
        """Ask the service for parameters for the observed window; return `source`."""
        if not self.recent:
            return self._use_global()
        window = np.stack(self.recent)
        if self.privacy:
            return self._ask(embedding=window.tolist())
        return self._ask(samples=window.reshape(len(window), -1).tolist())

    def classify(self, images: object) -> np.ndarray:
        """images (N, C, H, W) (or one image) -> class logits (N, classes) float32 with the current head."""
        return self.bundle.run(images, self.params)[0]

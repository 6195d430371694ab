"""The device side: a verified bundle, the parameter client and the runtime, for any task.

Depends on numpy, onnxruntime, safetensors and PyNaCl (plus the torch-free
duet.spec, duet.errors, duet.manifest, duet.atomic and duet.signing) only:
nothing here may import torch, pandas or matplotlib. `pip install '.[device]'`
installs exactly this.
"""

from duet.device.bundle import BUNDLE_FORMAT, Bundle, load_bundle
from duet.device.client import Answer, ParameterClient, ServiceError, UntrustedAnswer
from duet.device.policy import RequestPolicy
from duet.device.runtime import GLOBAL, KEPT, LAST, SERVICE, DeviceRuntime
from duet.signing import Keyring, PublicKey

__all__ = ["BUNDLE_FORMAT", "GLOBAL", "KEPT", "LAST", "SERVICE", "Answer", "Bundle", "DeviceRuntime", "Keyring",
           "ParameterClient", "PublicKey", "RequestPolicy", "ServiceError", "UntrustedAnswer", "load_bundle"]

"""The device side: a verified bundle, the parameter client and the runtime.

Depends on numpy, onnxruntime, safetensors and PyNaCl (plus the torch-free
duet.spec, duet.errors, duet.manifest, duet.atomic and duet.signing) only:
nothing here may import torch, pandas or matplotlib. `pip install '.[device]'`
installs exactly this.
"""

from duet.device.bundle import BaseBundle, Bundle, ImageBundle, left_aligned, load_bundle
from duet.device.client import Answer, ParameterClient, ServiceError, UntrustedAnswer
from duet.device.runtime import GLOBAL, LAST, SERVICE, DeviceRuntime, ImageRuntime
from duet.signing import Keyring, PublicKey

__all__ = ["GLOBAL", "LAST", "SERVICE", "Answer", "BaseBundle", "Bundle", "DeviceRuntime", "ImageBundle",
           "ImageRuntime", "Keyring", "ParameterClient", "PublicKey", "ServiceError", "UntrustedAnswer",
           "left_aligned", "load_bundle"]

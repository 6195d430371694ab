"""The device side: a verified bundle, the parameter client and the runtime.

Depends on numpy, onnxruntime and safetensors (plus duet.spec and duet.errors,
both torch-free) only: nothing here may import torch.
"""

from duet.device.bundle import Bundle, left_aligned
from duet.device.client import Answer, ParameterClient, ServiceError
from duet.device.runtime import GLOBAL, LAST, SERVICE, DeviceRuntime

__all__ = ["GLOBAL", "LAST", "SERVICE", "Answer", "Bundle", "DeviceRuntime", "ParameterClient", "ServiceError",
           "left_aligned"]

"""Request and response bodies of the service (they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ItemId = Annotated[int, Field(ge=1, description="internal item id (1 .. num_items-1; 0 is padding)")]
FLOAT32_MAX = 3.4028234663852886e38
# A float32 value: finite and in range; strict: no "1.5" or true.
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
Row = Annotated[list[Finite], Field(min_length=1, max_length=65_536)]
INPUTS = ("window", "samples", "embedding")


class ParametersRequest(BaseModel):
    """A device's real-time window; the answer is that device's dynamic-head parameters.

    The window comes as item ids (`window`, recommendation), as images (`samples`,
    image runs) or, in privacy mode, as its features computed on the device
    (`embedding`, either task): exactly one of the three.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"device_id": "phone-42", "window": [17, 5, 230], "dtype": "fp16"}],
        "oneOf": [{"required": [name]} for name in INPUTS],
    })

    # Not nullable: a request names exactly one of the three (the schema's oneOf).
    device_id: str = Field(min_length=1, max_length=128, description="opaque device id (logged, never stored)")
    window: list[ItemId] = Field(
        None, min_length=1, max_length=10_000,
        description="recent interactions, oldest first, at least one; cut to the last W items (W = the run's "
                    "window_len). Longer than `max_window` (GET /v1/models; default 10 x W) is refused with 422.",
    )
    samples: list[Row] = Field(
        None, min_length=1, max_length=10_000,
        description="image runs: the window's images, oldest first, each flattened to C*H*W floats (row-major "
                    "(C, H, W), as the model sees them); cut to the last W. At most `max_window` images; each "
                    "exactly `image_shape`'s size (GET /v1/models); finite.",
    )
    embedding: list[Row] = Field(
        None, min_length=1, max_length=10_000,
        description="privacy mode, either task: the window's features computed on the device (item embeddings "
                    "for recommendation, the static CNN's features for images), one row of `feature_dim` floats "
                    "per window position, oldest first; cut to the last W. The answer equals the one for the raw "
                    "window. At most `max_window` rows; finite.",
    )
    dtype: Literal["fp32", "fp16"] = Field("fp32", description="precision of the returned parameters")
    version: str | None = Field(
        None, max_length=128,
        description="model version the device's bundle was exported from; 409 if the service serves another",
    )

    @model_validator(mode="after")
    def _one_input(self) -> ParametersRequest:
        if sum(getattr(self, name) is not None for name in INPUTS) != 1:
            raise ValueError("give exactly one of `window` (item ids), `samples` (images) and `embedding` "
                             "(the window's features, privacy mode)")
        return self

    @property
    def input_field(self) -> str:
        return next(name for name in INPUTS if getattr(self, name) is not None)


class ParametersJSON(BaseModel):
    """The JSON form of an answer (`Accept: application/json`)."""

    model_version: str
    spec_hash: str = Field(description="hash of the head's ParamSpec; a device checks it against its bundle")
    dtype: Literal["fp32", "fp16"]
    params_sha256: str = Field(description="sha256 of the parameters' little-endian bytes in spec order "
                                           "(the data section of the safetensors form)")
    params: dict[str, list] = Field(description="parameter name -> nested lists of the parameter's shape")


class LayerInfo(BaseModel):
    name: str
    shape: list[int]


class ModelInfo(BaseModel):
    version: str
    task: Literal["recommendation", "images"]
    run: str
    method: str
    backbone: str
    spec_hash: str
    params: list[LayerInfo] = Field(description="the dynamic head's parameters, in spec order")
    numel: int
    dtypes: list[str]
    answer_bytes: dict[str, int] = Field(description="size of a safetensors answer per dtype")
    window_len: int
    max_window: int = Field(description="longest window accepted; longer ones get 422")
    feature_dim: int = Field(description="width D of an `embedding` row (privacy mode)")
    image_shape: list[int] | None = Field(description="images: (channels, height, width) of a sample; null otherwise")
    num_classes: int | None = Field(description="images: classes of the head's output; null otherwise")
    history_len: int | None = Field(description="recommendation: click-history length L; null for images")
    num_items: int | None = Field(description="recommendation: item vocabulary incl. padding; null for images")
    signing_key: str | None = Field(description="key id of the Ed25519 key that signs every answer "
                                                "(X-Duet-Signature); null when answers are not signed")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok", "loading", "stopping"]


class FieldError(BaseModel):
    field: str | None = Field(description="the request field at fault: `window[3]`, `dtype`, `body` for the "
                                          "body as a whole; null when the error is not about a field")
    message: str


class ErrorDetail(FieldError):
    code: str = Field(description="machine-readable kind: invalid_request, invalid_json, unauthorized, "
                                  "rate_limited, body_too_large, request_timeout, version_not_served, "
                                  "not_ready, overloaded, timeout, not_found, ...")
    errors: list[FieldError] = Field(description="every field error (the first one is also in field/message)")


class ErrorResponse(BaseModel):
    """The one shape of every error answer of the service."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "code": "invalid_request", "message": "unknown item id 9999 (item ids are 1 .. 3706)", "field": "window[3]",
        "errors": [{"field": "window[3]", "message": "unknown item id 9999 (item ids are 1 .. 3706)"}]}}]})

    error: ErrorDetail

"""Request and response bodies of the service (they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ItemId = Annotated[int, Field(ge=1, description="internal item id (1 .. num_items-1; 0 is padding)")]


class ParametersRequest(BaseModel):
    """A device's real-time window; the answer is that device's dynamic-head parameters."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"device_id": "phone-42", "window": [17, 5, 230], "dtype": "fp16"}],
        "oneOf": [{"required": ["window"]}, {"required": ["embedding"]}],
    })

    # Not nullable: a request names exactly one of the two (the schema's oneOf).
    device_id: str = Field(min_length=1, max_length=128, description="opaque device id (logged, never stored)")
    window: list[ItemId] = Field(
        None, max_length=10_000,
        description="recent interactions, oldest first; cut to the last W items (W = the run's window_len)",
    )
    embedding: list[float] = Field(
        None, max_length=65_536,
        description="privacy mode (planned): pooled embeddings of the window instead of item ids. "
                    "Not implemented yet: a request with `embedding` is answered 501.",
    )
    dtype: Literal["fp32", "fp16"] = Field("fp32", description="precision of the returned parameters")
    version: str | None = Field(
        None, max_length=128,
        description="model version the device's bundle was exported from; 409 if the service serves another",
    )

    @model_validator(mode="after")
    def _one_input(self) -> ParametersRequest:
        if (self.window is None) == (self.embedding is None):
            raise ValueError("give exactly one of `window` (item ids) and `embedding`")
        return self


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
    run: str
    method: str
    backbone: str
    spec_hash: str
    params: list[LayerInfo] = Field(description="the dynamic head's parameters, in spec order")
    numel: int
    dtypes: list[str]
    answer_bytes: dict[str, int] = Field(description="size of a safetensors answer per dtype")
    window_len: int
    history_len: int
    num_items: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok", "loading", "stopping"]


class ErrorResponse(BaseModel):
    detail: str | list = Field(description="what was wrong (a list of field errors for 422)")

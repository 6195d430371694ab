"""Request and response bodies of the service (they also make the OpenAPI schema).

The request body is built for the served run (`request_model`): its raw window field and
bounds come from the run's SampleSpec (`Task.sample`), so the schema a client reads is
exactly what the service accepts, for any task.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

from duet.spec import Column, SampleSpec

FLOAT32_MAX = 3.4028234663852886e38
INT64 = (-(2**63), 2**63 - 1)
# A float32 value: finite and in range; strict: no "1.5" or true.
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
# The request field of a window of token samples, and of any other samples (SampleSpec.field).
RAW_FIELDS = (SampleSpec("int64").field, SampleSpec("float32", (1,)).field)
EMBEDDING = "embedding"
INPUTS = (*RAW_FIELDS, EMBEDDING)


def _document(schema: dict[str, Any], cls: type[ParametersRequest]) -> None:
    """The request schema's oneOf and example: the served raw field or `embedding`, never both."""
    if cls.raw_field is None:  # the base model: no run loaded yet
        return
    schema["oneOf"] = [{"required": [cls.raw_field]}, {"required": [EMBEDDING]}]
    if cls.example is not None:
        schema["examples"] = [{"device_id": "phone-42", cls.raw_field: cls.example, "dtype": "fp16"}]


class ParametersRequest(BaseModel):
    """A device's real-time window; the answer is that device's dynamic-head parameters.

    The window comes as its raw samples (the served run's `window` of token ids, or
    `samples` rows of floats) or, in privacy mode, as its features computed on the
    device (`embedding`): exactly one. This base holds the fields every run shares;
    `request_model` adds the inputs of one run.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_document)

    raw_field: ClassVar[str | None] = None  # the served run's raw input (SampleSpec.field)
    what: ClassVar[str] = ""  # what its values are, for messages
    example: ClassVar[list | None] = None

    device_id: str = Field(min_length=1, max_length=128, description="opaque device id (logged, never stored)")
    dtype: Literal["fp32", "fp16"] = Field("fp32", description="precision of the returned parameters")
    version: str | None = Field(
        None, max_length=128,
        description="model version the device's bundle was exported from; 409 if the service serves another",
    )

    @model_validator(mode="after")
    def _one_input(self) -> ParametersRequest:
        if sum(getattr(self, name, None) is not None for name in INPUTS) != 1:
            raise ValueError(f"give exactly one of `{self.raw_field}` ({self.what}) and `{EMBEDDING}` "
                             "(the window's features, privacy mode)")
        return self

    @property
    def input_field(self) -> str:
        return next(name for name in INPUTS if getattr(self, name, None) is not None)


def _bound(value: float | None, default: float) -> float:
    return default if value is None else value


def _column(column: Column) -> Any:
    """One value of a float row described by its column: finite, in range, a whole number for a code."""
    return Annotated[float, Field(allow_inf_nan=False, strict=True, ge=_bound(column.low, -FLOAT32_MAX),
                                  le=_bound(column.high, FLOAT32_MAX), multiple_of=1 if column.integer else None)]


def request_model(sample: SampleSpec, feature_dim: int, window_len: int, max_window: int) -> type[ParametersRequest]:
    """The request body of a run whose windows hold `sample`s: the raw field with the sample's bounds
    (token values) or width (float rows), `embedding` rows of `feature_dim`, at most `max_window` each.

    The raw field a run of the other kind takes is parsed loosely and left out of the schema: the
    route refuses it in one line that names the field this service takes.
    """
    window = f"oldest first, at least one; cut to the last W = {window_len} (the run's window_len); at most " \
             f"{max_window} (`max_window`, GET /v1/models)"
    if sample.is_token:
        low, high = _bound(sample.low, INT64[0]), _bound(sample.high, INT64[1])
        # strict: an id is a JSON integer; true, "1" and 1.0 are refused, not taken for 1.
        item: Any = Annotated[int, Field(strict=True, ge=low, le=high)]
        what = f"integers {low}..{high}"
        description = f"the window's samples: {what} (written as JSON integers: 1.0, true and \"1\" are " \
                      f"refused), {window}."
        example = [min(low + k, high) for k in (16, 4, 229)]
    elif sample.columns:  # each value of a row with its own range, whole numbers for codes
        item = tuple.__class_getitem__(tuple(_column(c) for c in sample.columns))
        shape = "x".join(map(str, sample.shape))
        what = f"rows of {sample.width} floats, one {shape} sample each, each value in its column's range"
        description = f"the window's samples: {what} (GET /v1/models: sample.columns); {window}."
        example = None
    else:
        item = Annotated[list[Finite], Field(min_length=sample.width, max_length=sample.width)]
        shape = "x".join(map(str, sample.shape))
        what = f"rows of {sample.width} floats, one {shape} sample each, flattened row-major"
        description = f"the window's samples: {what}; finite, {window}."
        example = [[0.5] * sample.width] if sample.width <= 16 else None
    embedding = Annotated[list[Finite], Field(min_length=feature_dim, max_length=feature_dim)]
    foreign = next(name for name in RAW_FIELDS if name != sample.field)
    model = create_model(
        "ParametersRequest", __base__=ParametersRequest, __doc__=ParametersRequest.__doc__,
        # Not nullable: a request names exactly one input (the schema's oneOf).
        **{sample.field: (list[item], Field(None, min_length=1, max_length=max_window, description=description)),
           EMBEDDING: (list[embedding], Field(
               None, min_length=1, max_length=max_window,
               description=f"privacy mode: the window's features computed on the device, one row of {feature_dim} "
                           f"floats (`feature_dim`) per sample; finite, {window}. The answer equals the one for "
                           "the raw window.")),
           foreign: (SkipJsonSchema[Any], None)},
    )
    model.raw_field, model.what, model.example = sample.field, what, example
    return model


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


class ColumnInfo(BaseModel):
    """One value of a float row: its range (inclusive; null: unbounded) and whether it is a code."""

    low: float | None
    high: float | None
    integer: bool = Field(description="a whole number (a categorical code)")


class SampleInfo(BaseModel):
    """One sample of a window (the run's SampleSpec): what `window` values or `samples` rows hold."""

    dtype: Literal["int64", "float32"] = Field(description="int64: a token id, sent in `window`; float32: sent in "
                                                           "`samples`, one flattened row a sample")
    shape: list[int] = Field(description="shape of one sample ([] for a token)")
    low: int | None = Field(description="smallest valid token value; null: unbounded (or float samples)")
    high: int | None = Field(description="largest valid token value; null: unbounded (or float samples)")
    columns: list[ColumnInfo] | None = Field(None, exclude_if=lambda v: v is None,  # absent where not described
                                             description="float samples that describe their values: one "
                                                         "entry per value of a flattened row")


class ModelInfo(BaseModel):
    version: str
    task: str = Field(description="the task the run was trained for (recorded in its config)")
    sample: SampleInfo
    facts: dict[str, Any] = Field(description="the task's dataset facts the run was built with (e.g. vocabulary "
                                              "size, classes, sample shape)")
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
        "code": "invalid_request", "message": "Input should be less than or equal to 3706", "field": "window[3]",
        "errors": [{"field": "window[3]", "message": "Input should be less than or equal to 3706"}]}}]})

    error: ErrorDetail

"""`POST /v1/parameters`: a device's window in, its dynamic-head parameters out.

The window comes as the served run's raw samples (`window` of token ids, or
`samples` rows of floats: the run's SampleSpec says which) or, in privacy mode,
its features computed on the device (`embedding`); each has its own micro-batcher.
The body is parsed by the served run's own request model (`schemas.request_model`).

Thin on purpose: validate, hand the window to the micro-batcher, serialise
(and sign, with `--sign`). Auth, rate limit and body size were checked before
this runs (duet.cloud.guard).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from duet.cloud.batcher import QueueFull
from duet.cloud.deps import AppState, not_ready
from duet.cloud.errors import APIError, validation_response
from duet.cloud.generation import OCTET_STREAM, sha256_hex
from duet.cloud.guard import PHASE_KEY, RUNNING, WAITING
from duet.cloud.schemas import EMBEDDING, ErrorResponse, ParametersJSON, ParametersRequest
from duet.signing import SIGNATURE_HEADER, answer_message

router = APIRouter(tags=["parameters"])

ANSWER_HEADERS = {
    "X-Duet-Model-Version": {"description": "version of the model that generated the parameters",
                             "schema": {"type": "string"}},
    "X-Duet-Spec-Hash": {"description": "hash of the head's ParamSpec (check it against the bundle)",
                         "schema": {"type": "string"}},
    "X-Duet-Content-SHA256": {"description": "sha256 (hex) of this response body", "schema": {"type": "string"}},
    SIGNATURE_HEADER: {"description": "only when the service signs (`duet serve --sign`): `ed25519 <key id> "
                                      "<base64 signature> [<base64 Merkle path>]`, one signature for the answers "
                                      "made together, over `duet-answer/1\\n<model version>\\n<spec hash>\\n"
                                      "<sha256 hex of this body>\\n<sha256 hex of the request body>` "
                                      "(duet.signing.answers; docs/reliability.md)",
                       "schema": {"type": "string"}},
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error(description: str, headers: dict | None = None) -> dict:
    return {"model": ErrorResponse, "description": description, **({"headers": headers} if headers else {})}


RESPONSES = {
    200: {
        "description": "the device's head parameters: a safetensors blob (default; metadata `model_version` and "
                       "`spec_hash`, tensors named by the ParamSpec, shapes unbatched) or, with "
                       "`Accept: application/json`, the same values as nested lists",
        "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        "model": ParametersJSON,
        "headers": ANSWER_HEADERS,
    },
    408: error("the body did not arrive before the request timeout"),
    409: error("`version` names a model this service does not serve (field `version`)"),
    413: error("body over the size limit (refused before it is read)"),
    422: error("malformed body: invalid JSON, unknown field, wrong type, a value out of the sample's range, "
               "empty window or longer than `max_window`, a sample or embedding row of the wrong width or not "
               "finite, the raw field the served run does not take, not exactly one raw input and `embedding`; "
               "`field` names it"),
    503: error("model not loaded yet, shutting down, or the queue is full", RETRY_AFTER),
    504: error("no answer within the request timeout (queue + generation)"),
}


# The body is parsed by pydantic's JSON parser directly (`model_validate_json`), not
# by FastAPI's body and dependency machinery: 84 instead of 136 us of app time per
# request, measured in process. The request schema is declared here instead (the
# fields every run shares); the app's OpenAPI document replaces it with the served
# run's own request model once one is loaded.
REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ParametersRequest.model_json_schema()},
}}}

# pydantic reports errors about the body as a whole at location (); the model validator's (not exactly
# one input) names the served run's raw input.
_ROOT_ERRORS = frozenset({"value_error"})


@router.post("/v1/parameters", response_class=Response, responses=RESPONSES, openapi_extra=REQUEST_BODY,
             summary="Generate one device's dynamic-layer parameters from its real-time window")
async def parameters(request: Request) -> Response:
    state: AppState = request.app.state.duet
    served = state.model  # this version answers this request, even if a reload swaps it meanwhile
    if served is None or state.stopping:
        raise not_ready()
    raw = await request.body()
    try:
        body = served.request.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        for e in errors:
            if not e["loc"] and e["type"] in _ROOT_ERRORS:
                e["loc"] = (served.service.raw_field,)
        return validation_response(errors, root="body")
    service = served.service
    if body.version is not None and body.version != service.version:
        raise APIError(409, "version_not_served",
                           f"version {body.version!r} is not served; this service serves {service.version!r}",
                           "version")
    name = body.input_field
    values = getattr(body, name)
    if name == service.raw_field:
        try:  # the request model checked range, width and finiteness already, from the same SampleSpec
            parts = service.raw_rows(values, validated=True)
        except (ValueError, OverflowError) as exc:
            raise APIError(422, "invalid_request", str(exc), name) from None
        batcher = served.batcher
    elif name == EMBEDDING:
        batcher, parts = served.embedding_batcher, service.feature_rows(np.asarray(values, dtype=np.float32))
    else:  # the raw field of a run of the other kind
        raise APIError(422, "invalid_request", f"this service's model takes `{service.raw_field}` "
                       f"({served.request.what}) or `{EMBEDDING}`, not `{name}`", name)
    # While waiting, the guard's deadline may cancel this request (it then answers 504).
    phase = request.scope.get(PHASE_KEY)
    if phase is not None:
        phase.now = WAITING
    try:
        flat = await batcher.submit(*parts)
    except QueueFull:
        raise APIError(503, "overloaded", "too many requests waiting for generation; retry shortly",
                           headers={"Retry-After": "1"}) from None
    if phase is not None:
        phase.now = RUNNING
    accept = request.headers.get("accept")
    if accept is not None and "application/json" in accept and OCTET_STREAM not in accept:
        content, media_type = service.json_answer(flat, body.dtype), "application/json"
    else:
        content, media_type = service.codecs[body.dtype].encode(flat), OCTET_STREAM
    state.telemetry.answer_bytes.labels(body.dtype).inc(len(content))
    digest = sha256_hex(content)
    headers = {"X-Duet-Model-Version": service.version, "X-Duet-Spec-Hash": service.spec_hash,
               "X-Duet-Content-SHA256": digest}
    if state.signer is not None:
        message = answer_message(service.version, service.spec_hash, digest, sha256_hex(raw))
        headers[SIGNATURE_HEADER] = await state.signer.header(message)
    return Response(content, media_type=media_type, headers=headers)

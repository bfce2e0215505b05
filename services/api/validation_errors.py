"""The API's 422 answer for a request that fails validation: FastAPI's shape (`{"detail": [{loc, msg, type, input,
...}]}`), made safe to serialize.

FastAPI's default handler echoes each error's `input`, and its JSONResponse then fails (a 500) when that input is
a NaN or infinite number (JSON has none; Python's json.loads accepts `NaN`/`Infinity` in a request body) or a
string with a lone surrogate (`"\\ud800"` in a JSON body; UTF-8 cannot encode it). Here non-finite numbers are
echoed as strings ("inf", "nan") and the body is ASCII-escaped JSON, so every refused input gets its 422.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character written as a `\\u` escape: valid for any str, lone surrogates included."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float (at any depth) replaced by its text ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


async def validation_error_response(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with the validation errors, `loc` naming each field, whatever the input was."""
    return AsciiJSONResponse(status_code=422, content={"detail": json_safe(jsonable_encoder(exc.errors()))})

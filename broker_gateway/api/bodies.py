"""Request bodies the routes read themselves (publish, pull, ack, manifests): their media
type, and their validation failures reported as FastAPI reports its own (422, field by
field)."""

from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers

Model = TypeVar("Model", bound=BaseModel)


def media_type(headers: Headers) -> str:
    """The Content-Type without its parameters, lower-cased (media types ignore case)."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


def validated(model: type[Model], body: bytes | Any) -> Model:
    """`model` from JSON bytes, or from JSON already parsed.

    Raises: RequestValidationError, whose errors name the fields but not the input.
    """
    try:
        if isinstance(body, bytes):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        ) from exc


def json_validated(model: type[Model], headers: Headers, body: bytes) -> Model:
    """`model` from a JSON body, as FastAPI reads one: a body of another media type is
    not read as JSON (and so is not an object).

    Raises: RequestValidationError.
    """
    kind = media_type(headers)
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                }
            ]
        )
    return validated(model, body)

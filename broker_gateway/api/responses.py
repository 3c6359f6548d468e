"""Response classes: orjson encoding for plain JSON and for problem+json."""

from typing import Any

import orjson
from fastapi.responses import Response


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ProblemJSON(JSON):
    media_type = "application/problem+json"

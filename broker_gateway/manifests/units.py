"""Durations and sizes as people write them in manifests: `30s`, `7d`, `512M`, `10G`, `infinite`.

Values are kept as integers (seconds, megabytes) and always written back in the largest
unit that divides them exactly, so an exported manifest reads like a hand-written one.
"""

import re
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

INFINITE: Final = -1

_DURATION_UNITS: Final = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_SIZE_UNITS: Final = {"T": 1024 * 1024, "G": 1024, "M": 1}
_QUANTITY: Final = re.compile(r"^\s*([0-9]+)\s*([A-Za-z]*)\s*$")


def parse_duration(value: Any) -> int:
    """Seconds from `90`, `90s`, `15m`, `2h`, `7d`, `1w` or `infinite` (-1).

    Raises: ValueError.
    """
    return _parse(value, _DURATION_UNITS, "duration", "s")


def parse_size(value: Any) -> int:
    """Megabytes (MiB, as Pulsar counts them) from `512M`, `10G`, `1T` or `infinite` (-1).

    Raises: ValueError.
    """
    units = {**_SIZE_UNITS, **{f"{k}i": v for k, v in _SIZE_UNITS.items()}}
    return _parse(value, units, "size", "M")


def format_duration(seconds: int) -> str | int:
    # Days rather than weeks: "14d" reads better than "2w" in a retention policy.
    return _format(seconds, {k: v for k, v in _DURATION_UNITS.items() if k != "w"})


def format_size(megabytes: int) -> str | int:
    return _format(megabytes, _SIZE_UNITS)


def _parse(value: Any, units: dict[str, int], what: str, bare_unit: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"a {what} is a number with a unit, not a boolean")
    if isinstance(value, int):
        if value < INFINITE:
            raise ValueError(f"a {what} cannot be negative (use 'infinite')")
        return value
    if not isinstance(value, str):
        raise ValueError(f"a {what} is a number with a unit, e.g. 7d or 10G")
    if value.strip().lower() in ("infinite", "-1"):
        return INFINITE
    match = _QUANTITY.fullmatch(value)
    unit = (match.group(2) if match else "") or bare_unit
    if match is None or unit not in units:
        known = ", ".join(units)
        raise ValueError(f"invalid {what} {value!r}: a whole number with a unit ({known})")
    return int(match.group(1)) * units[unit]


def _format(value: int, units: dict[str, int]) -> str | int:
    if value == INFINITE:
        return "infinite"
    if value == 0:
        return 0
    for unit, factor in units.items():
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return value  # pragma: no cover - the smallest unit is 1


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration),
    WithJsonSchema({"type": ["string", "integer"], "examples": ["30s", "15m", "7d", "infinite"]}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size),
    WithJsonSchema({"type": ["string", "integer"], "examples": ["512M", "10G", "infinite"]}),
]

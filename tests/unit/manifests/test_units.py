from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from broker_gateway.manifests.units import (
    INFINITE,
    Duration,
    Size,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 604_800),
        ("1w", 604_800),
        ("2h", 7_200),
        ("15m", 900),
        ("30s", 30),
        ("90", 90),
        (90, 90),
        (" 30s ", 30),
        ("0", 0),
        ("infinite", INFINITE),
        ("Infinite", INFINITE),
        ("-1", INFINITE),
        (-1, INFINITE),
    ],
)
def test_duration_is_read_in_seconds(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "megabytes"),
    [
        ("512M", 512),
        ("512", 512),
        ("10G", 10_240),
        ("10Gi", 10_240),
        ("1T", 1_048_576),
        (512, 512),
        ("infinite", INFINITE),
    ],
)
def test_size_is_read_in_megabytes(text: str | int, megabytes: int) -> None:
    assert parse_size(text) == megabytes


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (604_800, "7d"),
        (1_209_600, "14d"),  # days, not weeks
        (90_000, "25h"),
        (900, "15m"),
        (90, "90s"),
        (INFINITE, "infinite"),
        (0, 0),
    ],
)
def test_duration_is_written_in_the_largest_exact_unit(seconds: int, text: str | int) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("megabytes", "text"),
    [(10_240, "10G"), (1_048_576, "1T"), (1_536, "1536M"), (INFINITE, "infinite"), (0, 0)],
)
def test_size_is_written_in_the_largest_exact_unit(megabytes: int, text: str | int) -> None:
    assert format_size(megabytes) == text


@pytest.mark.parametrize("text", ["7d", "3h", "45m", "90s", "infinite"])
def test_written_duration_reads_back_as_the_same_text(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["10G", "512M", "2T", "infinite"])
def test_written_size_reads_back_as_the_same_text(text: str) -> None:
    assert format_size(parse_size(text)) == text


@pytest.mark.parametrize(
    "value", ["", "d", "1.5h", "7D", "7 days", "7d 1h", "-5s", "ten", -2, 1.5, None, [7]]
)
def test_malformed_duration_is_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["", "10GB", "10g", "1.5G", "10m", "-1G", -2, 2.5, None])
def test_malformed_size_is_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_neither_durations_nor_sizes(value: bool) -> None:
    # YAML reads `yes`/`no` as booleans; True must not become one second.
    with pytest.raises(ValueError, match="boolean"):
        parse_duration(value)
    with pytest.raises(ValueError, match="boolean"):
        parse_size(value)


def test_annotated_types_parse_manifest_text_and_serialize_it_back() -> None:
    duration, size = TypeAdapter(Duration), TypeAdapter(Size)
    assert duration.validate_python("7d") == 604_800
    assert size.validate_python("10G") == 10_240
    assert duration.dump_python(604_800, mode="json") == "7d"
    assert size.dump_python(10_240, mode="json") == "10G"
    with pytest.raises(ValidationError):
        duration.validate_python(True)

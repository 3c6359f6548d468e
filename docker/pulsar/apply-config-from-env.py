#!/usr/bin/env python3
"""`bin/apply-config-from-env.py FILE...` of the test image, as the official image reads it:
an environment variable named like a key in the file replaces that key's value, and
PULSAR_PREFIX_<key> sets <key> whether the file has it or not."""

import os
import sys

PREFIX = "PULSAR_PREFIX_"


def apply(path: str) -> None:
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    keys = {
        line.split("=", 1)[0]: i
        for i, line in enumerate(lines)
        if "=" in line and not line.startswith("#")
    }
    for name, value in sorted(os.environ.items()):
        key = name.removeprefix(PREFIX)
        if key in keys:
            lines[keys[key]] = f"{key}={value.strip()}"
        elif name.startswith(PREFIX):
            keys[key] = len(lines)
            lines.append(f"{key}={value.strip()}")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        apply(argument)

"""Unit tests build their own Settings: none of them sees the GATEWAY_* environment of the
shell that runs them."""

import os

import pytest


@pytest.fixture(autouse=True)
def _no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)

"""Shared test settings. Integration fixtures live in tests/integration/conftest.py."""

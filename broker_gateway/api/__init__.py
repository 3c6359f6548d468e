"""Thin FastAPI routers: parse, call one domain function, shape the response."""

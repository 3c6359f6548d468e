"""Manifest text (YAML or JSON, one or many documents) and files into raw documents."""

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import yaml

from broker_gateway.errors import InvalidManifest
from broker_gateway.manifests.model import ManifestProblem

_SUFFIXES: Final = (".yaml", ".yml", ".json")

Raw = list[tuple[str, Any]]


def parse_text(text: str | bytes, source: str) -> Raw:
    """Every document in a YAML stream (JSON is YAML too), named `source#n`.

    A document that is a list, or `{"documents": [...]}`, contributes its items.
    Raises: InvalidManifest when the text is not YAML.
    """
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML or JSON"
        raise InvalidManifest([ManifestProblem(source, f"{problem}{where}")]) from exc
    items: list[Any] = []
    for document in documents:
        if isinstance(document, dict) and set(document) == {"documents"}:
            document = document["documents"]
        items.extend(document if isinstance(document, list) else [document])
    return [(f"{source}#{i}", item) for i, item in enumerate(items, start=1)]


def load_paths(paths: Iterable[str | Path]) -> Raw:
    """Files, or directories searched for *.yaml, *.yml and *.json, in name order.

    Hidden files and directories inside a directory are skipped: a Kubernetes ConfigMap
    volume keeps a second copy of its files in `..<timestamp>/`.
    Raises: InvalidManifest when a path is missing or a file is not YAML.
    """
    raw: Raw = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in _SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files = [path]
        else:
            raise InvalidManifest([ManifestProblem(str(path), "no such file or directory")])
        for file in files:
            raw.extend(parse_text(file.read_bytes(), str(file)))
    return raw

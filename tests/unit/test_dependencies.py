"""Dependency direction: settings at the bottom, then model; nothing imports service."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("settings", "model", "store", "training", "indexer", "service")


def imported_packages(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def test_settings_imports_no_other_package():
    assert imported_packages("settings") <= {"settings"}


def test_model_imports_only_the_settings_layer():
    assert imported_packages("model") <= {"model", "settings"}


def test_nothing_imports_service():
    for package in ("model", "training", "indexer"):
        assert "service" not in imported_packages(package), package


def test_store_imports_only_the_layers_below():
    assert imported_packages("store") <= {"store", "settings"}


def test_service_never_imports_the_indexer():
    assert "indexer" not in imported_packages("service")

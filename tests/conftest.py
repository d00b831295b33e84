"""Shared test fixtures: reference outputs of the official ALPRO code for a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "alpro_reference"


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


def load_reference(name: str):
    return torch.load(REFERENCE / name, map_location="cpu", weights_only=True)


# Tiny checkpoints trained once per session, for the end-to-end search and QA tests.
from tests.trained import trained_corpus, trained_qa_checkpoint, trained_retrieval_checkpoint  # noqa: E402,F401

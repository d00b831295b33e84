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


@torch.no_grad()
def reference_outputs(model) -> dict[str, torch.Tensor]:
    """A model's outputs on the reference fixture's inputs (video, text, VTM, and QA when it has the head)."""
    video = load_reference("video.pt")
    ids, mask = load_reference("text_input_ids.pt")[:3], load_reference("text_attention_mask.pt")[:3]
    result = {"video": model.encode_video(video), "text": model.encode_text(ids, mask),
              "vtm": model.vtm_logits(video, ids, mask)}
    if model.qa_head is not None:
        result["qa"] = model.answer_logits(video, ids, mask)
    return result


def assert_same_outputs(a, b) -> None:
    """Two models give the same outputs on the reference inputs."""
    oa, ob = reference_outputs(a), reference_outputs(b)
    assert oa.keys() == ob.keys()
    for key in oa:
        torch.testing.assert_close(oa[key], ob[key], atol=1e-6, rtol=1e-6)


@pytest.fixture
def clean_alpro_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ALPRO_* variable from the calling shell (or CI) leaks into a settings test."""
    import os

    for name in list(os.environ):
        if name.startswith("ALPRO_"):
            monkeypatch.delenv(name)
    return monkeypatch


# Tiny checkpoints trained once per session, for the end-to-end search and QA tests.
from tests.trained import trained_corpus, trained_qa_checkpoint, trained_retrieval_checkpoint  # noqa: E402,F401

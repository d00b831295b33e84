"""Entity prompts (arXiv 2112.09583 section 3.3; ALPRO_REFERENCE.md "Prompter"): the prompt templates of
ALPRO's prompter and the ensembled prompt feature of an entity, the mean over templates of the normalised
`text_proj(cls)` of each filled-in template (not re-normalised). The prompter's PEM labels (training/) and
zero-shot classification (the service's /classify) both build on these.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .alpro import AlproModel
from .tokenizer import Tokenizer

VIDEO_TEMPLATES = (
    "A footage of a {}.", "A footage of the {}.", "A footage of one {}.",
    "A video of a {}.", "A video of the {}.", "A video of one {}.",
    "A portrait of a {}.", "A portrait of the {}.", "A portrait of one {}.",
    "A video footage of a {}.", "A video footage of the {}.", "A video footage of one {}.",
)
IMAGE_TEMPLATES = (
    "A photo of a {}.", "A photo of the {}.", "A photo of one {}.",
    "A picture of a {}.", "A picture of the {}.", "A picture of one {}.",
    "A good photo of a {}.", "A good photo of the {}.", "A good photo of one {}.",
    "An image of a {}.", "An image of the {}.", "An image of one {}.",
)


@torch.no_grad()
def text_embeddings(model: AlproModel, tokenizer: Tokenizer, texts: Sequence[str],
                    batch_size: int = 256) -> torch.Tensor:
    """(N, embed_dim) float32 L2-normalised text_proj(cls) of each text, in batches."""
    feats = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(list(texts[start:start + batch_size]))
        ids, mask = ids.to(model.device), mask.to(model.device)
        feats.append(model.text_features(model.text_tokens(ids, mask)).float())
    if not feats:
        return torch.zeros(0, model.config.embed_dim)
    return torch.cat(feats)


def ensemble(template_features: torch.Tensor) -> torch.Tensor:
    """(K templates, E entities, D) normalised features -> (E, D) their mean over templates (not re-normalised)."""
    return template_features.mean(dim=0)


@torch.no_grad()
def prompt_features(model: AlproModel, tokenizer: Tokenizer, entities: Sequence[str],
                    templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(E, embed_dim): per entity, the mean over templates of normalised text_proj(cls) (not re-normalised)."""
    texts = [template.format(entity) for template in templates for entity in entities]  # template-major
    feats = text_embeddings(model, tokenizer, texts, batch_size)
    return ensemble(feats.view(len(templates), len(entities), -1))  # (K, E, D) -> (E, D)

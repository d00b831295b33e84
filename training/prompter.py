"""ALPRO's prompter (arXiv 2112.09583 section 3.3; ALPRO_REFERENCE.md "Prompter"): entity prompts, prompt
features, random crops and the soft pseudo-labels that supervise PEM.

The prompter is an ALPRO model trained with VTC only (`alpro-train pretrain-prompter`), then frozen. Each
entity's prompt feature is the mean over templates of the normalised `text_proj(cls)` of "A video of a
{entity}." etc. (not re-normalised), kept in the prompter's `video_prompt_feat` / `image_prompt_feat`
buffers. For PEM, one box per video (area U(0.3, 0.5) of the frame, aspect U(0.3, 1/0.3), snapped to patch
multiples, the same box on every frame) is cut out: pixels outside it are set to black before
normalisation; the prompter's softmax over entities of the cropped video is the pseudo-label, and the
PEM head predicts it from the fused patch tokens inside the box.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model import AlproModel, Tokenizer
from model.alpro import TEMP_MAX, TEMP_MIN
from model.prompts import IMAGE_TEMPLATES, VIDEO_TEMPLATES, prompt_features

logger = logging.getLogger(__name__)

# Function words and frequent verbs/adjectives of captions: what is left is mostly nouns (a cheap stand-in
# for the reference's noun tagger, so no NLP model has to be installed).
STOPWORDS = frozenset("""
a an the and or but if of to in on at by for with from into onto over under up down out off than then so as is
are was were be been being am do does did doing has have had having it its this that these those there here
he she they them his her their we you your our i me my mine who whom which what when where why how not no yes
all any both each few more most other some such only own same too very can will just should now while during
before after above below again further once also about against between through until per via moves moving
move goes going stays staying turns turning changes changing getting gets get one two three shown shows show
left right slides sliding rises rising falls falling grows growing shrinks shrinking spins spinning around
rotating expands expanding contracts contracting bigger smaller upward downward place still colour color
""".split())
WORD = re.compile(r"[a-z]+")


def read_entities(path: str | Path) -> list[str]:
    """One entity per line; blank lines and duplicates dropped, order kept."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(line for line in lines if line))


def extract_entities(captions: Iterable[str], num_entities: int) -> list[str]:
    """The `num_entities` most frequent content words of the captions (ties broken alphabetically)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(w for w in WORD.findall(caption.lower()) if len(w) > 2 and w not in STOPWORDS)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [word for word, _ in ranked[:num_entities]]


@torch.no_grad()
def build_prompt_features(model: AlproModel, tokenizer: Tokenizer, entities: Sequence[str]) -> None:
    """Fill the prompter's video_prompt_feat / image_prompt_feat buffers from the entity list."""
    if model.config.prompt_entities != len(entities):
        raise ValueError(f"the prompter holds {model.config.prompt_entities} prompt features, "
                         f"got {len(entities)} entities")
    was_training = model.training
    model.eval()
    model.video_prompt_feat.copy_(prompt_features(model, tokenizer, entities, VIDEO_TEMPLATES))
    model.image_prompt_feat.copy_(prompt_features(model, tokenizer, entities, IMAGE_TEMPLATES))
    model.train(was_training)


@dataclass(frozen=True)
class Box:
    """A crop in pixels: left, top, width, height, all multiples of the patch size."""

    x: int
    y: int
    w: int
    h: int


def sample_box(rng: np.random.Generator, img_size: int, patch_size: int,
               area: tuple[float, float] = (0.3, 0.5), aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> Box:
    """Area U(area) of the frame, width/height U(aspect), snapped to patch multiples (>= 1 patch), inside."""
    grid = img_size // patch_size
    a = rng.uniform(*area) * img_size * img_size
    r = rng.uniform(*aspect)
    w = int(np.clip(round(math.sqrt(a * r) / patch_size), 1, grid))
    h = int(np.clip(round(math.sqrt(a / r) / patch_size), 1, grid))
    x = int(rng.integers(0, grid - w + 1))
    y = int(rng.integers(0, grid - h + 1))
    return Box(x * patch_size, y * patch_size, w * patch_size, h * patch_size)


def patch_mask(box: Box, img_size: int, patch_size: int) -> torch.Tensor:
    """(grid * grid,) float mask, 1 on the patches inside the box (row-major, the encoder's patch order)."""
    grid = img_size // patch_size
    mask = torch.zeros(grid, grid)
    mask[box.y // patch_size:(box.y + box.h) // patch_size, box.x // patch_size:(box.x + box.w) // patch_size] = 1
    return mask.flatten()


def black_value(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, 1, 1): what a black pixel becomes after normalisation."""
    return ((0.0 - torch.tensor(mean)) / torch.tensor(std)).view(3, 1, 1)


def crop_video(video: torch.Tensor, box: Box, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (T, 3, H, W) -> the same with every pixel outside the box black (zeroed before normalising)."""
    out = black_value(mean, std).to(video.dtype).expand_as(video).clone()
    out[..., box.y:box.y + box.h, box.x:box.x + box.w] = video[..., box.y:box.y + box.h, box.x:box.x + box.w]
    return out


@torch.no_grad()
def pseudo_labels(prompter: AlproModel, crops: torch.Tensor, is_image: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, 3, H, W) cropped videos -> (B, E) softmax(prompter_feat(crop) @ prompt_feat.T / temp)."""
    feats = prompter.video_features(prompter.video_tokens(crops)).float()  # (B, D)
    temp = prompter.temp.detach().float().clamp(TEMP_MIN, TEMP_MAX)
    logits = feats @ prompter.video_prompt_feat.float().t() / temp
    if is_image is not None and bool(is_image.any()):
        image_logits = feats @ prompter.image_prompt_feat.float().t() / temp
        logits = torch.where(is_image.view(-1, 1).to(logits.device), image_logits, logits)
    return F.softmax(logits, dim=-1)

"""Masked language modelling inputs (BERT; ALPRO_REFERENCE.md "Heads", MLM): 15% of the real tokens,
of which 80% become [MASK], 10% a random token and 10% stay; [CLS], [SEP] and [PAD] are never chosen.

Masks are drawn per sample from a seeded numpy Generator, so they do not depend on how a batch is split
over processes or workers (what makes a 2-process run equal a 1-process run with the doubled batch).
"""

from __future__ import annotations

import numpy as np
import torch

from model.tokenizer import CLS_TOKEN_ID, MASK_TOKEN_ID, PAD_TOKEN_ID, SEP_TOKEN_ID

IGNORE_INDEX = -100
SPECIAL_IDS = (PAD_TOKEN_ID, CLS_TOKEN_ID, SEP_TOKEN_ID)
FIRST_WORD_ID = 999  # bert-base-uncased: ids below are [PAD], [unusedN], [UNK], [CLS], [SEP], [MASK]


def mask_tokens(input_ids: torch.Tensor, rng: np.random.Generator, vocab_size: int, prob: float = 0.15,
                mask_id: int = MASK_TOKEN_ID, random_low: int = FIRST_WORD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """(L,) ids -> (masked ids, labels): labels hold the original id where chosen, IGNORE_INDEX elsewhere.

    At least one token is chosen when the text has any real token, so every sample contributes.
    Random replacements are drawn from real word pieces (ids >= random_low), not special/unused tokens.
    """
    ids = input_ids.clone()
    labels = torch.full_like(ids, IGNORE_INDEX)
    candidates = np.flatnonzero(~np.isin(ids.numpy(), SPECIAL_IDS))
    if candidates.size == 0 or prob <= 0:
        return ids, labels
    chosen = candidates[rng.random(candidates.size) < prob]
    if chosen.size == 0:
        chosen = candidates[[int(rng.integers(candidates.size))]]
    labels[chosen] = input_ids[chosen]
    action = rng.random(chosen.size)
    to_mask = chosen[action < 0.8]
    to_random = chosen[(action >= 0.8) & (action < 0.9)]
    ids[to_mask] = mask_id
    if to_random.size:
        ids[to_random] = torch.from_numpy(rng.integers(random_low, vocab_size, size=to_random.size)).to(ids.dtype)
    return ids, labels

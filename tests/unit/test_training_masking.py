"""MLM masking: 15% of real tokens, 80/10/10, special tokens never chosen."""

from __future__ import annotations

import numpy as np
import torch

from model.tokenizer import CLS_TOKEN_ID, MASK_TOKEN_ID, PAD_TOKEN_ID, SEP_TOKEN_ID
from training.masking import IGNORE_INDEX, mask_tokens

VOCAB = 30522


def sequence(real: int, length: int = 40) -> torch.Tensor:
    ids = torch.full((length,), PAD_TOKEN_ID)
    ids[0] = CLS_TOKEN_ID
    ids[1:real + 1] = torch.arange(2000, 2000 + real)
    ids[real + 1] = SEP_TOKEN_ID
    return ids


def test_rates_and_replacements():
    rng = np.random.default_rng(0)
    ids = sequence(30)
    chosen = masked = randomised = kept = 0
    trials = 3000
    for _ in range(trials):
        out, labels = mask_tokens(ids, rng, VOCAB, 0.15)
        sel = labels != IGNORE_INDEX
        assert torch.equal(labels[sel], ids[sel])  # labels hold the original ids
        assert torch.equal(out[~sel], ids[~sel])  # unchosen tokens untouched
        chosen += int(sel.sum())
        masked += int((out[sel] == MASK_TOKEN_ID).sum())
        kept += int((out[sel] == ids[sel]).sum())
        randomised += int(((out[sel] != MASK_TOKEN_ID) & (out[sel] != ids[sel])).sum())
    assert abs(chosen / (trials * 30) - 0.15) < 0.01
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(randomised / chosen - 0.1) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02


def test_special_tokens_never_chosen_and_one_token_minimum():
    rng = np.random.default_rng(1)
    ids = sequence(3, length=12)
    special = torch.isin(ids, torch.tensor([PAD_TOKEN_ID, CLS_TOKEN_ID, SEP_TOKEN_ID]))
    for _ in range(500):
        out, labels = mask_tokens(ids, rng, VOCAB, 0.15)
        assert (labels[special] == IGNORE_INDEX).all()
        assert torch.equal(out[special], ids[special])
        assert int((labels != IGNORE_INDEX).sum()) >= 1
    only_special = torch.tensor([CLS_TOKEN_ID, SEP_TOKEN_ID, PAD_TOKEN_ID])
    out, labels = mask_tokens(only_special, rng, VOCAB, 0.15)
    assert torch.equal(out, only_special) and (labels == IGNORE_INDEX).all()


def test_same_seed_same_mask():
    ids = sequence(20)
    a = mask_tokens(ids, np.random.default_rng([3, 1, 7]), VOCAB)
    b = mask_tokens(ids, np.random.default_rng([3, 1, 7]), VOCAB)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

"""VTM re-ranking in evaluation: VTC logit + VTM log-odds on the VTC top-k (model.alpro.rerank_scores)."""

from __future__ import annotations

import math

import pytest
import torch

from model.alpro import rerank_scores
from training.evaluate import rank_metrics, vtm_rerank


class FakeVTM:
    """Candidates are videos 0..C-1 (their token rows hold their index); `logits(q, c)` says the VTM logits."""

    temperature = 0.05
    device = torch.device("cpu")

    def __init__(self, logits) -> None:
        self.logits = logits
        self.calls = []

    def vtm_logits_from_tokens(self, video, text, mask):
        pairs = [(int(t[0, 0]), int(v[0, 0])) for v, t in zip(video, text)]
        self.calls += pairs
        return torch.tensor([self.logits(q, c) for q, c in pairs], dtype=torch.float32)


def tokens(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 2, 4).clone()


def test_the_evidence_is_the_vtc_logit_plus_the_vtm_log_odds():
    cosine = torch.tensor([0.30, 0.28])
    logits = torch.tensor([[5.0, 4.0], [-3.0, -1.0]])
    assert torch.allclose(rerank_scores(cosine, logits, 0.05), torch.tensor([6.0 - 1.0, 5.6 + 2.0]))


def test_a_shift_common_to_both_logits_changes_nothing_and_log_odds_can_overturn_vtc():
    g = torch.Generator().manual_seed(0)
    cosine = torch.rand(3, 10, generator=g) * 0.2 + 0.1  # 3 queries, 10 videos
    shift = torch.randn(3, 10, generator=g) * 5  # what itm_logits[1] alone would carry
    vtc_order = cosine.argsort(dim=1, descending=True)

    blind = FakeVTM(lambda q, c: [float(shift[q, c]), float(shift[q, c]) - 0.7])  # constant log-odds
    scores = vtm_rerank(blind, cosine, tokens(3), torch.ones(3, 2), tokens(10), None, k=4, query_is_text=True)
    assert torch.equal(scores.argsort(dim=1, descending=True), vtc_order)
    assert len(blind.calls) == 12 and {c for q, c in blind.calls if q == 0} == set(vtc_order[0, :4].tolist())

    # VTM sure that each query's 4th VTC candidate matches: it goes first; the rest of the top 4 keep their order,
    # and everything outside the top 4 stays below, in VTC order
    fourth = vtc_order[:, 3]
    sure = FakeVTM(lambda q, c: [float(shift[q, c]), float(shift[q, c]) + (20.0 if c == int(fourth[q]) else 0.0)])
    ranked = vtm_rerank(sure, cosine, tokens(3), torch.ones(3, 2), tokens(10), None, k=4,
                        query_is_text=True).argsort(dim=1, descending=True)
    for q in range(3):
        assert ranked[q].tolist() == [int(fourth[q]), *vtc_order[q, :3].tolist(), *vtc_order[q, 4:].tolist()]
    assert rank_metrics(cosine, [[int(f)] for f in fourth])["r1"] == 0.0


def test_lavis_scoring_is_kept_for_comparison():
    cosine = torch.tensor([[0.9, 0.1]])
    fake = FakeVTM(lambda q, c: [0.0, 1.0 if c == 1 else 0.0])
    scores = vtm_rerank(fake, cosine, tokens(1), torch.ones(1, 2), tokens(2), None, k=2, query_is_text=True,
                        lavis=True)
    assert torch.allclose(scores, torch.tensor([[0.9, 1.1]]))


def test_the_0_to_1_form_keeps_the_order_and_is_the_match_probability_at_the_best_cosine():
    from model.alpro import rerank_probability

    cosine = torch.tensor([0.40, 0.35, 0.30])
    logits = torch.tensor([[0.0, -1.0], [0.0, 2.0], [1.0, 0.5]])
    p = rerank_probability(cosine, 0.40, logits, 0.05)
    assert bool(((p > 0) & (p < 1)).all())
    assert p.argsort(descending=True).tolist() == rerank_scores(cosine, logits, 0.05).argsort(descending=True).tolist()
    assert float(p[0]) == pytest.approx(float(torch.softmax(logits[0], -1)[1]))  # the best cosine: VTM alone
    assert float(p[1]) == pytest.approx(1 / (1 + math.exp(-(2.0 - 1.0))))  # log-odds 2, one temperature-step below

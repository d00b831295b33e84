"""ALPRO's training objectives (arXiv 2112.09583 sections 3.2-3.3; ALPRO_REFERENCE.md "Heads").

- VTC: symmetric InfoNCE between L2-normalised video and text features over the all-gathered batch.
- VTM: match / no-match on fused token 0 for each positive pair, one hard negative text per video and one
  hard negative video per text drawn from softmax(similarity) with positives excluded.
- MLM: masked text through the text layers, fused with the (unmasked) video, BERT MLM head.
- PEM: the PEM head on the mean of the fused patch tokens inside a crop, soft cross-entropy against the
  prompter's pseudo-labels for that crop.
- QA: cross-entropy of the answer classifier on fused token 0.

Distributed equivalence (N processes with batch B == 1 process with batch N*B, up to float rounding):
- VTC is computed over the whole global similarity matrix on every rank with gradient through the local
  features only; the objective multiplies it by the world size (DDP averages gradients), and the
  temperature's gradient, which every rank computes in full, is scaled back by 1 / world size.
- VTM negatives are drawn from the global batch with a generator seeded by (seed, step) shared by all
  ranks; the negatives' token states are all-gathered with gradient.
- Token- and pair-level means are divided by global counts (all-reduced), not per-rank counts.
- MLM masks and PEM boxes are drawn per sample in the data pipeline (see data.py).
Positives: samples with the same content key (same caption or same clip) are positives of each other:
VTC spreads its target over them and VTM never draws them as negatives (the reference only excludes the
diagonal, which makes a duplicate caption in a batch a false negative). A synthetic caption without colours
(data.synth_colourless_captions) fits every clip of the batch with its shapes and motions (`caption_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from model import AlproModel
from model.alpro import TEMP_MAX, TEMP_MIN

from .distributed import (all_reduce_max, all_reduce_sum, gather_local_grad, gather_nograd, gather_with_grad, rank,
                          world_size)
from .prompter import pseudo_labels

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    objective: torch.Tensor  # what backward runs on (scaled for DDP equivalence)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # unscaled values for logging


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Sum over this rank / (global count / world): averaging over ranks gives the global mean."""
    global_count = all_reduce_sum(count.detach().float())
    return total * world_size() / global_count.clamp_min(1.0)


def trim_padding(batch: dict, keys: tuple[str, ...], across_ranks: bool) -> tuple[torch.Tensor, ...]:
    """The batch's text tensors (B, L) cut to the longest text's token count (over all ranks when
    `across_ranks`, so all-gathered text tokens keep one shape). The tokenizer pads every text to
    max_text_len; padded positions are masked keys whose outputs no loss reads, so cutting them changes no
    value (up to float order) and saves the text and fusion layers' work on them."""
    mask = batch["attention_mask"]
    longest = int(mask.sum(dim=-1).max()) if mask.numel() else 0
    if across_ranks:
        longest = all_reduce_max(longest, mask.device)
    return tuple(batch[k][..., :longest] for k in keys)


def _temperature(model: AlproModel) -> torch.Tensor:
    # Every rank computes the full gradient of the global VTC loss w.r.t. temp; scale it to 1/world so the
    # world-size multiplier on VTC (see the module docstring) leaves it exact.
    temp = model.temp.clamp(TEMP_MIN, TEMP_MAX)
    w = world_size()
    return temp if w == 1 else temp / w + temp.detach() * (1 - 1 / w)


def caption_fits(batch: dict) -> torch.Tensor:
    """(G, G) bool over the gathered batch: [v, t] = text t describes video v. Texts and videos of one content
    key fit each other; a colourless synthetic caption (`text_colourless`, data.synth_colourless_captions)
    fits every video whose `colourless_key` is its `text_key`."""
    keys = gather_nograd(batch["key"])  # (G,)
    if "text_key" not in batch:
        return keys[:, None] == keys[None, :]
    text_keys, coarse = gather_nograd(batch["text_key"]), gather_nograd(batch["colourless_key"])
    colourless = gather_nograd(batch["text_colourless"].long()).bool()
    return torch.where(colourless[None, :], coarse[:, None] == text_keys[None, :], keys[:, None] == text_keys[None, :])


def vtc_loss(model: AlproModel, video_feat: torch.Tensor, text_feat: torch.Tensor,
             positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global VTC loss (same value on every rank) and the global (G, G) similarity logits (no grad).

    `positives`: this rank's content keys (B,), videos and texts of one key fitting each other, or the
    gathered batch's (G, G) fit matrix (`caption_fits`: [v, t] = text t describes video v).
    Returns (loss, sim_v2t, positive_mask), all over the gathered batch.
    """
    video_all = gather_local_grad(video_feat.float())  # (G, D)
    text_all = gather_local_grad(text_feat.float())  # (G, D)
    if positives.ndim == 1:
        keys_all = gather_nograd(positives)  # (G,)
        positives = keys_all[:, None] == keys_all[None, :]  # (G, G)
    sim = video_all @ text_all.t() / _temperature(model)  # (G, G)
    fits = positives.float()
    loss_v2t = -(F.log_softmax(sim, dim=1) * fits / fits.sum(dim=1, keepdim=True)).sum(dim=1).mean()
    loss_t2v = -(F.log_softmax(sim.t(), dim=1) * fits.t() / fits.t().sum(dim=1, keepdim=True)).sum(dim=1).mean()
    return (loss_v2t + loss_t2v) / 2, sim.detach(), positives


def sample_negatives(sim: torch.Tensor, positives: torch.Tensor, generator: torch.Generator,
                     hard_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row drawn from softmax(sim row) over non-positives; -1 where a row has none.

    hard_ratio < 1 mixes in uniform draws over the non-positives (weights h * softmax + (1 - h) * uniform):
    from scratch, negatives that differ from the positive in one detail the encoders cannot see yet give
    VTM nothing to learn from (its loss sits at the prior); easier ones get it started.
    """
    logits = sim.float().cpu().masked_fill(positives.cpu(), float("-inf"))
    valid = torch.isfinite(logits).any(dim=1)
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
    if hard_ratio < 1.0:
        uniform = (~positives.cpu()).float()
        uniform = uniform / uniform.sum(dim=1, keepdim=True).clamp_min(1.0)
        weights = hard_ratio * weights + (1.0 - hard_ratio) * uniform
    weights[~valid] = 1.0  # placeholder rows, dropped below
    choice = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return torch.where(valid, choice, torch.full_like(choice, -1)), valid


def alpro_losses(model: AlproModel, batch: dict, weights: dict[str, float], generator: torch.Generator,
                 vtm_negatives: str = "global", pem_min_confidence: float = 0.0,
                 vtm_hard_ratio: float = 1.0, vtm_pairs: int = 0) -> LossOutput:
    """VTC / VTM / MLM / PEM (those with weight > 0) for one micro-batch on this rank.

    vtm_pairs > 0 scores VTM on only the first `vtm_pairs` positives of the micro-batch and their two
    negatives (negatives are still drawn from the whole batch): the fusion passes for VTM are most of a
    small model's step, so a compute-bound run trades VTM pairs for steps. 0 scores all (the reference).
    """
    video = batch["video"]
    mlm = weights.get("mlm", 0) > 0
    ids, mask, *mlm_text = trim_padding(batch, ("input_ids", "attention_mask")
                                        + (("mlm_input_ids", "mlm_labels") if mlm else ()), across_ranks=True)
    b, length = ids.shape
    terms: dict[str, torch.Tensor] = {}
    objective = video.new_zeros(())
    w = world_size()

    video_tokens = model.video_tokens(video)  # (B, 1 + N, D)
    text_tokens = model.text_tokens(ids, mask)  # (B, L, D)
    video_feat = model.video_features(video_tokens)
    text_feat = model.text_features(text_tokens)

    loss, sim, positives = vtc_loss(model, video_feat, text_feat, caption_fits(batch))
    terms["vtc"] = loss.detach()
    if weights.get("vtc", 0) > 0:
        objective = objective + weights["vtc"] * loss * w

    need_fusion = weights.get("vtm", 0) > 0 or weights.get("pem", 0) > 0
    fused_pos = None
    if need_fusion:
        lo = rank() * b
        if vtm_negatives == "global":
            neg_text, valid_t = sample_negatives(sim, positives, generator, vtm_hard_ratio)  # (G,)
            neg_video, valid_v = sample_negatives(sim.t(), positives.t(), generator, vtm_hard_ratio)
            neg_text, neg_video = neg_text[lo:lo + b], neg_video[lo:lo + b]
            valid_t, valid_v = valid_t[lo:lo + b], valid_v[lo:lo + b]
            video_all = gather_with_grad(video_tokens) if w > 1 else video_tokens
            text_all = gather_with_grad(text_tokens) if w > 1 else text_tokens
            mask_all = gather_nograd(mask)
        else:
            local = slice(lo, lo + b)
            neg_text, valid_t = sample_negatives(sim[local, local], positives[local, local], generator,
                                                  vtm_hard_ratio)
            neg_video, valid_v = sample_negatives(sim.t()[local, local], positives[local, local].t(), generator,
                                                    vtm_hard_ratio)
            video_all, text_all, mask_all = video_tokens, text_tokens, mask
        n = min(vtm_pairs, b) if vtm_pairs > 0 else b
        p = b if weights.get("pem", 0) > 0 else n  # PEM reads the fused positives of the whole batch
        nt = neg_text[:n].clamp_min(0).to(ids.device)
        nv = neg_video[:n].clamp_min(0).to(ids.device)
        # rows: positives (v_i, t_i), negative texts (v_i, t_nt[i]), negative videos (v_nv[i], t_i)
        fused = model.fuse(torch.cat([video_tokens[:p], video_tokens[:n], video_all[nv]]),
                           torch.cat([text_tokens[:p], text_all[nt], text_tokens[:n]]),
                           torch.cat([mask[:p], mask_all[nt], mask[:n]]),
                           rows=None if weights.get("pem", 0) > 0 else 1)  # (p + 2n, L + 1 + N or 1, D)
        fused_pos = fused[:p]
        if weights.get("vtm", 0) > 0:
            rows = torch.cat([fused[:n, 0], fused[p:, 0]])
            logits = model.itm_head(rows).float()  # (3n, 2)
            labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(logits.device)
            keep = torch.cat([torch.ones(n, dtype=torch.bool), valid_t[:n], valid_v[:n]]).to(logits.device)
            per_pair = F.cross_entropy(logits, labels, reduction="none") * keep
            loss = global_mean(per_pair.sum(), keep.sum())
            terms["vtm"] = loss.detach()
            objective = objective + weights["vtm"] * loss
            terms["vtm_acc"] = ((logits.argmax(1) == labels) & keep).sum().float().detach() / keep.sum()

    if mlm:
        mlm_ids, labels = mlm_text
        mlm_tokens = model.text_tokens(mlm_ids, mask)
        hidden = model.fuse(video_tokens, mlm_tokens, mask, rows=length)  # (B, L, D)
        chosen = labels != IGNORE_INDEX
        logits = model.mlm_logits(hidden[chosen]).float()  # (M, vocab)
        loss = global_mean(F.cross_entropy(logits, labels[chosen], reduction="sum"), chosen.sum())
        terms["mlm"] = loss.detach()
        objective = objective + weights["mlm"] * loss

    if weights.get("pem", 0) > 0:
        if model.prompter is None:
            raise RuntimeError("PEM needs a model with a prompter (num_entities > 0)")
        targets = pseudo_labels(model.prompter, batch["pem_video"], batch.get("is_image"))  # (B, E)
        logits = model.pem_logits(fused_pos[:, length:], batch["pem_mask"]).float()  # (B, E)
        per_sample = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)
        keep = targets.max(dim=-1).values >= pem_min_confidence
        loss = global_mean((per_sample * keep).sum(), keep.sum())
        terms["pem"] = loss.detach()
        objective = objective + weights["pem"] * loss

    return LossOutput(objective=objective, terms=terms)


def qa_loss(model: AlproModel, batch: dict, video_tokens: Optional[torch.Tensor] = None) -> LossOutput:
    """Answer classification cross-entropy; answers outside the vocabulary are ignored. `video_tokens`:
    the batch's videos already encoded (a frozen encoder's cached tokens); None encodes `batch["video"]`."""
    ids, mask = trim_padding(batch, ("input_ids", "attention_mask"), across_ranks=False)
    labels = batch["answer"]
    video = model.video_tokens(batch["video"]) if video_tokens is None else video_tokens
    if ids.ndim == 3:  # (B, K, L): K questions per video; each video is encoded once
        k = ids.shape[1]
        video = video.repeat_interleave(k, dim=0)
        ids, mask, labels = ids.flatten(0, 1), mask.flatten(0, 1), labels.flatten()
    logits = model.answer_logits_from_tokens(video, model.text_tokens(ids, mask), mask).float()
    labels = labels.to(logits.device)
    valid = labels != IGNORE_INDEX
    loss = global_mean(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"), valid.sum())
    acc = ((logits.argmax(1) == labels) & valid).sum().float() / valid.sum().clamp_min(1)
    return LossOutput(objective=loss, terms={"qa": loss.detach(), "qa_acc": acc.detach()})

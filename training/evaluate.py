"""Retrieval and QA evaluation (ALPRO_REFERENCE.md "Retrieval scoring" and "QA").

Videos go through the inference pipeline of the checkpoint: `model.preprocess.load_video` with the
config's `uniform` sampling, image size, mean/std and max_text_len. Retrieval is scored two ways:
VTC cosine similarity alone, and the scalable LAVIS form - the VTC top-k re-scored by
`itm_logit[1] + cosine` (candidates outside the top-k keep their VTC order behind it). Ranks are
1-indexed; ties count against the ground truth, so a constant scorer gets chance-level numbers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model import AlproModel, Tokenizer, VideoError, load_video, normalize_frames
from model.alpro import rerank_scores

from .data import IGNORE_INDEX, QARecord, VideoTextRecord, load_image_frames

logger = logging.getLogger(__name__)


# -- decoding ------------------------------------------------------------------------------------------------


class EvalVideos(Dataset):
    """Video (or image) files -> (index, normalised (T, 3, H, W) or None when it cannot be decoded)."""

    def __init__(self, paths: Sequence[str], is_image: Sequence[bool], model: AlproModel) -> None:
        self.paths, self.is_image, self.config = list(paths), list(is_image), model.config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor]]:
        try:
            if self.is_image[i]:
                frames = load_image_frames(self.paths[i], self.config.img_size, self.config.num_frames)
                return i, normalize_frames(frames, self.config)
            return i, load_video(self.paths[i], self.config)
        except VideoError as e:
            logger.warning("evaluation skips %s: %s", self.paths[i], e)
            return i, None


def _collate(items):
    return items


@torch.no_grad()
def encode_videos(model: AlproModel, paths: Sequence[str], is_image: Sequence[bool], batch_size: int = 16,
                  num_workers: int = 2, amp_dtype: Optional[torch.dtype] = None
                  ) -> tuple[list[int], torch.Tensor]:
    """Decode and encode every file; returns (indices that decoded, their video tokens (V, 1 + N, D))."""
    loader = DataLoader(EvalVideos(paths, is_image, model), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    kept: list[int] = []
    tokens: list[torch.Tensor] = []
    for items in loader:
        good = [(i, v) for i, v in items if v is not None]
        if not good:
            continue
        video = torch.stack([v for _, v in good]).to(model.device)
        with _autocast(model.device, amp_dtype):
            tokens.append(model.video_tokens(video).float())
        kept += [i for i, _ in good]
    if not tokens:
        raise VideoError("no evaluation video could be decoded")
    return kept, torch.cat(tokens)


@torch.no_grad()
def encode_texts(model: AlproModel, texts: Sequence[str], batch_size: int = 64,
                 amp_dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text tokens (N, L, D), attention masks (N, L))."""
    tokenizer = Tokenizer.from_config(model.config)
    out, masks = [], []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(list(texts[start:start + batch_size]))
        ids, mask = ids.to(model.device), mask.to(model.device)
        with _autocast(model.device, amp_dtype):
            out.append(model.text_tokens(ids, mask).float())
        masks.append(mask)
    return torch.cat(out), torch.cat(masks)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# -- retrieval -----------------------------------------------------------------------------------------------


def rank_metrics(scores: torch.Tensor, positives: Sequence[Sequence[int]]) -> dict[str, float]:
    """R@1/5/10 (%), median and mean rank of the best-ranked positive, per query row of (Q, C) scores."""
    ranks = []
    for row, pos in zip(scores, positives):
        pos_t = torch.as_tensor(list(pos), dtype=torch.long)
        best = row[pos_t].max()
        others = torch.ones_like(row, dtype=torch.bool)
        others[pos_t] = False
        ranks.append(1 + int((row[others] >= best).sum()))
    r = np.array(ranks)
    return {"r1": float(100 * (r <= 1).mean()), "r5": float(100 * (r <= 5).mean()),
            "r10": float(100 * (r <= 10).mean()), "median_rank": float(np.median(r)), "mean_rank": float(r.mean())}


@torch.no_grad()
def vtm_rerank(model: AlproModel, cosine: torch.Tensor, query_tokens: torch.Tensor,
               query_mask: Optional[torch.Tensor], cand_tokens: torch.Tensor, cand_mask: Optional[torch.Tensor],
               k: int, query_is_text: bool, batch_size: int = 64,
               amp_dtype: Optional[torch.dtype] = None, lavis: bool = False) -> torch.Tensor:
    """(Q, C) scores: `model.rerank_scores` (VTC logit + VTM log-odds; with `lavis`, LAVIS's itm_logit[1] +
    cosine) on each query's VTC top-k; the rest keep VTC order below them."""
    k = min(k, cosine.shape[1])
    top = cosine.topk(k, dim=1).indices  # (Q, k)
    scores = cosine.float() - 1e4  # outside the top-k: below every re-scored candidate, in VTC order
    temperature = model.temperature
    pairs = [(q, int(c)) for q in range(cosine.shape[0]) for c in top[q]]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        q_idx = torch.tensor([q for q, _ in chunk], device=query_tokens.device)
        c_idx = torch.tensor([c for _, c in chunk], device=query_tokens.device)
        if query_is_text:
            video, text, mask = cand_tokens[c_idx], query_tokens[q_idx], query_mask[q_idx]
        else:
            video, text, mask = query_tokens[q_idx], cand_tokens[c_idx], cand_mask[c_idx]
        with _autocast(model.device, amp_dtype):
            logits = model.vtm_logits_from_tokens(video, text, mask).float()
        pair_cosine = cosine[q_idx, c_idx]
        scores[q_idx, c_idx] = (logits[:, 1] + pair_cosine.float() if lavis
                                else rerank_scores(pair_cosine, logits, temperature)).to(scores.dtype)
    return scores


@torch.no_grad()
def evaluate_retrieval(model: AlproModel, records: Sequence[VideoTextRecord], rerank_k: int = 16,
                       batch_size: int = 32, num_workers: int = 2, amp_dtype: Optional[torch.dtype] = None,
                       rerank: bool = True) -> dict[str, Any]:
    """Text->video and video->text retrieval metrics over the records' unique videos and all their captions."""
    model.eval()
    videos: dict[str, int] = {}
    media: list[tuple[str, bool]] = []
    for record in records:
        if record.path not in videos:
            videos[record.path] = len(media)
            media.append((record.path, record.is_image))
    kept, video_tokens = encode_videos(model, [p for p, _ in media], [im for _, im in media], batch_size,
                                       num_workers, amp_dtype)
    column = {video_index: col for col, video_index in enumerate(kept)}
    texts, text_video = [], []
    for record in records:
        col = column.get(videos[record.path])
        if col is None:
            continue
        for caption in record.captions:
            texts.append(caption)
            text_video.append(col)
    text_tokens, text_mask = encode_texts(model, texts, batch_size=64, amp_dtype=amp_dtype)
    video_feat = model.video_features(video_tokens)  # (V, D)
    text_feat = model.text_features(text_tokens)  # (N, D)
    cosine_t2v = text_feat @ video_feat.t()  # (N, V)
    t2v_pos = [[c] for c in text_video]
    v2t_pos_map: dict[int, list[int]] = defaultdict(list)
    for t, c in enumerate(text_video):
        v2t_pos_map[c].append(t)
    v2t_pos = [v2t_pos_map[c] for c in range(len(kept))]
    out: dict[str, Any] = {"t2v": rank_metrics(cosine_t2v, t2v_pos), "v2t": rank_metrics(cosine_t2v.t(), v2t_pos)}
    if rerank:
        s_t2v = vtm_rerank(model, cosine_t2v, text_tokens, text_mask, video_tokens, None, rerank_k, True,
                           amp_dtype=amp_dtype)
        s_v2t = vtm_rerank(model, cosine_t2v.t().contiguous(), video_tokens, None, text_tokens, text_mask,
                           rerank_k, False, amp_dtype=amp_dtype)
        out["t2v_rerank"] = rank_metrics(s_t2v, t2v_pos)
        out["t2v_rerank_lavis"] = rank_metrics(vtm_rerank(model, cosine_t2v, text_tokens, text_mask, video_tokens, None,
                                                          rerank_k, True, amp_dtype=amp_dtype, lavis=True), t2v_pos)
        out["v2t_rerank"] = rank_metrics(s_v2t, v2t_pos)
        out["rerank_k"] = rerank_k
    skipped = [media[i][0] for i in range(len(media)) if i not in set(kept)]
    out.update({"videos": len(kept), "queries": len(texts), "skipped": skipped, **out["t2v"]})
    if rerank:
        out["rerank_r1"] = out["t2v_rerank"]["r1"]
    out["t2v_r1"] = out["t2v"]["r1"]
    return out


# -- QA ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_qa(model: AlproModel, records: Sequence[QARecord], batch_size: int = 32, num_workers: int = 2,
                amp_dtype: Optional[torch.dtype] = None) -> dict[str, Any]:
    """Exact-match accuracy (%) overall, per answer type and averaged over answer types."""
    model.eval()
    answers = list(model.config.answers)
    if not answers:
        raise ValueError("the checkpoint has no answer vocabulary (config.answers); is it a QA checkpoint?")
    label = {a: i for i, a in enumerate(answers)}
    paths: dict[str, int] = {}
    media: list[tuple[str, bool]] = []
    for r in records:
        if r.path not in paths:
            paths[r.path] = len(media)
            media.append((r.path, r.is_image))
    kept, video_tokens = encode_videos(model, [p for p, _ in media], [im for _, im in media], batch_size,
                                       num_workers, amp_dtype)
    row_of = {v: row for row, v in enumerate(kept)}
    usable = [r for r in records if paths[r.path] in row_of]
    tokenizer = Tokenizer.from_config(model.config)
    correct: dict[str, list[bool]] = defaultdict(list)
    predictions = []
    for start in range(0, len(usable), batch_size):
        chunk = usable[start:start + batch_size]
        ids, mask = tokenizer([r.question for r in chunk])
        ids, mask = ids.to(model.device), mask.to(model.device)
        rows = torch.tensor([row_of[paths[r.path]] for r in chunk], device=model.device)
        with _autocast(model.device, amp_dtype):
            logits = model.answer_logits_from_tokens(video_tokens[rows], model.text_tokens(ids, mask), mask).float()
        logits = logits[:, :len(answers)]  # classifier rows beyond the vocabulary never win
        for r, pred in zip(chunk, logits.argmax(1).tolist()):
            ok = label.get(r.answer, IGNORE_INDEX) == pred
            correct[r.answer_type].append(ok)
            predictions.append({"video": r.path, "question": r.question, "answer": r.answer,
                                "prediction": answers[pred], "answer_type": r.answer_type})
    every = [ok for oks in correct.values() for ok in oks]
    per_type = {t: 100.0 * float(np.mean(oks)) for t, oks in sorted(correct.items())}
    skipped = [media[i][0] for i in range(len(media)) if i not in row_of]
    return {"accuracy": 100.0 * float(np.mean(every)) if every else 0.0, "per_type": per_type,
            "mean_per_type": float(np.mean(list(per_type.values()))) if per_type else 0.0,
            "per_type_count": {t: len(oks) for t, oks in sorted(correct.items())}, "questions": len(every),
            "skipped": skipped, "predictions": predictions}

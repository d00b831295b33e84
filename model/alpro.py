"""The ALPRO network: encoders, VTC projections and temperature, VTM, MLM, PEM and QA heads, prompter.

Tensors in, tensors out. Video is (B, T, 3, H, W), already normalised; text is token ids plus a 1/0
attention mask. The `*_tokens` methods return the token-level outputs that VTM re-ranking and QA reuse,
so a caller can compute them once per video and cache them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .bert import TextEncoder
from .config import AlproConfig
from .layers import MlpHead
from .timesformer import VideoEncoder, stem_channels

TEMP_MIN, TEMP_MAX = 0.001, 0.5


class MlmHead(nn.Module):
    """BERT's MLM prediction head; the decoder weight is tied to the word embeddings."""

    def __init__(self, dim: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(x))), word_embeddings, self.bias)


class AlproModel(nn.Module):
    """ALPRO with the attribute names of the reference, so official checkpoints map by prefix."""

    def __init__(self, config: AlproConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim = config.text.hidden_size
        self.visual_encoder = VideoEncoder(config.vision)
        self.text_encoder = TextEncoder(config.text)
        self.vision_proj = nn.Linear(config.vision.embed_dim, config.embed_dim)
        self.text_proj = nn.Linear(dim, config.embed_dim)
        self.itm_head = nn.Linear(dim, 2)
        self.temp = nn.Parameter(torch.tensor(config.temp_init))
        self.mlm_head = MlmHead(dim, config.text.vocab_size, config.text.layer_norm_eps) if config.mlm_head else None
        self.qa_head = MlpHead(dim, 2 * dim, config.num_answers) if config.num_answers else None
        self.pem_head = MlpHead(dim, 2 * dim, config.num_entities) if config.num_entities else None
        self.prompter = AlproModel(prompter_config(config)) if config.num_entities else None
        if config.prompt_entities:
            # Mean over templates of the normalised prompt features, one row per entity.
            self.register_buffer("video_prompt_feat", torch.zeros(config.prompt_entities, config.embed_dim))
            self.register_buffer("image_prompt_feat", torch.zeros(config.prompt_entities, config.embed_dim))
        self.reset_parameters()
        self.eval()

    # ----------------------------------------------------------------------------------------------
    # Initialisation and switches

    def reset_parameters(self) -> None:
        """Random init as the reference: BERT normal(0.02); ViT truncated normal(0.02); zero time_embed.
        The text encoder's std is `config.text.init_std` (0.02 unless set); `time_embed` is truncated normal
        with `config.vision.time_init_std` when that is set, `pos_embed` with `config.vision.pos_init_std`; a
        conv patch stem gets He init."""
        text = set(self.text_encoder.modules())
        for module in self.modules():
            std = self.config.text.init_std if module in text else 0.02
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        enc = self.visual_encoder
        enc.patch_embed.reset_stem()
        nn.init.trunc_normal_(enc.pos_embed, std=self.config.vision.pos_init_std)
        nn.init.trunc_normal_(enc.cls_token, std=0.02)
        if self.config.vision.time_init_std > 0:
            nn.init.trunc_normal_(enc.time_embed, std=self.config.vision.time_init_std)
        else:
            nn.init.zeros_(enc.time_embed)
        for i, block in enumerate(enc.blocks):
            if i > 0:  # the reference leaves the first temporal_fc random and zeroes the rest
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)
        with torch.no_grad():
            self.temp.fill_(self.config.temp_init)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder blocks during backward (training only) to trade compute for memory."""
        for model in (self, self.prompter) if self.prompter is not None else (self,):
            model.visual_encoder.grad_checkpointing = enabled
            model.text_encoder.grad_checkpointing = enabled

    @property
    def temperature(self) -> float:
        """The learned VTC temperature, clamped to the reference's range."""
        return float(self.temp.detach().clamp(TEMP_MIN, TEMP_MAX))

    @property
    def device(self) -> torch.device:
        return self.temp.device

    # ----------------------------------------------------------------------------------------------
    # Unimodal encoders

    def video_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, 1 + N, D): cls plus time-averaged patch tokens (cacheable per video)."""
        return self.visual_encoder(video)

    def video_features(self, video_tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) -> (B, embed_dim) L2-normalised projection of the cls token."""
        return F.normalize(self.vision_proj(video_tokens[:, 0]), dim=-1)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) normalised frames -> (B, embed_dim) L2-normalised embeddings."""
        return self.video_features(self.video_tokens(video))

    def text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and mask -> (N, L, D) outputs of the text-only layers."""
        return self.text_encoder.encode(input_ids, attention_mask)

    def text_features(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, D) -> (N, embed_dim) L2-normalised projection of [CLS]."""
        return F.normalize(self.text_proj(text_tokens[:, 0]), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and mask -> (N, embed_dim) L2-normalised embeddings."""
        return self.text_features(self.text_tokens(input_ids, attention_mask))

    def similarity(self, video_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """VTC logits: cosine similarity divided by the temperature, (B, N)."""
        return video_features @ text_features.t() / self.temp.clamp(TEMP_MIN, TEMP_MAX)

    # ----------------------------------------------------------------------------------------------
    # Fusion and the heads on top of it

    def fuse(self, video_tokens: torch.Tensor, text_tokens: torch.Tensor,
             text_mask: torch.Tensor, rows: Optional[int] = None) -> torch.Tensor:
        """Row i of text with row i of video -> (B, L + 1 + N, D) fused hidden states, text part first; with
        `rows`, only the first `rows` positions (B, rows, D) (the heads on [CLS] need 1: a cheaper last layer)."""
        if video_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(f"fuse pairs rows: got {video_tokens.shape[0]} videos and {text_tokens.shape[0]} texts")
        video_mask = text_mask.new_ones(video_tokens.shape[:2])
        tokens = torch.cat([text_tokens, video_tokens.to(text_tokens.dtype)], dim=1)
        return self.text_encoder.fuse(tokens, torch.cat([text_mask, video_mask], dim=1), rows)

    def vtm_logits_from_tokens(self, video_tokens: torch.Tensor, text_tokens: torch.Tensor,
                               text_mask: torch.Tensor) -> torch.Tensor:
        """(B, 2) VTM logits from cached token outputs; index 1 = match."""
        return self.itm_head(self.fuse(video_tokens, text_tokens, text_mask, rows=1)[:, 0])

    def vtm_logits(self, video: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, 2): row i scores video i with text i; index 1 = match."""
        return self.vtm_logits_from_tokens(self.video_tokens(video), self.text_tokens(input_ids, attention_mask),
                                           attention_mask)

    def answer_logits_from_tokens(self, video_tokens: torch.Tensor, text_tokens: torch.Tensor,
                                  text_mask: torch.Tensor) -> torch.Tensor:
        """(B, num_answers) QA logits from cached token outputs."""
        if self.qa_head is None:
            raise RuntimeError("this model has no QA head (num_answers=0); load a QA checkpoint")
        return self.qa_head(self.fuse(video_tokens, text_tokens, text_mask, rows=1)[:, 0])

    def answer_logits(self, video: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, num_answers): question i about video i."""
        return self.answer_logits_from_tokens(self.video_tokens(video), self.text_tokens(input_ids, attention_mask),
                                              attention_mask)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, D) fused text hidden states -> (B, L, vocab) MLM logits."""
        if self.mlm_head is None:
            raise RuntimeError("this model has no MLM head")
        return self.mlm_head(hidden, self.text_encoder.embeddings.word_embeddings.weight)

    def pem_logits(self, fused_video_tokens: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """PEM: mean of the fused patch tokens inside each crop -> (B, num_entities) logits.

        fused_video_tokens is (B, 1 + N, D) (the video part of `fuse`; (B, 1 + N*S, D) in (n s) order with vision
        time_segments S, every segment of a patch then inside or outside the crop alike); patch_mask is (B, N),
        1 inside the crop.
        """
        if self.pem_head is None:
            raise RuntimeError("this model has no PEM head (num_entities=0)")
        patches = fused_video_tokens[:, 1:]
        if self.config.vision.time_segments > 1:
            patch_mask = patch_mask.repeat_interleave(self.config.vision.time_segments, dim=1)  # (B, N*S)
        weights = patch_mask.to(patches.dtype).unsqueeze(-1)  # (B, N, 1)
        pooled = (patches * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.pem_head(pooled)

    # ----------------------------------------------------------------------------------------------
    # Native format

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write safetensors weights and the JSON config (pre-processing included) to `directory`."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_video_flops(self) -> float:
        """Approximate forward FLOPs of `encode_video` for one clip (matmuls and attention)."""
        return video_encoder_flops(self.config)


def rerank_scores(cosine: torch.Tensor, itm_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Re-ranking evidence of candidate pairs: the VTC logit (cosine / the model's temperature) plus the VTM
    log-odds of a match (itm_logits[..., 1] - itm_logits[..., 0]), the two models' evidence added in log space.

    The reference ranks by softmax(itm_logits)[1] alone and LAVIS by itm_logits[1] + cosine. The VTM loss sees
    only the difference of the two logits, so itm_logits[1] alone carries a shift the training never fixes,
    and a VTM that has not learnt a distinction scores it with noise. On this project's small checkpoints
    (100 held-out videos, VTC top 16; docs/learn_objectives.md), from VTC R@1 42 / 44: softmax alone 6 / 7, LAVIS 27 /
    30, this sum 44 / 47; a VTM at its prior gives a near-constant log-odds and leaves the VTC order as it is.
    """
    return cosine.float() / temperature + (itm_logits[..., 1] - itm_logits[..., 0]).float()


def rerank_probability(cosine: torch.Tensor, best_cosine: float, itm_logits: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """`rerank_scores` as a number from 0 to 1 with the same order among one query's candidates:
    sigmoid(VTM log-odds + (cosine - best_cosine) / temperature), the VTM match probability for the candidate
    with the best cosine, lowered for the others by how far their cosine lies below it."""
    return torch.sigmoid(rerank_scores(cosine, itm_logits, temperature) - best_cosine / temperature)


def prompter_config(config: AlproConfig) -> AlproConfig:
    """The prompter is an ALPRO model of the same sizes trained with VTC only, holding prompt features."""
    return config.replace(num_entities=0, num_answers=0, answers=(), mlm_head=True,
                          prompt_entities=config.num_entities)


def video_encoder_flops(config: AlproConfig) -> float:
    """FLOPs (2 per multiply-add) of one clip through the TimeSformer and vision projection."""
    v = config.vision
    d, t, n = v.embed_dim, v.num_frames, v.num_patches
    hidden = int(d * v.mlp_ratio)
    tokens = n * t
    if v.patch_stem == "conv":  # 3x3 stride-2 convolutions, each output pixel 9 * c_in * c_out, then the 1x1
        patch, side, c_in = 0, v.img_size, 3
        for c_out in stem_channels(v):
            side = (side + 1) // 2
            patch += 2 * t * side * side * 9 * c_in * c_out
            c_in = c_out
        patch += 2 * tokens * c_in * d
    else:
        patch = 2 * tokens * (3 * v.patch_size**2) * d
    temporal = 2 * tokens * (3 * d * d + d * d + d * d) + 2 * 2 * n * t * t * d  # qkv, proj, fc; QK^T and AV
    spatial = 2 * t * (n + 1) * (3 * d * d + d * d) + 2 * 2 * t * (n + 1) ** 2 * d
    mlp = 2 * (tokens + 1) * 2 * d * hidden
    per_block = temporal + spatial + mlp
    return float(patch + v.depth * per_block + 2 * d * config.embed_dim)


def text_encoder_flops(config: AlproConfig, length: int) -> float:
    """FLOPs of one text of `length` tokens through the text-only layers and the projection."""
    tc = config.text
    d, f = tc.hidden_size, tc.intermediate_size
    per_layer = 2 * length * (4 * d * d + 2 * d * f) + 2 * 2 * length * length * d
    return float(tc.fusion_layer * per_layer + 2 * d * config.embed_dim)


__all__ = ["AlproModel", "MlmHead", "prompter_config", "video_encoder_flops", "text_encoder_flops"]

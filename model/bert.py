"""BERT layers as ALPRO splits them: text layers [0, fusion_layer), fusion layers after that.

Fusion layers use plain self-attention over [text tokens ; video tokens] (ALPRO's xbert in `fusion`
mode), not cross-attention. Post-LayerNorm residuals and exact-erf GELU, like bert-base-uncased.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TextConfig


class SelfAttention(nn.Module):
    """BERT self-attention with separate query/key/value projections, through SDPA."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.dropout = config.attention_dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with `rows`, only the first `rows` positions ask (B, rows, D), all answer."""
        b, length, dim = x.shape  # (B, L, D)
        heads = self.num_heads
        queries = x if rows is None else x[:, :rows]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], heads, dim // heads).transpose(1, 2)  # (B, heads, L, hd)

        q, k, v = split(self.query(queries)), split(self.key(x)), split(self.value(x))
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(out.transpose(1, 2).reshape(b, queries.shape[1], dim))


class BertLayer(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), or the first `rows` positions' outputs alone (B, rows, D)."""
        queries = x if rows is None else x[:, :rows]
        x = self.attn_norm(queries + self.dropout(self.attn(x, mask, rows)))
        return self.mlp_norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class TextEmbeddings(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, dim)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, dim)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {length} tokens exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        # ALPRO never uses token types other than 0.
        x = (self.word_embeddings(input_ids) + self.position_embeddings.weight[:length]
             + self.token_type_embeddings.weight[0])
        return self.dropout(self.norm(x))


def attention_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) 1/0 padding mask -> (B, 1, 1, L) boolean SDPA mask (True = attend); None when nothing is masked."""
    if mask is None or bool(mask.all()):
        return None
    return mask.bool()[:, None, None, :]


class TextEncoder(nn.Module):
    """Embeddings plus all BERT layers; `encode` runs the text layers, `fuse` the fusion layers."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))
        self.grad_checkpointing = False

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None, layers: nn.ModuleList,
             rows: int | None = None) -> torch.Tensor:
        """The layers in turn; the last computes only the first `rows` positions when given."""
        sdpa_mask = attention_mask(mask)
        for i, layer in enumerate(layers):
            last_rows = rows if i == len(layers) - 1 else None
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, sdpa_mask, last_rows, use_reentrant=False)
            else:
                x = layer(x, sdpa_mask, last_rows)
        return x

    def encode(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(N, L) token ids -> (N, L, D) after the text-only layers."""
        return self._run(self.embeddings(input_ids), mask, self.layers[: self.config.fusion_layer])

    def fuse(self, tokens: torch.Tensor, mask: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """(B, L, D) concatenated text+video tokens -> (B, L, D) after the fusion layers, or only the first `rows`
        positions (B, rows, D): the last layer then skips the others, whose outputs nothing would read."""
        return self._run(tokens, mask, self.layers[self.config.fusion_layer :], rows)

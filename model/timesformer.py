"""TimeSformer video encoder with divided space-time attention (Bertasius et al. 2021), as ALPRO uses it.

Token order inside the encoder is (h w t), like the reference: for one video the patch tokens of one
spatial position over all frames are adjacent, so temporal attention is a free view and spatial
attention needs one transpose per block.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .layers import DropPath, FusedAttention, Mlp


class DividedSpaceTimeBlock(nn.Module):
    """Temporal attention, then spatial attention (cls per frame, averaged back), then MLP."""

    def __init__(self, config: VisionConfig, drop_path: float) -> None:
        super().__init__()
        dim = config.embed_dim
        eps = config.layer_norm_eps
        self.temporal_norm1 = nn.LayerNorm(dim, eps=eps)
        self.temporal_attn = FusedAttention(dim, config.num_heads, config.qkv_bias)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = FusedAttention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, num_frames: int, cls_time: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`cls_time` (1, T, D), when given, is added to frame t's copy of cls in spatial attention."""
        b, length, dim = x.shape  # (B, 1 + N*T, D), patches in (n t) order
        t = num_frames
        n = (length - 1) // t
        cls, patches = x[:, :1], x[:, 1:]

        # Temporal: every spatial position attends over its T frames; cls does not take part.
        xt = patches.reshape(b * n, t, dim)  # (B*N, T, D)
        res_t = self.drop_path(self.temporal_attn(self.temporal_norm1(xt)))
        xt = patches + self.temporal_fc(res_t.view(b, n * t, dim))  # (B, N*T, D)

        # Spatial: every frame attends over its N patches plus a copy of cls.
        xs = xt.view(b, n, t, dim).transpose(1, 2).reshape(b * t, n, dim)  # (B*T, N, D)
        cls_frames = cls.repeat_interleave(t, dim=0)  # (B*T, 1, D)
        if cls_time is not None:
            cls_frames = (cls_frames.view(b, t, dim) + cls_time).view(b * t, 1, dim)
        xs = torch.cat([cls_frames, xs], dim=1)  # (B*T, 1+N, D)
        res_s = self.drop_path(self.attn(self.norm1(xs)))
        res_cls = res_s[:, 0].view(b, t, dim).mean(dim=1, keepdim=True)  # (B, 1, D)
        res_p = res_s[:, 1:].view(b, t, n, dim).transpose(1, 2).reshape(b, n * t, dim)  # (B, N*T, D)

        x = torch.cat([cls + res_cls, xt + res_p], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def stem_channels(config: VisionConfig) -> list[int]:
    """Output channels of the conv patch stem's levels: 32, 64, 128, ..., one per halving of the resolution."""
    return [32 * 2**i for i in range(config.patch_size.bit_length() - 1)]


class PatchEmbed(nn.Module):
    """Per-frame patch tokens: one strided convolution (the reference), or a convolutional stem before it.

    The conv stem (`patch_stem="conv"`) halves the resolution log2(patch_size) times with 3x3 convolutions
    (32, 64, 128, ... channels, BatchNorm, ReLU); `proj` is then a 1x1 convolution to the width, so each
    token still covers one patch_size x patch_size patch of its frame.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        p = config.patch_size
        if config.patch_stem == "conv":
            layers: list[nn.Module] = []
            channels = 3
            for out in stem_channels(config):
                layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                channels = out
            self.stem: nn.Module = nn.Sequential(*layers)
            self.proj = nn.Conv2d(channels, config.embed_dim, kernel_size=1)
        else:
            self.stem = nn.Identity()
            self.proj = nn.Conv2d(3, config.embed_dim, kernel_size=p, stride=p)

    def reset_stem(self) -> None:
        """He init for the stem's convolutions (followed by ReLU), unit BatchNorm, fresh running stats."""
        for module in self.stem.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(frames)).flatten(2).transpose(1, 2)  # (B*T, C, H, W) -> (B*T, N, D)


class VideoEncoder(nn.Module):
    """(B, T, 3, H, W) normalised frames -> (B, 1 + N, D) = [cls ; patch tokens averaged over time], or with
    `time_segments` S > 1 (B, 1 + N*S, D): [cls ; patch tokens averaged over each S-th of the frames], (n s) order."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, config.num_frames, dim))
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.grad_checkpointing = False

    def check_input(self, video: torch.Tensor) -> None:
        """Raise ValueError unless `video` is (B, T, 3, H, W) with this encoder's T and H = W."""
        c = self.config
        expected = (c.num_frames, 3, c.img_size, c.img_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"video must be (B, {', '.join(map(str, expected))}); got {tuple(video.shape)}")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        self.check_input(video)
        b, t = video.shape[:2]
        n = self.config.num_patches
        dim = self.config.embed_dim
        patches = self.patch_embed(video.flatten(0, 1))  # (B*T, N, D)
        patches = patches + self.pos_embed[:, 1:]
        patches = patches.view(b, t, n, dim).transpose(1, 2) + self.time_embed.unsqueeze(1)  # (B, N, T, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, patches.reshape(b, n * t, dim)], dim=1)  # (B, 1 + N*T, D)
        cls_time = self.time_embed if self.config.cls_time else None
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, t, cls_time, use_reentrant=False)
            else:
                x = block(x, t, cls_time)
        x = self.norm(x)
        segments = self.config.time_segments
        pooled = x[:, 1:].view(b, n * segments, t // segments, dim).mean(dim=2)  # (B, N*S, D)
        if self.config.fusion_pos:
            time = self.time_embed.view(1, 1, segments, t // segments, dim).mean(dim=3)  # (1, 1, S, D)
            where = self.pos_embed[:, 1:].unsqueeze(2) + time  # (1, N, S, D)
            pooled = pooled + where.reshape(1, n * segments, dim)
        return torch.cat([x[:, :1], pooled], dim=1)


def resize_time_embed(time_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(1, T, D) -> (1, num_frames, D) by nearest interpolation, as the reference does on load."""
    if time_embed.shape[1] == num_frames:
        return time_embed
    return F.interpolate(time_embed.transpose(1, 2), size=num_frames, mode="nearest").transpose(1, 2)


def resize_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(1, 1 + N, D) -> (1, 1 + num_patches, D): cls kept, patches resized by 1-D nearest (reference rule)."""
    if pos_embed.shape[1] == num_patches + 1:
        return pos_embed
    cls, other = pos_embed[:, :1], pos_embed[:, 1:]
    other = F.interpolate(other.transpose(1, 2), size=num_patches, mode="nearest").transpose(1, 2)
    return torch.cat([cls, other], dim=1)

"""The four training tasks: what each builds, which data it reads, which losses it optimises, how it is
validated (ALPRO_REFERENCE.md "Pre-training in the reference" / "Fine-tuning").

| task               | losses                 | model                                          |
|--------------------|------------------------|------------------------------------------------|
| pretrain-prompter  | VTC                    | prompter (holds entity prompt features)        |
| pretrain           | VTC + VTM + MLM + PEM  | full model, frozen prompter inside             |
| finetune-retrieval | VTC + VTM              | retrieval model (MLM head kept, unused)        |
| finetune-qa        | answer cross-entropy   | QA model (classifier over the answer list)     |
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from model import AlproModel, Tokenizer

from . import synth
from .config import LossSection, TrainConfig
from .data import (KeyedDataset, QADataset, SyntheticQA, SyntheticVideoText, VideoTextDataset, build_answer_vocab,
                   read_answer_vocab, read_qa, read_video_text, synthetic_answer_vocab)
from .evaluate import evaluate_qa, evaluate_retrieval
from .losses import LossOutput, alpro_losses, qa_loss
from .modeling import base_config, build_model, freeze, new_head_prefixes, task_config
from .optim import encoder_prefixes
from .prompter import build_prompt_features, extract_entities, read_entities

logger = logging.getLogger(__name__)


@dataclass
class TaskSetup:
    model: AlproModel
    train_dataset: KeyedDataset
    loss_weights: dict[str, float]
    best_metric: str  # larger is better
    evaluate: Optional[Callable[[AlproModel], dict[str, Any]]] = None
    before_save: Optional[Callable[[AlproModel], None]] = None
    files: dict[str, str] = field(default_factory=dict)  # extra files written beside every checkpoint
    new_heads: tuple[str, ...] = ()
    pool_video: Optional[Callable[[int], torch.Tensor]] = None  # synthetic QA pool: clip index -> its video


class LossModule(nn.Module):
    """The objective as a module, so DistributedDataParallel sees one forward per micro-step."""

    def __init__(self, model: AlproModel, task: str, weights: dict[str, float], loss: LossSection,
                 cache_video_tokens: bool = False,
                 pool_video: Optional[Callable[[int], torch.Tensor]] = None) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.weights = weights
        self.loss = loss
        if cache_video_tokens and pool_video is None:
            raise ValueError("cached video tokens need the pool's videos (pool_video)")
        # pool clip index -> its video tokens (train.cache_video_tokens); not state: rebuilt after a resume
        self.video_cache: Optional[dict[int, torch.Tensor]] = {} if cache_video_tokens else None
        self.pool_video = pool_video  # pool clip index -> its normalised frames
        self.progress = 0.0  # share of the run's steps done, set by the trainer before each step

    def vtm_hard_ratio(self) -> float:
        """The share of hard VTM negatives at this point of the run (loss.vtm_hard_warmup ramps it up)."""
        ratio, warmup = self.loss.vtm_hard_ratio, self.loss.vtm_hard_warmup
        return ratio if warmup <= 0 else ratio * min(1.0, self.progress / warmup)

    def cached_video_tokens(self, batch: dict) -> torch.Tensor:
        """The batch's video tokens, encoding (in eval mode, without gradients) only clips not seen before."""
        cache, clips = self.video_cache, [int(c) for c in batch["clip"]]
        assert cache is not None and self.pool_video is not None
        if min(clips) < 0:
            raise ValueError("cached video tokens need pool clips (data.synth_pool_clips > 0)")
        missing = list(dict.fromkeys(c for c in clips if c not in cache))
        if missing:
            video = torch.stack([self.pool_video(c) for c in missing]).to(self.model.device)
            encoder = self.model.visual_encoder
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad():
                tokens = self.model.video_tokens(video)
            encoder.train(was_training)
            for clip, row in zip(missing, tokens):
                cache[clip] = row.clone()
        return torch.stack([cache[c] for c in clips])

    def forward(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.task == "finetune-qa":
            video = self.cached_video_tokens(batch) if self.video_cache is not None else None
            out: LossOutput = qa_loss(self.model, batch, video)
        else:
            out = alpro_losses(self.model, batch, self.weights, generator, self.loss.vtm_negatives,
                               self.loss.pem_min_confidence, self.vtm_hard_ratio(),
                               self.loss.vtm_pairs)
        return out.objective, out.terms


def resolve_entities(config: TrainConfig, captions: Optional[list[str]]) -> list[str]:
    """User list > synthetic corpus list > alpro-synth vocabulary (synthetic source) > corpus content words."""
    data = config.data
    if data.entities:
        return read_entities(data.entities)
    if data.synth_corpus and (Path(data.synth_corpus) / "annotations" / "entities.txt").is_file():
        return read_entities(Path(data.synth_corpus) / "annotations" / "entities.txt")
    if data.source == "synthetic":
        return synth.entity_vocabulary()
    if not captions:
        raise ValueError("no entity list and no captions to extract entities from")
    entities = extract_entities(captions, data.num_entities)
    logger.info("extracted %d entities from %d captions (most frequent: %s)", len(entities), len(captions),
                ", ".join(entities[:10]))
    return entities


def resolve_answers(config: TrainConfig, answers_seen: Optional[list[str]]) -> dict[str, int]:
    """Answer file > synthetic corpus file > alpro-synth answers (synthetic source) > training answers."""
    data = config.data
    if data.answers:
        return read_answer_vocab(data.answers)
    if data.synth_corpus and (Path(data.synth_corpus) / "annotations" / "ans2label.json").is_file():
        return read_answer_vocab(Path(data.synth_corpus) / "annotations" / "ans2label.json")
    if data.source == "synthetic":
        return synthetic_answer_vocab()
    vocab = build_answer_vocab(answers_seen or [])
    logger.info("built an answer vocabulary of %d answers from the training split", len(vocab))
    return vocab


def loss_weights(config: TrainConfig) -> dict[str, float]:
    loss = config.loss
    if config.task == "pretrain-prompter":
        return {"vtc": 1.0}
    if config.task == "finetune-retrieval":
        return {"vtc": loss.vtc, "vtm": loss.vtm}
    if config.task == "pretrain":
        return {"vtc": loss.vtc, "vtm": loss.vtm, "mlm": loss.mlm, "pem": loss.pem}
    return {"qa": 1.0}


def prepare(config: TrainConfig) -> TaskSetup:
    """Build model, training dataset, validation and checkpoint hooks for `config.task`."""
    task, data = config.task, config.data
    base = base_config(config.model)
    weights = loss_weights(config)
    files: dict[str, str] = {}
    seed = config.train.seed

    pool_video: Optional[Callable[[int], torch.Tensor]] = None
    if task == "finetune-qa":
        records = read_qa(data.train, data.video_root) if data.source == "files" else []
        answers = resolve_answers(config, [r.answer for r in records])
        ordered = sorted(answers, key=answers.get)
        model_config = task_config(base, task, answers=ordered)
        model = build_model(config.model, model_config, seed)
        if data.source == "files":
            dataset: KeyedDataset = QADataset(records, answers, model_config, data, seed)
        else:
            dataset = SyntheticQA(answers, model_config, data, seed,
                                  pool_videos=not config.train.cache_video_tokens)
            pool_video = dataset.pool_video
        files["ans2label.json"] = json.dumps(answers, indent=1)
        val = read_qa(data.val, data.video_root) if data.val else []
        evaluate = (lambda m: evaluate_qa(m, _limit(val, config), config.eval.batch_size,
                                          config.eval.num_workers)) if val else None
        best = config.train.best_metric or "mean_per_type"
    else:
        records = read_video_text(data.train, data.video_root) if data.source == "files" else []
        entities: list[str] = []
        if task in ("pretrain-prompter", "pretrain") and (task == "pretrain-prompter" or weights["pem"] > 0):
            entities = resolve_entities(config, [c for r in records for c in r.captions])
            files["entities.txt"] = "\n".join(entities) + "\n"
        else:
            weights.pop("pem", None)
        model_config = task_config(base, task, num_entities=len(entities))
        model = build_model(config.model, model_config, seed)
        mlm = weights.get("mlm", 0) > 0
        pem = weights.get("pem", 0) > 0
        if data.source == "files":
            dataset = VideoTextDataset(records, model_config, data, config.loss, seed, mlm=mlm, pem=pem)
        else:
            dataset = SyntheticVideoText(model_config, data, config.loss, seed, mlm=mlm, pem=pem)
        val = read_video_text(data.val, data.video_root) if data.val else []
        rerank = weights.get("vtm", 0) > 0
        evaluate = (lambda m: evaluate_retrieval(m, _limit(val, config), config.eval.rerank_k,
                                                 config.eval.batch_size, config.eval.num_workers,
                                                 rerank=rerank)) if val else None
        best = config.train.best_metric or "t2v_r1"

    before_save = None
    if task == "pretrain-prompter":
        tokenizer = Tokenizer.from_config(model.config)

        def before_save(m: AlproModel) -> None:
            build_prompt_features(m, tokenizer, entities)

    freeze(model, task, weights)
    if config.optim.encoder_lr_mult == 0:
        for name, param in model.named_parameters():
            if name.startswith(encoder_prefixes(model)):
                param.requires_grad_(False)
    return TaskSetup(model=model, train_dataset=dataset, loss_weights=weights, best_metric=best,
                     evaluate=evaluate, before_save=before_save, files=files,
                     new_heads=new_head_prefixes(config.model, task), pool_video=pool_video)


def _limit(records: list, config: TrainConfig) -> list:
    n = config.eval.max_videos
    return records[:n] if n else records

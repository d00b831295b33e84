"""Training data: JSON Lines annotations or fresh synthetic clips -> batches for the ALPRO losses.

Annotations (ALPRO_REFERENCE.md "Pre-processing"; field names as the reference's jsonl files):
- video-text: {"video": "rel/path.mp4", "caption": "..." | ["...", ...], "key"?: "..."}
- image-text (CC3M style): {"image": "rel/path.jpg", "caption": ...}; the image is repeated to T frames
- QA: {"video": ..., "question": "...", "answer": "...", "answer_type"?: "..."}
Paths are relative to `data.video_root`. `key` (optional) groups records that describe the same content
(alpro-synth writes it): records with one key are never each other's negatives; the caption text is the
key otherwise.

Determinism: a sample is a pure function of (seed, epoch, index) - frame sampling, crops, flips, caption
choice, MLM masks and PEM boxes all come from `np.random.default_rng([seed, epoch, index])` - so data
does not depend on worker count, process count or where a run was resumed. `EpochBatchSampler` orders
each epoch from (seed, epoch) and hands rank r its slice of every global batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from model import AlproConfig, Tokenizer, VideoError, normalize_frames, resize_frames, sample_frame_indices
from model.decode import decode_clips

from . import synth
from .config import DataSection, LossSection
from .masking import mask_tokens
from .prompter import crop_video, patch_mask, sample_box

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


class AnnotationError(ValueError):
    """An annotation file or record is malformed."""


# -- records -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoTextRecord:
    path: str  # absolute or root-joined file path
    captions: tuple[str, ...]  # one or more captions of the same clip
    key: str  # content group: equal keys are never negatives of each other
    is_image: bool = False


@dataclass(frozen=True)
class QARecord:
    path: str
    question: str
    answer: str
    answer_type: str = "all"
    is_image: bool = False


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON Lines file; blank lines skipped; a bad line is an error naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}:{number}: not JSON ({e})") from e
            if not isinstance(row, dict):
                raise AnnotationError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def _media(row: dict[str, Any], root: Optional[str], where: str) -> tuple[str, bool]:
    rel = row.get("video") or row.get("image")
    if not isinstance(rel, str) or not rel:
        raise AnnotationError(f"{where}: needs a 'video' or 'image' path")
    is_image = bool(row.get("is_image", "image" in row and "video" not in row)) or rel.lower().endswith(IMAGE_SUFFIXES)
    path = Path(rel)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    return str(path), is_image


def read_video_text(paths: Sequence[str | Path], root: Optional[str]) -> list[VideoTextRecord]:
    records = []
    for file in paths:
        for i, row in enumerate(read_jsonl(file), 1):
            where = f"{file}:{i}"
            path, is_image = _media(row, root, where)
            caption = row.get("caption", row.get("captions"))
            captions = (caption,) if isinstance(caption, str) else tuple(caption or ())
            if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
                raise AnnotationError(f"{where}: 'caption' must be a non-empty string or list of strings")
            key = str(row.get("key") or captions[0].strip().lower())
            records.append(VideoTextRecord(path, captions, key, is_image))
    return records


def read_qa(paths: Sequence[str | Path], root: Optional[str]) -> list[QARecord]:
    records = []
    for file in paths:
        for i, row in enumerate(read_jsonl(file), 1):
            where = f"{file}:{i}"
            path, is_image = _media(row, root, where)
            question, answer = row.get("question"), row.get("answer")
            if not isinstance(question, str) or not isinstance(answer, str):
                raise AnnotationError(f"{where}: QA records need string 'question' and 'answer'")
            records.append(QARecord(path, question, answer, str(row.get("answer_type", "all")), is_image))
    return records


def build_answer_vocab(answers: Sequence[str], max_answers: int = 0) -> dict[str, int]:
    """{answer: index}, most frequent first (ties alphabetical), like the reference's train_ans2label.json."""
    ranked = sorted(Counter(answers).items(), key=lambda kv: (-kv[1], kv[0]))
    if max_answers:
        ranked = ranked[:max_answers]
    return {answer: i for i, (answer, _) in enumerate(ranked)}


def read_answer_vocab(path: str | Path) -> dict[str, int]:
    vocab = json.loads(Path(path).read_text())
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise AnnotationError(f"{path}: expected {{answer: index}} with indices 0..N-1")
    return {str(k): int(v) for k, v in vocab.items()}


def stable_hash(text: str) -> int:
    """A 63-bit hash that is the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


# -- sampling order ------------------------------------------------------------------------------------------


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Per-rank micro-batches of (epoch, index) keys, endlessly, from a start position; resumable.

    Epoch e is ordered by a permutation drawn from (seed, e). Global batch b of an epoch is
    perm[b*G:(b+1)*G] with G = batch_size * world_size (the remainder is dropped); rank r gets its r-th
    slice, so the ranks' batches concatenated equal a one-process run with batch G. The stream runs on
    across epochs, so a DataLoader keeps prefetching over epoch boundaries (small datasets).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, group: int = 1) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.global_batch = batch_size * world_size
        self.group = group  # > 1: items g*group .. g*group+group-1 stay together, in one rank's batch
        if num_items < self.global_batch:
            raise ValueError(f"{num_items} training items cannot fill one global batch of {self.global_batch}")
        if group < 1 or batch_size % group:
            raise ValueError(f"a batch of {batch_size} cannot hold whole groups of {group} items")
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Where the next iteration starts."""
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // self.group * self.group // self.global_batch

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This rank's batches of one epoch, from `start_batch` on."""
        # whole groups in a shuffled order (a last incomplete group is left out); groups of 1 are the items
        groups = self.num_items // self.group
        first = (np.random.default_rng([self.seed, epoch]).permutation(groups) if self.shuffle
                 else np.arange(groups)) * self.group
        order = (first[:, None] + np.arange(self.group)).reshape(-1)
        for b in range(start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.batch_size
            yield [(epoch, int(i)) for i in order[start:start + self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start_batch
        while True:
            yield from self.epoch_batches(epoch, start)
            epoch, start = epoch + 1, 0


# -- pixels --------------------------------------------------------------------------------------------------


FLIP_CACHE: dict[tuple, re.Pattern] = {}


def swap_words(text: str, mapping: dict[str, str]) -> str:
    """Replace whole words by `mapping` simultaneously (left <-> right)."""
    if not mapping:
        return text
    key = tuple(sorted(mapping))
    pattern = FLIP_CACHE.get(key)
    if pattern is None:
        pattern = FLIP_CACHE[key] = re.compile(r"\b(" + "|".join(map(re.escape, key)) + r")\b", re.IGNORECASE)
    return pattern.sub(lambda m: _same_case(m.group(0), mapping[m.group(0).lower()]), text)


def _same_case(src: str, dst: str) -> str:
    return dst.capitalize() if src[:1].isupper() else dst


def load_image_frames(path: str, size: int, num_frames: int) -> torch.Tensor:
    """An image as uint8 (T, H, W, 3): resized to size x size and repeated to T frames (the reference's CC3M)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as e:
        raise VideoError(f"cannot read image {path}: {e}") from e
    frame = torch.from_numpy(np.asarray(rgb).copy())  # (H, W, 3)
    return frame.unsqueeze(0).expand(num_frames, -1, -1, -1).contiguous()


class FramePipeline:
    """uint8 frames -> augmented, normalised (T, 3, H, W): the training-time pre-processing."""

    def __init__(self, model_config: AlproConfig, data: DataSection) -> None:
        self.config = model_config
        self.data = data
        self.img = model_config.img_size
        self.decode_size = max(self.img, int(round(self.img * data.crop_scale)))
        self._randaugment = None

    def decode(self, path: str, is_image: bool, rng: np.random.Generator) -> torch.Tensor:
        """uint8 (T, S, S, 3) frames sampled from a file, S = decode size."""
        t = self.config.num_frames
        if is_image:
            return load_image_frames(path, self.decode_size, t)

        def select(info):
            return [sample_frame_indices(info.num_frames, t, self.data.train_sampling, rng=rng)]

        _, (frames,) = decode_clips(path, select, size=self.decode_size)
        return frames

    def augment(self, frames: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
        """Crop, flip, RandAugment on uint8 (T, S, S, 3); returns (T, 3, img, img) uint8 and whether flipped."""
        frames = frames.permute(0, 3, 1, 2)  # (T, 3, S, S)
        size = frames.shape[-1]
        if size != self.img:
            if self.data.crop_scale > 1.0:
                y, x = (int(v) for v in rng.integers(0, size - self.img + 1, size=2))
                frames = frames[..., y:y + self.img, x:x + self.img]
            else:
                frames = resize_frames(frames, self.img)
        flipped = bool(self.data.hflip_prob > 0 and rng.random() < self.data.hflip_prob)
        if flipped:
            frames = frames.flip(-1)
        if self.data.randaugment:
            frames = self._apply_randaugment(frames, int(rng.integers(2**31)))
        return frames.contiguous(), flipped

    def _apply_randaugment(self, frames: torch.Tensor, seed: int) -> torch.Tensor:
        # One op sequence for the whole (T, 3, H, W) stack: temporally consistent, as the reference.
        if self._randaugment is None:
            from torchvision.transforms import RandAugment

            self._randaugment = RandAugment(num_ops=2, magnitude=5)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._randaugment(frames)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return normalize_frames(frames, self.config)  # (T, 3, H, W) float32


# -- datasets ------------------------------------------------------------------------------------------------


class SampleBuilder:
    """Text side of a sample: tokens, MLM masks, PEM crops (everything seeded by the sample's rng)."""

    def __init__(self, model_config: AlproConfig, loss: LossSection, mlm: bool, pem: bool) -> None:
        self.config = model_config
        self.loss = loss
        self.mlm, self.pem = mlm, pem
        self.tokenizer = Tokenizer.from_config(model_config)

    def text(self, out: dict[str, Any], text: str, rng: np.random.Generator) -> None:
        ids, mask = self.tokenizer([text])
        out["input_ids"], out["attention_mask"] = ids[0], mask[0]
        if self.mlm:
            out["mlm_input_ids"], out["mlm_labels"] = mask_tokens(ids[0], rng, self.config.text.vocab_size,
                                                                  self.loss.mlm_prob)

    def crop(self, out: dict[str, Any], video: torch.Tensor, rng: np.random.Generator) -> None:
        if not self.pem:
            return
        v = self.config.vision
        box = sample_box(rng, v.img_size, v.patch_size, self.loss.pem_area, self.loss.pem_aspect)
        pre = self.config.preprocess
        out["pem_video"] = crop_video(video, box, pre.mean, pre.std)
        out["pem_mask"] = patch_mask(box, v.img_size, v.patch_size)
        out["pem_box"] = torch.tensor([box.x, box.y, box.w, box.h])


class KeyedDataset(Dataset):
    """Map-style dataset indexed by (epoch, index) keys from EpochBatchSampler."""

    seed: int = 0
    max_skip: int = 8

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def path_of(self, index: int) -> str:
        return str(index)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped: list[str] = []
        for attempt in range(self.max_skip + 1):
            i = (index + attempt) % len(self)
            rng = np.random.default_rng([self.seed, epoch, index, attempt])
            try:
                item = self.load(i, rng)
            except VideoError as e:
                logger.warning("skipping record %d (%s): %s", i, self.path_of(i), e)
                skipped.append(self.path_of(i))
                continue
            item["skipped"] = skipped
            item["index"] = i
            return item
        raise VideoError(f"{self.max_skip + 1} records in a row from index {index} cannot be decoded; "
                         f"last: {skipped[-1]}")


class _RecordDataset(KeyedDataset):
    """Records read from annotation files, decoded through the model's frame pipeline; an undecodable record
    is replaced by the following one (at most `data.max_skip` in a row)."""

    def __init__(self, records: Sequence[Any], what: str, model_config: AlproConfig, data: DataSection,
                 builder: SampleBuilder, seed: int) -> None:
        self.records = list(records)
        if not self.records:
            raise AnnotationError(f"no {what} records")
        self.frames = FramePipeline(model_config, data)
        self.builder = builder
        self.data, self.seed, self.max_skip = data, seed, data.max_skip

    def __len__(self) -> int:
        return len(self.records)

    def path_of(self, index: int) -> str:
        return self.records[index].path


class VideoTextDataset(_RecordDataset):
    """Video-text and image-text pairs from annotation files (pretrain, prompter and retrieval training)."""

    def __init__(self, records: Sequence[VideoTextRecord], model_config: AlproConfig, data: DataSection,
                 loss: LossSection, seed: int, mlm: bool = False, pem: bool = False) -> None:
        super().__init__(records, "training", model_config, data, SampleBuilder(model_config, loss, mlm, pem), seed)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record = self.records[index]
        frames, flipped = self.frames.augment(self.frames.decode(record.path, record.is_image, rng), rng)
        video = self.frames.normalize(frames)
        caption = record.captions[int(rng.integers(len(record.captions)))]
        key = record.key
        if flipped:
            caption = swap_words(caption, self.data.flip_words)
            key = swap_words(key, self.data.flip_words)
        out: dict[str, Any] = {"video": video, "key": stable_hash(key), "is_image": record.is_image}
        self.builder.text(out, caption, rng)
        self.builder.crop(out, video, rng)
        return out


class QADataset(_RecordDataset):
    """Video question answering pairs from annotation files."""

    def __init__(self, records: Sequence[QARecord], answers: dict[str, int], model_config: AlproConfig,
                 data: DataSection, seed: int) -> None:
        super().__init__(records, "QA training", model_config, data,
                         SampleBuilder(model_config, LossSection(), mlm=False, pem=False), seed)
        self.answers = answers

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record = self.records[index]
        frames, flipped = self.frames.augment(self.frames.decode(record.path, record.is_image, rng), rng)
        question, answer = record.question, record.answer
        if flipped:
            question = swap_words(question, self.data.flip_words)
            answer = swap_words(answer, self.data.flip_words)
        out: dict[str, Any] = {"video": self.frames.normalize(frames), "is_image": record.is_image,
                               "answer": self.answers.get(answer, IGNORE_INDEX), "answer_type": record.answer_type}
        self.builder.text(out, question, rng)
        return out


class SyntheticFrames:
    """Fresh alpro-synth clips rendered at the times a file of `synth_frames` frames would be sampled at."""

    def __init__(self, model_config: AlproConfig, data: DataSection) -> None:
        self.config = model_config
        self.data = data
        self.pipeline = FramePipeline(model_config, data)
        self.render_size = data.synth_render_size or self.pipeline.decode_size

    def render(self, spec: synth.ClipSpec, rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
        n = self.data.synth_frames
        indices = sample_frame_indices(n, self.config.num_frames, self.data.train_sampling, rng=rng)
        frames = synth.render_clip(spec, self.render_size, times=indices / max(n - 1, 1))  # (T, H, W, 3)
        frames = torch.from_numpy(frames)
        if self.data.synth_noise > 0:
            noise = rng.normal(0.0, self.data.synth_noise, size=frames.shape)
            frames = (frames.numpy() + noise).round().clip(0, 255).astype(np.uint8)
            frames = torch.from_numpy(frames)
        return self.pipeline.augment(frames, rng)


TWIN_STREAM = 0x7717  # seeds the generators a pair of twin clips shares, apart from the per-item ones


class SyntheticVideoText(KeyedDataset):
    """`synth_epoch_clips` fresh clips per epoch; a horizontal flip is `ClipSpec.flipped()` (left <-> right).

    With `synth_twins` (a list of `synth.TWIN_KINDS`) items 2k and 2k+1 are a pair: a clip and its twin
    (`synth.twin_spec`, a kind drawn from the list; an unrelated fresh clip where no listed kind changes
    the clip), at the same frame times and flip. `group` tells the sampler to keep a pair in one batch."""

    def __init__(self, model_config: AlproConfig, data: DataSection, loss: LossSection, seed: int,
                 mlm: bool = False, pem: bool = False) -> None:
        self.frames = SyntheticFrames(model_config, data)
        self.builder = SampleBuilder(model_config, loss, mlm, pem)
        self.data, self.seed, self.max_skip = data, seed, 0
        self.group = 2 if data.synth_twins else 1
        self._epoch = 0

    def __len__(self) -> int:
        return self.data.synth_epoch_clips

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        self._epoch = key[0] if isinstance(key, tuple) else 0  # the pair's generators need it
        return super().__getitem__(key)

    def _twin(self, index: int) -> tuple[synth.ClipSpec, np.random.Generator]:
        """Item `index`'s spec when items come in twin pairs, and the generator both items render with."""
        pair = [self.seed, TWIN_STREAM, self._epoch, index // 2]
        spec = synth.sample_spec(np.random.default_rng(pair + [0]), self.data.synth_two_object_prob)
        if index % 2:
            rng = np.random.default_rng(pair + [1])
            kinds = self.data.synth_twins
            start = int(rng.integers(len(kinds)))
            for kind in kinds[start:] + kinds[:start]:
                twin = synth.twin_spec(spec, kind, rng)
                if twin is not None:
                    break
            spec = twin if twin is not None else synth.sample_spec(rng, self.data.synth_two_object_prob)
        return spec, np.random.default_rng(pair + [2])

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        if self.data.synth_twins:
            spec, render_rng = self._twin(index)
        else:
            spec, render_rng = synth.sample_spec(rng, self.data.synth_two_object_prob), rng
        frames, flipped = self.frames.render(spec, render_rng)
        if flipped:  # the pixels were flipped: describe the flipped clip
            spec = spec.flipped()
        video = self.frames.pipeline.normalize(frames)
        out: dict[str, Any] = {"video": video, "key": stable_hash(spec.key), "is_image": False}
        colourless = False
        if self.data.synth_colourless_captions > 0:
            share = self.data.synth_colourless_captions
            if 0 < self.data.synth_colourless_epochs <= self._epoch:
                share = 0.0  # past the colourless epochs: full captions (the keys stay, so batches look alike)
            colourless = bool(rng.random() < share)
            # what the caption says (text_key) and the coarser key of the clip a colourless caption matches
            out["text_key"] = stable_hash(spec.colourless_key if colourless else spec.key)
            out["colourless_key"] = stable_hash(spec.colourless_key)
            out["text_colourless"] = colourless
        self.builder.text(out, spec.caption(colours=not colourless), rng)
        self.builder.crop(out, video, rng)
        return out


POOL_STREAM = 0x9001  # seeds the generators of `synth_pool_clips` clips apart from the per-item ones


class SyntheticQA(KeyedDataset):
    """Fresh clips (or clips of a fixed pool, `synth_pool_clips`) with `synth_qa_per_clip` questions each;
    question types drawn uniformly when `synth_qa_balance`. Items carry `clip`: the pool index, -1 if fresh.
    With `pool_videos=False` pool items carry no video: the consumer encodes `pool_video(clip)` once and
    caches its tokens (train.cache_video_tokens)."""

    def __init__(self, answers: dict[str, int], model_config: AlproConfig, data: DataSection, seed: int,
                 pool_videos: bool = True) -> None:
        self.answers = answers
        self.frames = SyntheticFrames(model_config, data)
        self.builder = SampleBuilder(model_config, LossSection(), mlm=False, pem=False)
        self.data, self.seed, self.max_skip = data, seed, 0
        self.pool_videos = pool_videos
        self._pool_specs: dict[int, synth.ClipSpec] = {}  # per process; a pure function of (seed, clip)

    def __len__(self) -> int:
        return self.data.synth_epoch_clips

    def pool_clip(self, clip: int) -> tuple[synth.ClipSpec, torch.Tensor]:
        """Pool clip `clip`'s spec (as seen: flipped if its frames are) and normalised frames, the same on
        every call: its spec, frame times and flip come from its own generator."""
        if not 0 <= clip < self.data.synth_pool_clips:
            raise IndexError(f"clip {clip} is not in the pool of {self.data.synth_pool_clips}")
        rng = np.random.default_rng([self.seed, POOL_STREAM, clip])
        spec = synth.sample_spec(rng, self.data.synth_two_object_prob)
        frames, flipped = self.frames.render(spec, rng)
        spec = spec.flipped() if flipped else spec
        self._pool_specs[clip] = spec
        return spec, self.frames.pipeline.normalize(frames)

    def pool_video(self, clip: int) -> torch.Tensor:
        return self.pool_clip(clip)[1]

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        wanted = synth.ANSWER_TYPES[int(rng.integers(len(synth.ANSWER_TYPES)))] if self.data.synth_qa_balance else None
        pool = self.data.synth_pool_clips
        video: Optional[torch.Tensor] = None
        for _ in range(200):
            if pool:
                clip = int(rng.integers(pool))
                spec = self._pool_specs.get(clip)
                if spec is None or self.pool_videos:
                    spec, video = self.pool_clip(clip)
            else:
                clip = -1
                spec = synth.sample_spec(rng, self.data.synth_two_object_prob)
                frames, flipped = self.frames.render(spec, rng)
                if flipped:
                    spec = spec.flipped()
            every = spec.qa_pairs()
            pairs = [p for p in every if wanted is None or p.answer_type == wanted]
            if pairs:
                break
        else:  # a small pool may lack the type: ask the last clip drawn anything
            pairs = every
        chosen = [pairs[int(rng.integers(len(pairs)))]]
        if self.data.synth_qa_per_clip > 1:
            # The other questions about the same clip: a type drawn uniformly among the clip's types, then a
            # question of that type, so the types a clip rarely has (which, direction, size) are not swamped.
            by_type: dict[str, list[synth.QAPair]] = {}
            for pair in every:
                by_type.setdefault(pair.answer_type, []).append(pair)
            types = sorted(by_type)
            for _ in range(self.data.synth_qa_per_clip - 1):
                options = by_type[types[int(rng.integers(len(types)))]]
                chosen.append(options[int(rng.integers(len(options)))])
        out: dict[str, Any] = {"is_image": False, "clip": clip}
        if not pool:
            out["video"] = self.frames.pipeline.normalize(frames)
        elif self.pool_videos:
            out["video"] = video
        texts = []
        for qa in chosen:
            item: dict[str, Any] = {}
            self.builder.text(item, qa.question, rng)
            texts.append(item)
        if len(chosen) == 1:
            out.update(texts[0], answer=self.answers.get(chosen[0].answer, IGNORE_INDEX),
                       answer_type=chosen[0].answer_type)
        else:  # (K, L) questions, (K,) answers: qa_loss encodes the video once and asks all K
            out["input_ids"] = torch.stack([t["input_ids"] for t in texts])
            out["attention_mask"] = torch.stack([t["attention_mask"] for t in texts])
            out["answer"] = torch.tensor([self.answers.get(qa.answer, IGNORE_INDEX) for qa in chosen])
        return out


def synthetic_answer_vocab(num_specs: int = 4000, seed: int = 0) -> dict[str, int]:
    """Every answer alpro-synth produces (found by sampling), as {answer: index}."""
    rng = np.random.default_rng(seed)
    answers = [qa.answer for _ in range(num_specs) for qa in synth.sample_spec(rng, 0.5).qa_pairs()]
    return build_answer_vocab(answers)


# -- batching ------------------------------------------------------------------------------------------------


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep strings and the skipped-file lists as lists."""
    batch: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if name == "skipped":
            batch[name] = [p for v in values for p in v]
        elif isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float)) and not isinstance(values[0], str):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch

"""How well a model would serve as ALPRO's prompter on alpro-synth clips: the entity it ranks first for crops
of one shape (arXiv 2112.09583 section 3.3; training/prompter.py for the crops and pseudo-labels).

A crop is what PEM's teacher sees: one box of the prompter's size range (`sample_box`), everything outside it
black, on a held-out single-shape clip that keeps its colour; of up to BOX_TRIES boxes drawn for a clip, the
first that holds the shape whole on every sampled frame (a clip none fits is passed over). Entities are the
five shapes and the forty coloured shapes ("red circle"), each ensembled over the prompter's video templates
from the model's own text side, so any VTC-trained checkpoint can be probed, a `pretrain-prompter`
checkpoint included (its stored prompt features are built the same way).

    probe = crop_probe(model)            # {"shape_acc": ..., "coloured_acc": ..., "crops": 200, ...}

shape_acc: the right shape first among the five shapes (chance 20%); coloured_acc: the right coloured shape
first among the forty (chance 2.5%); first_is_right_entity: the first of all 45 is the crop's shape or its
coloured shape (chance 4.4%).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model import AlproConfig, AlproModel, Tokenizer, normalize_frames
from model.prompts import VIDEO_TEMPLATES, prompt_features

from . import synth
from .prompter import Box, crop_video, sample_box

SHAPE_ENTITIES = tuple(synth.SHAPES)
COLOURED_ENTITIES = tuple(f"{colour} {shape}" for colour in synth.COLOURS for shape in synth.SHAPES)
BOX_TRIES = 64  # boxes drawn per clip before the clip is passed over (a moving shape rarely fits one)
CLIP_FRAMES = 16  # frames of a probed clip (bench.learn's corpus); the model's frame count is sampled from them


def shape_inside(obj: synth.ObjectSpec, box: Box, size: int, times: Sequence[float]) -> bool:
    """Whether the shape's bounding circle stays inside the box at every one of `times` (seconds)."""
    for t in times:
        x, y, scale, _, _ = obj.state_at(float(t))
        r = synth.BOUND_RADIUS * obj.size * scale * size
        if not (box.x <= x * size - r and x * size + r <= box.x + box.w
                and box.y <= y * size - r and y * size + r <= box.y + box.h):
            return False
    return True


@dataclass(frozen=True)
class ProbeSample:
    """One probed crop: a single-shape clip, the box kept, the clip times (in [0, 1]) the model sees."""

    spec: synth.ClipSpec
    box: Box
    times: tuple[float, ...]

    @property
    def truth(self) -> tuple[str, str]:
        """(shape, "colour shape") of the clip's one shape."""
        obj = self.spec.objects[0]
        return obj.shape, f"{obj.colour} {obj.shape}"


def probe_samples(config: AlproConfig, count: int, seed: int) -> list[ProbeSample]:
    """`count` held-out single-shape clips, each with a box that holds its shape whole on every frame the model
    sees: its frame count sampled uniformly from CLIP_FRAMES, as evaluation samples a file."""
    size, frames = config.img_size, config.num_frames
    times = synth.clip_times(CLIP_FRAMES)[np.arange(0, CLIP_FRAMES, CLIP_FRAMES / frames, dtype=int)]
    rng = np.random.default_rng(seed)
    samples: list[ProbeSample] = []
    for _ in range(BOX_TRIES * count):
        if len(samples) == count:
            break
        spec = synth.sample_spec(rng, two_object_prob=0.0)
        obj = spec.objects[0]
        if obj.to_colour is not None:
            continue
        boxes = (sample_box(rng, size, config.vision.patch_size) for _ in range(BOX_TRIES))
        box = next((b for b in boxes if shape_inside(obj, b, size, times)), None)
        if box is not None:
            samples.append(ProbeSample(spec, box, tuple(float(t) for t in times)))
    if len(samples) < count:
        raise RuntimeError(f"only {len(samples)} of {count} clips fit a whole shape in a box at image size {size}")
    return samples


def render_crop(sample: ProbeSample, config: AlproConfig) -> torch.Tensor:
    """The normalised crop (T, 3, H, W) the prompter sees for `sample`."""
    frames = synth.render_clip(sample.spec, config.img_size, times=sample.times)
    video = normalize_frames(torch.from_numpy(frames), config)
    return crop_video(video, sample.box, config.preprocess.mean, config.preprocess.std)


@torch.no_grad()
def crop_probe(model: AlproModel, tokenizer: Tokenizer | None = None, count: int = 200, seed: int = 2024,
               batch_size: int = 50) -> dict[str, float]:
    """Accuracy of the model's entity ranking on `count` crops (module docstring); the model is left as found."""
    tokenizer = tokenizer or Tokenizer.from_config(model.config)
    was_training = model.training
    model.eval()
    entities = [*SHAPE_ENTITIES, *COLOURED_ENTITIES]
    prompts = prompt_features(model, tokenizer, entities, VIDEO_TEMPLATES).float()  # (E, D)
    samples = probe_samples(model.config, count, seed)
    truth = [s.truth for s in samples]
    feats = torch.cat([model.encode_video(torch.stack([render_crop(s, model.config)
                                                       for s in samples[i:i + batch_size]]).to(model.device)).float()
                       for i in range(0, count, batch_size)])
    scores = feats @ prompts.t()  # (count, E); the temperature would not change an argmax
    model.train(was_training)
    n_shape = len(SHAPE_ENTITIES)
    top_any = [entities[i] for i in scores.argmax(1).tolist()]
    top_shape = [SHAPE_ENTITIES[i] for i in scores[:, :n_shape].argmax(1).tolist()]
    top_coloured = [COLOURED_ENTITIES[i] for i in scores[:, n_shape:].argmax(1).tolist()]
    return {
        "shape_acc": float(np.mean([a == t[0] for a, t in zip(top_shape, truth)])),
        "coloured_acc": float(np.mean([a == t[1] for a, t in zip(top_coloured, truth)])),
        "first_is_right_entity": float(np.mean([a in t for a, t in zip(top_any, truth)])),
        "colour_of_coloured_acc": float(np.mean([a.split()[0] == t[1].split()[0]
                                                 for a, t in zip(top_coloured, truth)])),
        "crops": count,
    }

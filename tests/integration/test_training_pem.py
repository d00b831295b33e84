"""PEM is real: a prompter trained with VTC on alpro-synth clips gives crops of a shape pseudo-labels whose
top entity is that coloured shape far above chance, and pre-training with VTC + VTM + MLM + PEM from that
prompter lowers the VTC, MLM and PEM losses. Slow: about four minutes on 2 cores.

In this budget the prompter, like the encoders, tells colours apart and shapes hardly at all (shape among
shapes is printed, near its 20% chance): the entity it ranks first is right through the colour. VTM only
reaches its 1:2 class prior (loss 0.6365) here, with the reference's hard negatives and with uniform ones
alike (150 steps tried): that it learns past the prior is not shown, so the test asserts just that."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model import load_pretrained, normalize_frames
from training import synth
from training.config import load_config
from training.prompter import crop_video, pseudo_labels, sample_box
from training.trainer import train

pytestmark = pytest.mark.slow

MODEL = ["model.overrides.img_size=64", "model.overrides.num_frames=4", "model.overrides.max_text_len=24",
         "model.overrides.vision_embed_dim=96", "model.overrides.vision_depth=3", "model.overrides.text_hidden_size=96",
         "model.overrides.text_num_layers=4", "model.overrides.text_fusion_layer=2",
         "model.overrides.text_intermediate_size=384", "model.overrides.text_max_position_embeddings=32",
         "model.overrides.text_hidden_dropout=0.0", "model.overrides.text_attention_dropout=0.0",
         "model.overrides.vision_drop_path_rate=0.0"]
COMMON = ["data.source=synthetic", "data.synth_epoch_clips=4096", "data.num_workers=1", "train.progress=false",
          "train.log_every=5", "train.seed=3", *MODEL]


@pytest.fixture(scope="module")
def prompter(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prompter")
    result = train(load_config(None, [*COMMON, f"train.output_dir={out}", "train.batch_size=48",
                                      "train.max_steps=260", "optim.lr=1e-3", "optim.weight_decay=0.05"],
                               task="pretrain-prompter"))
    return Path(result.final)


def object_inside(obj: synth.ObjectSpec, box, size: int, times: np.ndarray) -> bool:
    """The object's whole bounding circle stays inside the box at every sampled time."""
    for t in times:
        x, y, scale, _, _ = obj.state_at(float(t))
        r = synth.BOUND_RADIUS * obj.size * scale * size
        if not (box.x <= x * size - r and x * size + r <= box.x + box.w and box.y <= y * size - r
                and y * size + r <= box.y + box.h):
            return False
    return True


def test_prompter_pseudo_labels_name_the_cropped_shape(prompter):
    model = load_pretrained(prompter)
    entities = (prompter / "entities.txt").read_text().split("\n")[:-1]
    c = model.config
    size, times = c.img_size, np.arange(4) * 4 / 15  # uniform 4 of 16 frames, the evaluation sampling
    rng = np.random.default_rng(2024)
    crops, truth = [], []
    while len(crops) < 200:
        spec = synth.sample_spec(rng, two_object_prob=0.0)
        obj = spec.objects[0]
        box = sample_box(rng, size, c.vision.patch_size)
        if obj.to_colour is not None or not object_inside(obj, box, size, times):
            continue
        video = normalize_frames(torch.from_numpy(synth.render_clip(spec, size, times=times)), c)
        crops.append(crop_video(video, box, c.preprocess.mean, c.preprocess.std))
        truth.append((obj.shape, f"{obj.colour} {obj.shape}"))
    with torch.no_grad():
        labels = torch.cat([pseudo_labels(model, torch.stack(crops[i:i + 50])) for i in range(0, 200, 50)])
    shapes = [i for i, e in enumerate(entities) if " " not in e]
    coloured = [i for i, e in enumerate(entities) if " " in e]
    top_any = [entities[i] for i in labels.argmax(1).tolist()]
    top_shape = [entities[shapes[i]] for i in labels[:, shapes].argmax(1).tolist()]
    top_coloured = [entities[coloured[i]] for i in labels[:, coloured].argmax(1).tolist()]
    first = np.mean([a in t for a, t in zip(top_any, truth)])
    shape_acc = np.mean([a == t[0] for a, t in zip(top_shape, truth)])
    coloured_acc = np.mean([a == t[1] for a, t in zip(top_coloured, truth)])
    print(json.dumps({"first_is_right_entity": first, "shape_top1": shape_acc, "colour_shape_top1": coloured_acc}))
    # chance: 2 of 45 entities (4.4%), 1 of 40 coloured shapes (2.5%); shape alone (1 of 5) is not asserted
    assert first > 3 * 2 / 45
    assert coloured_acc > 4 / 40


def test_pretraining_with_pem_lowers_vtc_mlm_and_pem_losses(prompter, tmp_path):
    out = tmp_path / "pretrain"
    result = train(load_config(None, [*COMMON, f"train.output_dir={out}", f"model.prompter={prompter}",
                                      "train.batch_size=32", "train.max_steps=90", "train.log_every=1",
                                      "optim.lr=5e-4"], task="pretrain"))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(rows) == result.steps == 90
    for key in ("vtc", "mlm", "pem"):
        first = np.mean([r[key] for r in rows[:10]])
        last = np.mean([r[key] for r in rows[-10:]])
        assert last < first * 0.95, (key, first, last)
    prior = -(np.log(1 / 3) + 2 * np.log(2 / 3)) / 3  # cross-entropy of always answering 1:2 (0.6365)
    assert np.mean([r["vtm"] for r in rows[-10:]]) < prior + 0.005

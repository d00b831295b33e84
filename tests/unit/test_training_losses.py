"""ALPRO losses on a tiny model: VTC against the textbook formula, hard negatives never positive, all four
terms finite and differentiable, QA ignores answers outside the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import create_model
from model.alpro import prompter_config
from training.losses import alpro_losses, qa_loss, sample_negatives, trim_padding, vtc_loss
from training.masking import mask_tokens
from training.prompter import crop_video, patch_mask, sample_box


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("tiny", text_hidden_dropout=0.0, text_attention_dropout=0.0, vision_drop_path_rate=0.0, **kw)


def test_vtc_equals_symmetric_cross_entropy_without_duplicates():
    model = tiny()
    torch.manual_seed(1)
    v = F.normalize(torch.randn(6, 256), dim=-1)
    t = F.normalize(torch.randn(6, 256), dim=-1)
    loss, sim, positives = vtc_loss(model, v, t, torch.arange(6))
    logits = v @ t.t() / 0.07
    expected = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(positives, torch.eye(6, dtype=torch.bool))


def test_vtc_spreads_the_target_over_duplicate_captions():
    model = tiny()
    torch.manual_seed(2)
    v = F.normalize(torch.randn(4, 256), dim=-1)
    t = F.normalize(torch.randn(4, 256), dim=-1)
    keys = torch.tensor([5, 9, 5, 7])  # samples 0 and 2 describe the same content
    loss, _, positives = vtc_loss(model, v, t, keys)
    logits = v @ t.t() / 0.07
    target = torch.tensor([[.5, 0, .5, 0], [0, 1, 0, 0], [.5, 0, .5, 0], [0, 0, 0, 1.]])
    v2t = (target * logits.log_softmax(1)).sum(1).mean()
    t2v = (target * logits.t().log_softmax(1)).sum(1).mean()
    expected = -(v2t + t2v) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert positives[0, 2] and positives[2, 0] and not positives[0, 1]


def test_hard_negatives_follow_softmax_and_skip_positives():
    sim = torch.tensor([[5.0, 1.0, 0.0, 2.0, 4.0]] * 50)
    positives = torch.zeros(50, 5, dtype=torch.bool)
    positives[:, 0] = True
    positives[:, 4] = True  # a duplicate caption: as positive as the diagonal
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(400):
        choice, valid = sample_negatives(sim, positives, g)
        assert valid.all()
        counts += torch.bincount(choice, minlength=5)
    assert counts[0] == 0 and counts[4] == 0
    expected = torch.softmax(torch.tensor([1.0, 0.0, 2.0]), 0) * counts.sum()
    assert torch.allclose(counts[1:4], expected, rtol=0.05)


def test_hard_ratio_mixes_in_uniform_negatives():
    sim = torch.tensor([[9.0, 0.0, 0.0, 9.0]] * 400)
    positives = torch.zeros(400, 4, dtype=torch.bool)
    positives[:, 0] = True
    g = torch.Generator().manual_seed(1)
    hard = torch.bincount(sample_negatives(sim, positives, g, hard_ratio=1.0)[0], minlength=4)
    assert hard[3] > 0.99 * 400  # similarity-driven: almost always the look-alike
    mixed = torch.bincount(sample_negatives(sim, positives, g, hard_ratio=0.4)[0], minlength=4).float()
    expected = torch.tensor([0.0, 0.6 / 3, 0.6 / 3, 0.4 + 0.6 / 3]) * 400  # 0.4 * softmax + 0.6 * uniform
    assert mixed[0] == 0 and torch.allclose(mixed, expected, atol=30)


def test_rows_without_negatives_are_flagged():
    sim = torch.randn(3, 3)
    positives = torch.ones(3, 3, dtype=torch.bool)
    positives[0, 1] = False
    choice, valid = sample_negatives(sim, positives, torch.Generator().manual_seed(0))
    assert valid.tolist() == [True, False, False]
    assert choice[0] == 1 and (choice[1:] == -1).all()


def make_batch(model, keys, with_pem=False):
    c = model.config
    b = len(keys)
    rng = np.random.default_rng(0)
    torch.manual_seed(3)
    video = torch.randn(b, c.num_frames, 3, c.img_size, c.img_size)
    ids = torch.randint(1000, 2000, (b, 10))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    mlm = [mask_tokens(row, rng, c.text.vocab_size) for row in ids]
    batch = {"video": video, "input_ids": ids, "attention_mask": mask, "key": torch.tensor(keys),
             "mlm_input_ids": torch.stack([m[0] for m in mlm]), "mlm_labels": torch.stack([m[1] for m in mlm]),
             "is_image": torch.zeros(b, dtype=torch.bool)}
    if with_pem:
        boxes = [sample_box(rng, c.img_size, c.vision.patch_size) for _ in range(b)]
        batch["pem_video"] = torch.stack([crop_video(v, box, c.preprocess.mean, c.preprocess.std)
                                          for v, box in zip(video, boxes)])
        batch["pem_mask"] = torch.stack([patch_mask(box, c.img_size, c.vision.patch_size) for box in boxes])
    return batch


def test_all_four_losses_are_finite_and_reach_their_parameters():
    model = tiny(num_entities=7)
    model.prompter.video_prompt_feat.copy_(F.normalize(torch.randn(7, 256), dim=-1))
    model.train()
    weights = {"vtc": 1.0, "vtm": 1.0, "mlm": 1.0, "pem": 1.0}
    out = alpro_losses(model, make_batch(model, [1, 2, 3, 4], with_pem=True), weights, torch.Generator().manual_seed(0))
    assert set(out.terms) >= set(weights)
    assert all(torch.isfinite(v) for v in out.terms.values())
    out.objective.backward()
    for name in ("itm_head.weight", "mlm_head.dense.weight", "pem_head.fc2.weight", "vision_proj.weight",
                 "text_proj.weight", "temp", "visual_encoder.patch_embed.proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.prompter.temp.grad is None  # the teacher's outputs carry no gradient
    # PEM's target is the prompter's softmax: the loss is at least the targets' entropy
    assert out.terms["pem"] > 0


def test_vtm_with_duplicate_keys_only_scores_true_negatives():
    model = tiny()
    # all four samples share a key: no valid negative exists, so only the positive pairs are scored
    out = alpro_losses(model, make_batch(model, [1, 1, 1, 1]), {"vtc": 1.0, "vtm": 1.0}, torch.Generator())
    with torch.no_grad():
        b = make_batch(model, [1, 1, 1, 1])
        logits = model.vtm_logits(b["video"], b["input_ids"], b["attention_mask"])
    assert out.terms["vtm"].item() == pytest.approx(F.cross_entropy(logits, torch.ones(4, dtype=torch.long)).item(),
                                                    rel=1e-4)


def test_vtm_pairs_scores_only_the_first_positives_and_their_negatives():
    model = tiny()
    model.eval()  # no dropout: the same batch gives the same numbers
    weights = {"vtc": 1.0, "vtm": 1.0}
    batch = make_batch(model, [1, 1, 1, 1])  # no valid negatives: only positives are scored
    out = alpro_losses(model, batch, weights, torch.Generator(), vtm_pairs=2)
    with torch.no_grad():
        logits = model.vtm_logits(batch["video"][:2], batch["input_ids"][:2], batch["attention_mask"][:2])
    assert out.terms["vtm"].item() == pytest.approx(F.cross_entropy(logits, torch.ones(2, dtype=torch.long)).item(),
                                                    rel=1e-4)
    distinct = make_batch(model, [1, 2, 3, 4])
    every = alpro_losses(model, distinct, weights, torch.Generator().manual_seed(3))
    capped = alpro_losses(model, distinct, weights, torch.Generator().manual_seed(3), vtm_pairs=8)
    assert capped.terms["vtm"].item() == pytest.approx(every.terms["vtm"].item(), rel=1e-6)


def test_qa_loss_ignores_answers_outside_the_vocabulary():
    model = tiny(num_answers=5)
    b = make_batch(model, [1, 2, 3])
    b["answer"] = torch.tensor([2, -100, 4])
    out = qa_loss(model, b)
    with torch.no_grad():
        logits = model.answer_logits(b["video"], b["input_ids"], b["attention_mask"])
    expected = F.cross_entropy(logits[[0, 2]], torch.tensor([2, 4]))
    assert out.objective.item() == pytest.approx(expected.item(), rel=1e-5)


def pad_texts(batch, lengths, width):
    """Cut sample i's text to lengths[i] tokens ([SEP] last) and pad every text with [PAD] to `width`."""
    out = dict(batch)
    for key, fill in (("input_ids", 0), ("attention_mask", 0), ("mlm_input_ids", 0), ("mlm_labels", -100)):
        rows = torch.full((len(lengths), width), fill, dtype=torch.long)
        for i, n in enumerate(lengths):
            rows[i, :n] = batch[key][i, :n]
            if key == "input_ids":
                rows[i, n - 1] = 102
        out[key] = rows
    return out


def test_padding_is_cut_to_the_longest_text_and_changes_no_loss():
    model = tiny(num_answers=5)
    model.eval()  # no dropout: the same batch gives the same numbers
    base = make_batch(model, [1, 1, 1, 1])  # one key: VTM scores the positive pairs only
    base["mlm_labels"][:, 1] = base["input_ids"][:, 1]  # every text has a masked word to predict
    base["answer"] = torch.tensor([0, 3, 1, 4])
    lengths = [5, 8, 3, 6]
    narrow, wide = pad_texts(base, lengths, 8), pad_texts(base, lengths, 20)
    ids, mask = trim_padding(wide, ("input_ids", "attention_mask"), across_ranks=False)
    assert ids.shape == (4, 8) and torch.equal(ids, narrow["input_ids"]) and torch.equal(mask, narrow["attention_mask"])
    # the losses on 20 columns (12 of them [PAD] only) against the model run on all 20 without cutting
    out = alpro_losses(model, wide, {"vtc": 1.0, "vtm": 1.0, "mlm": 1.0}, torch.Generator().manual_seed(5))
    video, ids, mask, mlm_ids, labels = (wide[k] for k in ("video", "input_ids", "attention_mask", "mlm_input_ids",
                                                            "mlm_labels"))
    with torch.no_grad():
        vtc, _, _ = vtc_loss(model, model.encode_video(video), model.encode_text(ids, mask), wide["key"])
        vtm = F.cross_entropy(model.vtm_logits(video, ids, mask), torch.ones(4, dtype=torch.long))
        hidden = model.fuse(model.video_tokens(video), model.text_tokens(mlm_ids, mask), mask)[:, :20]
        chosen = labels != -100
        mlm = F.cross_entropy(model.mlm_logits(hidden[chosen]), labels[chosen])
        qa = F.cross_entropy(model.answer_logits(video, ids, mask), wide["answer"])
    for key, expected in (("vtc", vtc), ("vtm", vtm), ("mlm", mlm)):
        assert out.terms[key].item() == pytest.approx(expected.item(), rel=1e-5), key
    assert qa_loss(model, wide).objective.item() == pytest.approx(qa.item(), rel=1e-5)
    # a text that fills the width leaves nothing to cut
    full = pad_texts(base, [10, 4, 4, 4], 10)
    assert trim_padding(full, ("input_ids",), across_ranks=False)[0].shape == (4, 10)


def test_prompter_config_matches_the_model():
    model = tiny(num_entities=3)
    assert model.prompter.config == prompter_config(model.config)


def test_qa_loss_with_several_questions_per_video_equals_repeating_each_video():
    model = tiny(num_answers=5)
    b = make_batch(model, [1, 2])
    torch.manual_seed(4)
    ids = torch.randint(1000, 2000, (2, 3, 10))
    ids[..., 0], ids[..., -1] = 101, 102
    mask = torch.ones_like(ids)
    mask[1, 2, 6:] = 0  # one shorter question
    answers = torch.tensor([[0, 4, -100], [2, 2, 1]])
    grouped = qa_loss(model, {"video": b["video"], "input_ids": ids, "attention_mask": mask, "answer": answers})
    flat = qa_loss(model, {"video": b["video"].repeat_interleave(3, dim=0), "input_ids": ids.flatten(0, 1),
                           "attention_mask": mask.flatten(0, 1), "answer": answers.flatten()})
    assert grouped.objective.item() == pytest.approx(flat.objective.item(), rel=1e-5)
    assert grouped.terms["qa_acc"].item() == pytest.approx(flat.terms["qa_acc"].item())


def test_cached_video_tokens_give_the_loss_of_encoding_every_batch():
    from training.config import LossSection
    from training.tasks import LossModule
    model = tiny(num_answers=5)
    model.train()
    for p in model.visual_encoder.parameters():
        p.requires_grad_(False)
    b = make_batch(model, [1, 2, 3])
    b["video"][2] = b["video"][0]  # clip 7 twice
    b["answer"], b["clip"] = torch.tensor([0, 3, 4]), torch.tensor([7, 2, 7])
    pool = {7: b["video"][0], 2: b["video"][1], 5: torch.randn_like(b["video"][0])}
    calls = []
    model.visual_encoder.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    plain = LossModule(model, "finetune-qa", {"qa": 1.0}, LossSection())
    cached = LossModule(model, "finetune-qa", {"qa": 1.0}, LossSection(), cache_video_tokens=True,
                        pool_video=pool.__getitem__)
    gen = torch.Generator()
    expected = plain(b, gen)[0]
    assert calls == [3]
    got = cached(b, gen)[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert calls == [3, 2] and sorted(cached.video_cache) == [2, 7]  # each distinct clip encoded once
    got.backward()
    assert model.qa_head.fc2.weight.grad.abs().sum() > 0  # the loss still trains the fusion and head
    # the same clips without pixels: from the cache, no encoding
    bare = {k: v for k, v in b.items() if k != "video"}
    assert cached(bare, gen)[0].item() == pytest.approx(expected.item(), rel=1e-5) and calls == [3, 2]
    # a clip not seen before and without pixels is rendered through pool_video
    bare["clip"] = torch.tensor([5, 2, 7])
    b["video"][0] = pool[5]
    assert cached(bare, gen)[0].item() == pytest.approx(plain(b, gen)[0].item(), rel=1e-5)
    assert calls[-2:] == [1, 3]  # clip 5 alone, then the plain module's batch
    with pytest.raises(ValueError, match="pool clips"):
        cached({**bare, "clip": torch.tensor([-1, 2, 7])}, gen)
    with pytest.raises(ValueError, match="pool_video"):
        LossModule(model, "finetune-qa", {"qa": 1.0}, LossSection(), cache_video_tokens=True)


def test_vtm_hard_negatives_ramp_up_over_the_warmup_share_of_the_run():
    from types import SimpleNamespace

    from training.config import LossSection
    from training.tasks import LossModule

    def ratio(progress, **loss):
        return LossModule.vtm_hard_ratio(SimpleNamespace(loss=LossSection(**loss), progress=progress))

    assert [ratio(p, vtm_hard_ratio=1.0, vtm_hard_warmup=0.5) for p in (0.0, 0.25, 0.5, 0.9)] == [0.0, 0.5, 1.0, 1.0]
    assert ratio(0.1, vtm_hard_ratio=0.8, vtm_hard_warmup=0.4) == pytest.approx(0.2)
    assert ratio(0.0, vtm_hard_ratio=0.7) == 0.7  # no warm-up: the reference's constant share


def test_a_colourless_caption_fits_every_clip_with_its_shapes_and_motions_and_vtc_targets_them_all():
    from training.losses import caption_fits

    # clips: red circle left, blue circle left, red square left; text 1 is colourless ("a circle moves left")
    batch = {"key": torch.tensor([10, 11, 12]), "colourless_key": torch.tensor([20, 20, 21]),
             "text_key": torch.tensor([10, 20, 12]), "text_colourless": torch.tensor([False, True, False])}
    fits = caption_fits(batch)
    assert fits.tolist() == [[True, True, False], [False, True, False], [False, False, True]]  # [video, text]
    model = tiny()
    torch.manual_seed(3)
    v = F.normalize(torch.randn(3, 256), dim=-1)
    t = F.normalize(torch.randn(3, 256), dim=-1)
    loss, _, positives = vtc_loss(model, v, t, fits)
    logits = v @ t.t() / 0.07
    v2t = torch.tensor([[.5, .5, 0], [0, 1, 0], [0, 0, 1.]])  # video 0 is described by texts 0 and 1
    t2v = torch.tensor([[1, 0, 0], [.5, .5, 0], [0, 0, 1.]])  # text 1 describes videos 0 and 1
    expected = -((v2t * logits.log_softmax(1)).sum(1).mean() + (t2v * logits.t().log_softmax(1)).sum(1).mean()) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(positives, fits)
    # VTM never draws a clip a caption fits as that caption's negative video
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg_video, valid = sample_negatives(torch.zeros(3, 3), fits.t(), g)
        assert neg_video[1].item() == 2 and bool(valid.all())

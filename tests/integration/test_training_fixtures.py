"""The trained-checkpoint fixtures are good enough for the indexer and service tests: a test caption
ranks its own video first among the corpus' test videos most of the time, and QA answers mostly right."""

from __future__ import annotations

from model import load_pretrained
from tests.trained import TrainedCheckpoint, trained_corpus, trained_qa_checkpoint, trained_retrieval_checkpoint  # noqa: F401
from training.data import read_qa, read_video_text
from training.evaluate import evaluate_qa, evaluate_retrieval


def test_retrieval_fixture_finds_each_test_video_by_its_caption(
        trained_retrieval_checkpoint: TrainedCheckpoint):  # noqa: F811
    ckpt = trained_retrieval_checkpoint
    corpus = ckpt.corpus
    assert len(corpus.test) == 12 and len({v.caption for v in corpus.test}) == 12
    assert all(v.path.is_file() for v in corpus.test + corpus.train)
    records = read_video_text([corpus.annotations / "test.jsonl"], str(corpus.root))
    metrics = evaluate_retrieval(load_pretrained(ckpt.path), records, rerank_k=4, num_workers=0)
    print({k: metrics[k] for k in ("r1", "r5", "rerank_r1")}, ckpt.summary["train_seconds"])
    assert metrics["r1"] >= 75.0  # chance: 1 in 12 (8%)


def test_qa_fixture_answers_questions_about_the_test_videos(trained_qa_checkpoint: TrainedCheckpoint):  # noqa: F811
    ckpt = trained_qa_checkpoint
    model = load_pretrained(ckpt.path)
    assert model.config.answers and model.config.num_answers == len(model.config.answers)
    metrics = evaluate_qa(model, read_qa([ckpt.corpus.annotations / "qa_test.jsonl"], str(ckpt.corpus.root)),
                          num_workers=0)
    print(metrics["accuracy"], metrics["per_type"], ckpt.summary["train_seconds"])
    assert metrics["accuracy"] >= 45.0  # chance averaged over question types is about 30%
    assert sum(len(v.qa) for v in ckpt.corpus.test) == metrics["questions"]

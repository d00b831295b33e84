"""The shipped bert-base-uncased WordPiece tokenizer: vocabulary file, known ids, padding, truncation."""

from __future__ import annotations

import pickle

import pytest
import torch

from model.config import preset_config
from model.tokenizer import VOCAB_MD5, VOCAB_PATH, Tokenizer, TokenizerError, vocab_md5


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(max_length=12)


def test_vocabulary_file_is_bert_base_uncased():
    assert vocab_md5() == VOCAB_MD5 == "64800d5d8528ce344256daf115d4965e"
    lines = VOCAB_PATH.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522
    assert lines[0] == "[PAD]" and lines[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_special_token_ids(tok):
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0, 100, 101, 102, 103)
    assert tok.vocab_size == 30522


def test_hello_world_row_is_padded_to_max_length(tok):
    ids, mask = tok(["hello world"])
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert ids.tolist() == [[101, 7592, 2088, 102] + [0] * 8]
    assert mask.tolist() == [[1, 1, 1, 1] + [0] * 8]


@pytest.mark.parametrize("word, expected", [("the", 1996), ("video", 2678), ("a", 1037), ("man", 2158)])
def test_known_word_ids(tok, word, expected):
    ids, _ = tok([word])
    assert ids[0, :3].tolist() == [101, expected, 102]


def test_lower_cases_and_strips_accents(tok):
    assert torch.equal(tok(["HELLO World"])[0], tok(["hello world"])[0])
    assert tok.tokenize("Café") == ["cafe"]


def test_unknown_character_maps_to_unk(tok):
    ids, _ = tok(["\U0001f642"])  # an emoji that is not in the vocabulary
    assert ids[0, :3].tolist() == [101, 100, 102]


def test_long_text_is_truncated_keeping_sep(tok):
    ids, mask = tok(["one two three four five six seven eight nine ten eleven twelve thirteen"])
    assert ids.shape == (1, 12)
    assert ids[0, 0].item() == 101 and ids[0, -1].item() == 102
    assert mask.sum().item() == 12


def test_batch_shapes_and_empty_text(tok):
    ids, mask = tok(["a", "", "a man is cooking in a kitchen"])
    assert ids.shape == mask.shape == (3, 12)
    assert ids[1, :3].tolist() == [101, 102, 0]
    assert torch.equal(mask, (ids != 0).long())  # no [PAD] (id 0) inside real text
    assert tok([])[0].shape == (0, 12)


def test_single_string_is_one_row(tok):
    assert torch.equal(tok("a dog")[0], tok(["a dog"])[0])


def test_matches_transformers_bert_tokenizer(tok):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizer(vocab=str(VOCAB_PATH))
    texts = ["A man is playing guitar.", "Déjà vu: 2 cats & 1 dog!", "東京 at night", "unbelievably-long words"]
    expected = ref(texts, max_length=12, padding="max_length", truncation=True, return_tensors="pt")
    ids, mask = tok(texts)
    assert torch.equal(ids, expected["input_ids"])
    assert torch.equal(mask, expected["attention_mask"])


def test_from_config_uses_max_text_len():
    assert Tokenizer.from_config(preset_config("base")).max_length == 40
    assert Tokenizer.from_config(preset_config("tiny")).max_length == 16


def test_pickles_for_worker_processes(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(["hello world"])[0], tok(["hello world"])[0])


def test_rejects_non_strings_and_bad_length(tok):
    with pytest.raises(TokenizerError):
        tok(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TokenizerError):
        Tokenizer(max_length=1)
    assert issubclass(TokenizerError, ValueError)


def test_decode_round_trip(tok):
    ids, _ = tok(["a man is cooking"])
    assert tok.decode(ids[0]) == "a man is cooking"

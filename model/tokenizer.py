"""Text tokenizer: bert-base-uncased WordPiece, lower-cased, padded to a fixed length (ALPRO_REFERENCE.md
"Pre-processing"; the reference collators call `batch_encode_plus(padding='max_length', truncation=True)`).

The vocabulary ships in model/assets/vocab.txt, so tokenising never touches the network. Built on the
Rust `tokenizers` WordPiece directly: transformers 5's `BertTokenizerFast(vocab_file=...)` silently
builds a 5-token vocabulary (ENVIRONMENT.md "transformers 5.x").
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence, Union

import torch
from tokenizers import BertWordPieceTokenizer
from tokenizers import Tokenizer as RustTokenizer

from .config import BERT_VOCAB_SIZE, AlproConfig

logger = logging.getLogger(__name__)

VOCAB_PATH = Path(__file__).parent / "assets" / "vocab.txt"
VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"  # bert-base-uncased vocab.txt, 30522 lines

PAD_TOKEN_ID = 0
UNK_TOKEN_ID = 100
CLS_TOKEN_ID = 101
SEP_TOKEN_ID = 102
MASK_TOKEN_ID = 103
SPECIAL_TOKENS = {"[PAD]": PAD_TOKEN_ID, "[UNK]": UNK_TOKEN_ID, "[CLS]": CLS_TOKEN_ID, "[SEP]": SEP_TOKEN_ID,
                  "[MASK]": MASK_TOKEN_ID}


class TokenizerError(ValueError):
    """The vocabulary or an input text cannot be used."""


class Tokenizer:
    """Texts -> (input_ids, attention_mask), both int64 (N, max_length): [CLS] text [SEP] [PAD]...

    Texts longer than max_length - 2 word pieces are cut (the [SEP] is kept).
    """

    pad_token_id = PAD_TOKEN_ID
    unk_token_id = UNK_TOKEN_ID
    cls_token_id = CLS_TOKEN_ID
    sep_token_id = SEP_TOKEN_ID
    mask_token_id = MASK_TOKEN_ID

    def __init__(self, max_length: int = 40, vocab_path: Union[str, Path] = VOCAB_PATH) -> None:
        if max_length < 2:
            raise TokenizerError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.max_length = max_length
        self.vocab_path = Path(vocab_path)
        if not self.vocab_path.is_file():
            raise TokenizerError(f"vocabulary file not found: {self.vocab_path}")
        # strip_accents=None follows lowercase, as bert-base-uncased does ("Café" -> "cafe")
        self._tok = BertWordPieceTokenizer(str(self.vocab_path), lowercase=True, clean_text=True,
                                           handle_chinese_chars=True, strip_accents=None)
        for token, expected in SPECIAL_TOKENS.items():
            if self._tok.token_to_id(token) != expected:
                raise TokenizerError(f"{self.vocab_path}: {token} has id {self._tok.token_to_id(token)}, "
                                     f"expected {expected}; not the bert-base-uncased vocabulary")
        # an unpadded, untruncated copy for `tokenize` (padding settings live on the Rust object)
        self._plain = RustTokenizer.from_str(self._tok.to_str())
        self._tok.enable_truncation(max_length)
        self._tok.enable_padding(length=max_length, pad_id=PAD_TOKEN_ID, pad_token="[PAD]")

    @classmethod
    def from_config(cls, config: AlproConfig) -> "Tokenizer":
        """The tokenizer for a model: its vocabulary and max_text_len."""
        if config.text.vocab_size != BERT_VOCAB_SIZE:
            raise TokenizerError(f"the shipped vocabulary has {BERT_VOCAB_SIZE} tokens, the model "
                                 f"{config.text.vocab_size}")
        return cls(max_length=config.preprocess.max_text_len)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, texts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 (N, max_length) input_ids and attention_mask (1 on real tokens, 0 on padding)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TokenizerError(f"texts must be strings, got {sorted(set(bad))}")
        if not texts:
            empty = torch.zeros(0, self.max_length, dtype=torch.int64)
            return empty, empty.clone()
        encodings = self._tok.encode_batch(texts)
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)  # (N, L)
        attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)  # (N, L)
        return input_ids, attention_mask

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without special tokens or padding."""
        return self._plain.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Union[Sequence[int], torch.Tensor]) -> str:
        """Text of one id sequence, special tokens and padding dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def __getstate__(self) -> dict:  # rebuild from the file in worker processes instead of pickling Rust state
        return {"max_length": self.max_length, "vocab_path": str(self.vocab_path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_length"], state["vocab_path"])

    def __repr__(self) -> str:
        return f"Tokenizer(max_length={self.max_length}, vocab_size={self.vocab_size})"


def vocab_md5(path: Union[str, Path] = VOCAB_PATH) -> str:
    """md5 of a vocabulary file (to check it is the bert-base-uncased one)."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()

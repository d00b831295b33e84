"""The one API key check of the /search fast path and the route dependency (service.deps.api_key_accepted)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from service.deps import api_key_accepted, given_api_key

KEY = 'a+b/c=d@e%f g~!;",\\x%41'
UNICODE_KEY = "clé-ключ-鍵"


def cookie(key: str) -> bytes:
    return quote(key, safe="!*'()").encode()  # what the page's encodeURIComponent(key) gives


@pytest.mark.parametrize("key", [KEY, UNICODE_KEY])
def test_header_bytes_or_page_cookie(key: str) -> None:
    expected = key.encode()
    assert api_key_accepted([(b"x-api-key", expected)], expected)
    assert api_key_accepted([(b"cookie", b"theme=dark; alpro_api_key=" + cookie(key) + b"; other=1")], expected)
    assert api_key_accepted([(b"cookie", b"alpro_api_key=" + cookie(key))], expected)
    if "%" in key:  # decoded exactly once: a raw "%41" reads as "A"
        assert not api_key_accepted([(b"cookie", b"alpro_api_key=" + key.encode())], expected)
    assert not api_key_accepted([(b"cookie", b"my_alpro_api_key=" + cookie(key))], expected)
    assert not api_key_accepted([], expected)


def test_first_header_wins_and_a_header_beats_the_cookie() -> None:
    good, bad = b"right", b"wrong"
    assert given_api_key([(b"x-api-key", good), (b"x-api-key", bad)]) == good
    assert given_api_key([(b"cookie", b"alpro_api_key=wrong"), (b"x-api-key", good)]) == good
    assert given_api_key([(b"cookie", b"alpro_api_key=right; alpro_api_key=wrong")]) == good
    assert given_api_key([(b"cookie", b"a=1"), (b"cookie", b"alpro_api_key=right")]) == good
    assert not api_key_accepted([(b"x-api-key", bad), (b"cookie", b"alpro_api_key=right")], good)
    assert given_api_key([(b"cookie", b"alpro_api_key=%2B+")]) == b"++"  # "+" is not a space

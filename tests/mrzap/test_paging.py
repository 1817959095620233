"""mrzap.paging: (time, key) page tokens round-trip exactly and foreign tokens are refused."""

from __future__ import annotations

import pytest

from mrzap.errors import InvalidArgument
from mrzap.paging import decode_time_token, encode_page_token, encode_time_token


def test_a_time_token_keeps_every_bit_of_the_time() -> None:
    time = 1_764_759_000.123456789
    assert decode_time_token(encode_time_token(time, "id-1")) == (time, "id-1")


def test_no_token_is_the_first_page() -> None:
    assert decode_time_token("") is None


@pytest.mark.parametrize("token", ["not base64 json!", encode_page_token(("yesterday", "id-1"))])
def test_a_token_without_a_time_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page token"):
        decode_time_token(token)

"""Text deltas from token streams: whole characters only, nothing past a stop string."""

from __future__ import annotations

import pytest

from remoe.model.text_stream import TextStream
from remoe.model.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(512)


def _run(tokenizer, text: str, stops=None):
    stream = TextStream(tokenizer, stops)
    out = []
    for token in tokenizer.encode(text):
        out.append(stream.push(token))
        if stream.stopped:
            return "".join(out), True
    out.append(stream.finish())
    return "".join(out), False


def test_deltas_add_up_to_the_text_even_across_multibyte_characters(tokenizer):
    text = "naïve café — 東京 and back"
    assert _run(tokenizer, text) == (text, False)
    stream = TextStream(tokenizer)
    for token in tokenizer.encode(text):
        assert "\ufffd" not in stream.push(token)


def test_stops_before_the_stop_string_and_never_sends_part_of_it(tokenizer):
    text, stopped = _run(tokenizer, "The quick brown fox jumps over the lazy dog", stops=["fox"])
    assert stopped and text == "The quick brown "
    text, stopped = _run(tokenizer, "The quick brown fox", stops=["cat"])
    assert not stopped and text == "The quick brown fox"


def test_earliest_of_several_stop_strings_wins(tokenizer):
    text, stopped = _run(tokenizer, "one, two, three", stops=["three", "two"])
    assert stopped and text == "one, "


def test_stop_strings_without_a_tokenizer_are_refused():
    with pytest.raises(ValueError, match="tokenizer"):
        TextStream(None, ["x"])

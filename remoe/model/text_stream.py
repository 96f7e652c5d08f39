"""Text deltas from a stream of token ids, with stop strings.

Holds back bytes that do not yet form a whole character, and (when there are stop strings) the last
characters that could be the start of one, so no text past a stop string is ever sent.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stops: list[str] | None = None) -> None:
        self._tokenizer = tokenizer
        self._stops = [s for s in (stops or []) if s]
        if self._stops and tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self.tokens: list[int] = []
        self._emitted = 0
        self.stopped = False

    def _text(self) -> str:
        return "" if self._tokenizer is None else self._tokenizer.decode(self.tokens, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add a token; return the new text that is safe to send. Check `.stopped` afterwards."""
        self.tokens.append(token)
        text = self._text()
        hits = [i for s in self._stops if (i := text.find(s, max(0, self._emitted - len(s) + 1))) >= 0]
        if hits:
            self.stopped = True
            return self._take(text, min(hits))
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for its next bytes
        return self._take(text, len(text) - self._hold)

    def finish(self) -> str:
        """The rest of the text once generation has ended (without a stop string)."""
        return self._take(self._text(), None)

    def _take(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else max(self._emitted, end)
        delta, self._emitted = text[self._emitted : end], end
        return delta

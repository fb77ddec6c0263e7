"""The alphabet: characters <-> class indices, with the CTC blank at index 0."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import CaptchaError


class Alphabet:
    """Maps characters to indices 1..N; index 0 is the CTC blank."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError(f"alphabet has repeated characters: {chars!r}")
        if not chars:
            raise CaptchaError("empty alphabet: no labelled characters")
        self.chars = chars
        self.index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> Alphabet:
        """The sorted set of characters in the labels."""
        return cls("".join(sorted(set("".join(labels)))))

    @property
    def num_classes(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Text -> indices; raises CaptchaError naming a character outside the alphabet."""
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise CaptchaError(f"character {e.args[0]!r} in {text!r} is not in the alphabet") from None

    def decode(self, indices: Iterable[int]) -> str:
        """Indices -> text (blanks dropped, no repeat collapsing)."""
        return "".join(self.chars[i - 1] for i in indices if i > 0)

    def unknown(self, text: str) -> set[str]:
        return {c for c in text if c not in self.index}

    def to_json(self) -> str:
        return self.chars

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alphabet) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"Alphabet({self.chars!r})"

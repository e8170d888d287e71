"""Character vocabulary for RNN-T: id 0 is blank, then space, ``a``-``z`` and the apostrophe (29 symbols).

Transcripts are normalised before encoding: lower-cased, runs of whitespace collapsed to one space, leading and
trailing spaces removed. Any other character (a digit, punctuation, an accented letter) is an error that names the
transcript's source, the character and its position: the vocabulary never silently drops what a model should learn.
"""
from __future__ import annotations

import numpy as np

BLANK = 0
BLANK_TOKEN = "<blank>"
CHARACTERS = " abcdefghijklmnopqrstuvwxyz'"


class OutOfVocabularyError(ValueError):
    """A transcript contains a character the vocabulary cannot encode."""


class CharVocabulary:
    """``blank=0, " "=1, "a"=2 .. "z"=27, "'"=28``.

    Args:
        characters: the symbols after blank, in id order (default: space, a-z, apostrophe).
    """

    def __init__(self, characters: str = CHARACTERS):
        if len(set(characters)) != len(characters) or not characters:
            raise ValueError(f"vocabulary characters {characters!r} must be non-empty and distinct")
        self.characters = characters
        self.tokens = (BLANK_TOKEN,) + tuple(characters)
        self._ids = {c: i + 1 for i, c in enumerate(characters)}
        self.blank = BLANK

    @property
    def size(self) -> int:
        """Number of ids including blank (the joint network's output size V)."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.size

    @staticmethod
    def normalize(text: str) -> str:
        """Lower-case and collapse whitespace."""
        return " ".join(str(text).lower().split())

    def check(self, text: str, source: str = "transcript") -> str:
        """The normalised transcript; raises :class:`OutOfVocabularyError` naming ``source`` and the first bad
        character. An empty transcript is also an error (an utterance must have at least one label)."""
        norm = self.normalize(text)
        if not norm:
            raise ValueError(f"{source}: empty transcript {text!r}; every utterance needs at least one character")
        for pos, ch in enumerate(norm):
            if ch not in self._ids:
                raise OutOfVocabularyError(
                    f"{source}: transcript {text!r} has character {ch!r} (U+{ord(ch):04X}) at position {pos} (after "
                    f"normalisation) that is not in the vocabulary; allowed: {self.describe()}")
        return norm

    def encode(self, text: str, source: str = "transcript") -> np.ndarray:
        """Normalised ``text`` → int32 ids (never blank)."""
        return np.array([self._ids[c] for c in self.check(text, source)], np.int32)

    def decode(self, ids) -> str:
        """Ids → text; blank and ids outside the vocabulary are skipped."""
        out = []
        for i in np.asarray(ids, np.int64).reshape(-1):
            if 0 < i < self.size:
                out.append(self.tokens[i])
        return "".join(out)

    def describe(self) -> str:
        named = {" ": "space", "'": "apostrophe"}
        letters = "".join(c for c in self.characters if c not in named)
        parts = [named[c] for c in self.characters if c in named]
        if letters == "abcdefghijklmnopqrstuvwxyz":
            letters = "a-z"
        return ", ".join(["blank (id 0)", *parts, letters])

    def get_config(self) -> dict:
        return {"characters": self.characters}

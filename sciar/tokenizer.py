"""Tokenizers: a small protocol and a reusable longest-match vocabulary tokenizer.

:class:`VocabTokenizer` is configured by an adapter with groups of literal
tokens. A group may be bound to a context (a fixed-width text that must
precede it, checked by regex lookbehind), so that, for example, a space-group
symbol after ``_symmetry_space_group_name_H-M `` is one token distinct from
the element and digit tokens that spell it elsewhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from sciar.errors import DataError, SciarError
from sciar.registry import Registry


@runtime_checkable
class Tokenizer(Protocol):
    """What the core needs of a tokenizer."""

    vocab: list[str]
    special_tokens: list[str]

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def to_dict(self) -> dict: ...


class VocabTokenizer:
    """Longest-match tokenizer over literal token groups.

    ``groups``: list of ``{"name": str, "tokens": [str, ...], "after": str | None}``.
    ``special_tokens`` come first in the id space and never match text.
    ``unknown``: a special token for characters outside the vocabulary; without one,
    encoding such text raises :class:`DataError`.
    """

    kind = "vocab"

    def __init__(self, groups: list[dict], special_tokens: list[str] = (), unknown: str | None = None):
        self.groups = [{"name": g["name"], "tokens": list(g["tokens"]), "after": g.get("after")} for g in groups]
        self.special_tokens = list(special_tokens)
        if unknown is not None and unknown not in self.special_tokens:
            raise SciarError(f"unknown token {unknown!r} must be one of the special tokens")
        self.unknown = unknown
        self.vocab: list[str] = list(self.special_tokens)
        self._ids: dict[str, dict[str, int]] = {}
        for g in self.groups:
            if not g["tokens"]:
                raise SciarError(f"token group {g['name']!r} is empty")
            table = self._ids.setdefault(g["name"], {})
            for t in g["tokens"]:
                if not t or t in table:
                    raise SciarError(f"token group {g['name']!r} has an empty or repeated token {t!r}")
                table[t] = len(self.vocab)
                self.vocab.append(t)
        alts = []
        for i, g in enumerate(self.groups):
            body = "|".join(re.escape(t) for t in sorted(g["tokens"], key=len, reverse=True))
            look = f"(?<={re.escape(g['after'])})" if g["after"] else ""
            alts.append(f"(?P<g{i}>{look}(?:{body}))")
        # context-bound groups first, so that they win where their context holds
        order = sorted(range(len(self.groups)), key=lambda i: self.groups[i]["after"] is None)
        self._regex = re.compile("|".join(alts[i] for i in order))
        self._group_names = {f"g{i}": g["name"] for i, g in enumerate(self.groups)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, token: str, group: str | None = None) -> int:
        """The id of a token (a special token, or one of a group; the first group by default)."""
        if group is None and token in self.special_tokens:
            return self.special_tokens.index(token)
        table = self._ids[group or self.groups[0]["name"]]
        if token not in table:
            raise SciarError(f"{token!r} is not in token group {group or self.groups[0]['name']!r}")
        return table[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in self._regex.finditer(text):
            if m.start() != pos:
                self._unknown(text, pos, m.start(), ids)
            ids.append(self._ids[self._group_names[m.lastgroup]][m.group()])
            pos = m.end()
        if pos != len(text):
            self._unknown(text, pos, len(text), ids)
        return ids

    def _unknown(self, text: str, start: int, end: int, ids: list[int]):
        if self.unknown is None:
            snippet = text[max(0, start - 20) : end + 20].replace("\n", "\\n")
            raise DataError(f"text outside the vocabulary: {text[start:end]!r} in ...{snippet}...")
        ids.append(self.special_tokens.index(self.unknown))

    def decode(self, ids) -> str:
        n = len(self.vocab)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise DataError(f"token id {i} outside the vocabulary of {n}")
            if i >= len(self.special_tokens):
                out.append(self.vocab[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "groups": self.groups, "special_tokens": self.special_tokens, "unknown": self.unknown}

    @classmethod
    def from_dict(cls, d: dict) -> "VocabTokenizer":
        try:
            return cls(d["groups"], d.get("special_tokens", []), d.get("unknown"))
        except (KeyError, TypeError) as e:
            raise SciarError(f"malformed tokenizer description: {e}") from None


class CharTokenizer(VocabTokenizer):
    """One token per character of a given alphabet (a VocabTokenizer with one group)."""

    kind = "char"

    def __init__(self, alphabet: str, special_tokens: list[str] = (), unknown: str | None = None):
        super().__init__([{"name": "chars", "tokens": sorted(set(alphabet))}], special_tokens, unknown)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alphabet": "".join(self.groups[0]["tokens"]),
                "special_tokens": self.special_tokens, "unknown": self.unknown}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d["alphabet"], d.get("special_tokens", []), d.get("unknown"))


TOKENIZERS = Registry("tokenizer kind")
"""Tokenizer kinds (``tokenizer.json``'s ``kind``) to classes with ``from_dict``; adapters add their own."""


def register_tokenizer(kind: str, cls) -> None:
    """Make ``kind`` readable from ``tokenizer.json``: ``cls`` (or its import path ``"module:Class"``) has a
    ``from_dict(d)`` class method."""
    TOKENIZERS.register(kind, cls)


register_tokenizer(VocabTokenizer.kind, VocabTokenizer)
register_tokenizer(CharTokenizer.kind, CharTokenizer)


def tokenizer_from_dict(d: dict):
    """A tokenizer from its description (``to_dict``'s output); an unknown kind is a one-line SciarError."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if not isinstance(kind, str):
        raise SciarError(f"a tokenizer description needs a 'kind' (got {kind!r})")
    return TOKENIZERS.get(kind).from_dict(d)


def save_tokenizer(tok, path: str | Path):
    Path(path).write_text(json.dumps(tok.to_dict(), indent=1))


def load_tokenizer(path: str | Path):
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SciarError(f"cannot read tokenizer {path}: {e}") from None
    return tokenizer_from_dict(d)

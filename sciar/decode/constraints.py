"""The constraint protocol: which tokens a row may take next.

A :class:`Constraint` decides for one row (a factory is told the row's index and makes one). The
decoding loops (:func:`sciar.decode.tokens.generate`, ``mcts.rollout``) ask it for the tokens
``allowed()`` next, advance it by the token taken, ``copy()`` it where tree search forks a row,
and ``rewind(n)`` it to undo tokens (speculative decoding needs no rewind: it advances a constraint only by
the drafts it accepts, checking them one by one). A constraint that allows
exactly one token forces it: the loops then feed such runs of tokens in one forward pass.

:class:`GeneratorConstraint` turns a grammar written as a Python generator (yield the allowed ids,
receive the id taken) into a constraint; the crystal CIF grammar is one.
"""

from __future__ import annotations

from typing import Callable, Generator, Protocol, Sequence, runtime_checkable

import torch

Allowed = Sequence[int] | torch.Tensor | None  # token ids, or a boolean mask over the vocabulary; None: any token


@runtime_checkable
class Constraint(Protocol):
    """What a row may take next; advanced by the token taken; copied and rewound by tokens."""

    def allowed(self) -> Allowed:
        """The tokens allowed next: ids, a boolean mask ``[vocab]`` (True = allowed), or None for any."""

    def advance(self, token: int) -> None:
        """Take ``token`` (one of those allowed)."""

    def copy(self) -> "Constraint":
        """An independent constraint in the same state (tree search forks a row)."""

    def rewind(self, n: int) -> None:
        """Undo the last ``n`` tokens taken."""


ConstraintFactory = Callable[[int], "Constraint | None"]  # row index -> its constraint (None: unconstrained)


def single(allowed: Allowed) -> int | None:
    """The one token ``allowed`` forces, or None if it allows several (or any)."""
    if allowed is None:
        return None
    if isinstance(allowed, torch.Tensor):
        ids = allowed.nonzero().flatten()
        return int(ids[0]) if len(ids) == 1 else None
    return int(allowed[0]) if len(allowed) == 1 else None


class GeneratorConstraint:
    """A constraint from a generator function: the generator yields the allowed ids (or None for any)
    and receives the id taken; once it returns, any token goes.

    Generators cannot be copied, so ``copy`` and ``rewind`` replay the tokens taken through a fresh
    generator (their cost is one pass of the grammar over the row so far).
    """

    def __init__(self, make: Callable[[], Generator]):
        self.make = make
        self.taken: list[int] = []
        self._gen = make()
        self._allowed = self._send(None)

    def _send(self, token):
        if self._gen is None:
            return None
        try:
            return next(self._gen) if token is None else self._gen.send(token)
        except StopIteration:
            self._gen = None
            return None

    def allowed(self) -> Allowed:
        return self._allowed

    def advance(self, token: int) -> None:
        self.taken.append(int(token))
        self._allowed = self._send(int(token))

    def copy(self) -> "GeneratorConstraint":
        return self._replayed(self.taken)

    def rewind(self, n: int) -> None:
        if n < 0 or n > len(self.taken):
            raise ValueError(f"cannot rewind {n} of {len(self.taken)} tokens")
        other = self._replayed(self.taken[: len(self.taken) - n])
        self.taken, self._gen, self._allowed = other.taken, other._gen, other._allowed

    def _replayed(self, tokens: list[int]) -> "GeneratorConstraint":
        c = GeneratorConstraint(self.make)
        for t in tokens:
            c.advance(t)
        return c


def allowed_mask(constraints: Sequence["Constraint | None"], vocab: int, device) -> torch.Tensor | None:
    """[rows, vocab] boolean mask of the tokens each row's constraint allows (None: no row is constrained)."""
    rows, cols, masks = [], [], []
    for i, c in enumerate(constraints):
        a = c.allowed() if c is not None else None
        if a is None:
            continue
        if isinstance(a, torch.Tensor):
            masks.append((i, a))
        else:
            rows += [i] * len(a)
            cols += list(a)
    if not rows and not masks:
        return None
    mask = torch.ones(len(constraints), vocab, dtype=torch.bool)
    touched = sorted({*rows, *(i for i, _ in masks)})
    mask[touched] = False
    if rows:
        mask[rows, cols] = True
    for i, a in masks:
        mask[i] = a.to(torch.bool).cpu()
    return mask.to(device, non_blocking=True)

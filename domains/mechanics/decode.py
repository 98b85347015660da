"""Constrained answers: the answer grammar of each task as a token constraint, and sampling answers with it.

:func:`answer_constraint` is a :class:`sciar.decode.constraints.GeneratorConstraint` over
:func:`answer_grammar`, a generator that yields the tokens an answer to a given prompt may take next:
the bracket, the names the task answers in their order, and for each value only tokens that lead to
a canonical three-digit number (``d.dde<n>``) inside that name's range (a prefix tree of every such
number). So every sampled answer parses and every parameter lies in its family's box; for the
re-entrant family the walls-must-not-touch condition ``h > 2|sin theta| + t`` narrows ``h`` and ``t``
by the values already written. A Design answer from the model never starts with ``infeasible``:
whether a request is reachable is decided by the oracle (:mod:`domains.mechanics.design`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from domains.mechanics.grammar import (CURVE_POINTS, RANGES, STRESS_RANGE, Prompt, answer_names, fmt,
                                       mechanics_tokenizer, parse_answer)
from domains.mechanics.lattices import family_params

MIN_EXPONENT, MAX_EXPONENT = -15, 15  # the tokenizer's whole exponent tokens
_LEAF = -1  # key of a prefix-tree leaf's value


@lru_cache(maxsize=1)
def _tokenizer():
    return mechanics_tokenizer()


def canonical_numbers(lo: float, hi: float) -> list[float]:
    """Every value that :func:`fmt` writes (three significant digits, exponents -15..15) in [lo, hi]."""
    out = [0.0] if lo <= 0 <= hi else []
    for sign in (1, -1):
        a, b = (lo, hi) if sign > 0 else (-hi, -lo)  # magnitudes in [a, b]
        if b <= 0:
            continue
        e_lo = MIN_EXPONENT if a <= 0 else max(MIN_EXPONENT, math.floor(math.log10(a)) - 1)
        e_hi = min(MAX_EXPONENT, math.floor(math.log10(b)) + 1)
        for e in range(e_lo, e_hi + 1):
            for m in range(100, 1000):
                v = float(f"{m / 100:.2f}e{e}")
                if max(a, 0) <= v <= b and v > 0:
                    out.append(sign * v)
    return out


@lru_cache(maxsize=64)
def number_trie(lo: float, hi: float) -> dict:
    """A prefix tree over the token sequences of the canonical numbers in [lo, hi]: token -> subtree, the
    value at each leaf under the key -1. Built from the tokens' ids directly (sign, digit, point, two
    digits, exponent: what the tokenizer makes of ``fmt(v)``, which the tests check)."""
    tok = _tokenizer()
    digit = [tok.encode(str(d))[0] for d in range(10)]
    point, minus = tok.encode(".")[0], tok.encode("-")[0]
    root: dict = {}
    for v in canonical_numbers(lo, hi):
        mantissa, exponent = fmt(v).lstrip("-").split("e")
        node = root
        path = ([minus] if v < 0 else []) + [digit[int(mantissa[0])], point, digit[int(mantissa[2])],
                                             digit[int(mantissa[3])], tok.encode("e" + exponent)[0]]
        for t in path:
            node = node.setdefault(t, {})
        node[_LEAF] = v
    return root


def _number(lo: float, hi: float):
    """Sub-grammar of one number in [lo, hi]; returns its value."""
    node = number_trie(lo, hi)
    while _LEAF not in node:
        node = node[(yield sorted(node))]
    return node[_LEAF]


def _param_range(family: str, name: str, lo: float, hi: float, written: dict) -> tuple[float, float]:
    """A parameter's range, narrowed where a family ties it to the values written before it."""
    if family == "reentrant":
        touch = 2 * abs(math.sin(math.radians(written.get("theta", -10.0))))
        t_lo = family_params(family)[-1].lo
        if name == "h":  # room for the thinnest walls
            lo = max(lo, round(touch + t_lo, 2) + 0.01)
        elif name == "t":
            hi = min(hi, math.floor((written["h"] - touch) * 0.999 * 1000) / 1000)
    return lo, hi


def answer_grammar(prompt: Prompt):
    """A generator function: the token grammar of an answer to ``prompt`` (ends after ``]``)."""
    tok = _tokenizer()
    one = {s: tok.encode(s) for s in ("[", "]", ", ", "=", " ")}
    ranges = {}
    if prompt.task == "Design":
        ranges = {q.name: (q.lo, q.hi) for q in family_params(prompt.subject)}

    def grammar():
        yield one["["]
        written: dict = {}
        for i, name in enumerate(answer_names(prompt)):
            if i:
                yield one[", "]
            yield tok.encode(name)
            yield one["="]
            if prompt.task == "StressCurve":
                for k in range(CURVE_POINTS):
                    if k:
                        yield one[" "]
                    yield from _number(-STRESS_RANGE, STRESS_RANGE)
                continue
            if prompt.task == "Design":
                lo, hi = _param_range(prompt.subject, name, *ranges[name], written)
            else:
                lo, hi = RANGES[name]
            written[name] = yield from _number(lo, hi)
        yield one["]"]

    return grammar


def answer_constraint(prompt: Prompt):
    """The constraint (allowed/advance/copy/rewind) of an answer to ``prompt``."""
    from sciar.decode.constraints import GeneratorConstraint

    return GeneratorConstraint(answer_grammar(prompt))


def sample_answers(model, prompts: list[Prompt], n: int = 1, temperature: float = 1.0, top_k: int | None = None,
                   seed: int = 0, constrained: bool = True, max_new_tokens: int | None = None) -> list[list[dict]]:
    """``n`` answers per prompt: for each a dict with ``text``, ``answer`` (parsed; None if it does not
    parse, possible only unconstrained), ``error`` and ``logprob``. ``max_new_tokens``: default the context."""
    from sciar.decode.tokens import generate
    from sciar.errors import SciarError

    from domains.mechanics.grammar import format_prompt

    tok = _tokenizer()
    rows = [p for p in prompts for _ in range(n)]
    ids = [tok.encode(format_prompt(p)) for p in rows]
    cons = [answer_constraint(p) for p in rows] if constrained else None
    gens = generate(model, ids, max_new_tokens=max_new_tokens or model.cfg.block_size, temperature=temperature, top_k=top_k,
                    stop=[tok.encode("]")], constraints=cons, seed=seed)
    out = []
    for p, g in zip(rows, gens):
        text = tok.decode(g.tokens)
        rec = {"text": text, "answer": None, "error": None, "logprob": g.logprob}
        try:
            rec["answer"] = parse_answer(text, p)
        except SciarError as e:
            rec["error"] = str(e)
        out.append(rec)
    return [out[i * n:(i + 1) * n] for i in range(len(prompts))]


def _median(values) -> float:
    """The median of one field's sampled values: of their logarithms when all are positive (moduli span seven
    orders of magnitude, so a relative error is what counts), of the values otherwise (signed stresses, zero
    thicknesses); written back with three significant digits, as every number is."""
    v = np.asarray(values, dtype=float)
    m = 10 ** float(np.median(np.log10(v))) if (v > 0).all() else float(np.median(v))
    return float(fmt(m))


def _fields(records: list[dict]) -> list[tuple[str, list]]:
    """The parsed answers of ``records`` field by field: ``(name, [value of each answer])`` in the answers' order."""
    answers = [r["answer"] for r in records if r.get("answer") is not None]
    return [(name, [a.values()[name] for a in answers]) for name, _ in (answers[0].items if answers else [])]


def median_answer(records: list[dict]):
    """One answer from ``n`` sampled answers to the same forward prompt: each field's median (:func:`_median`;
    per stretch for a stress curve). A minimum-risk choice for numbers: a sampled answer's values come from one
    draw each, and a single slipped digit or exponent moves a greedy answer by a factor, while the median of
    several draws moves only if most of them slip. The median of values inside a field's range stays inside it.
    None when no record parsed."""
    from domains.mechanics.grammar import Answer

    fields = _fields(records)
    if not fields:
        return None
    out = []
    for name, vals in fields:
        if isinstance(vals[0], str):  # a word in a user's own task: the commonest
            out.append((name, max(set(vals), key=vals.count)))
        elif isinstance(vals[0], (tuple, list)):
            out.append((name, tuple(_median(col) for col in zip(*vals))))
        else:
            out.append((name, _median(vals)))
    return Answer(out)


def _spread(values) -> float:
    """How far one field's samples disagree: the ratio of the upper to the lower quartile, minus 1, when all are
    positive (a relative spread, as the error of a modulus is relative); else the interquartile range itself."""
    v = np.asarray(values, dtype=float)
    if (v > 0).all():
        q1, q3 = np.quantile(np.log10(v), [0.25, 0.75])
        return float(10 ** (q3 - q1) - 1)
    q1, q3 = np.quantile(v, [0.25, 0.75])
    return float(q3 - q1)


def answer_spread(records: list[dict]) -> dict:
    """Per numeric field of ``n`` sampled answers, how far the samples disagree (:func:`_spread`; a stress curve's
    largest over its stretches). The model's own uncertainty: on held-out designs, moduli whose samples agree within
    2% were 0.4% off, those spread by more than 20% were 25% off (the domain README has the table)."""
    out = {}
    for name, vals in _fields(records):
        if isinstance(vals[0], (tuple, list)):
            out[name] = max(_spread(col) for col in zip(*vals))
        elif not isinstance(vals[0], str):
            out[name] = _spread(vals)
    return out

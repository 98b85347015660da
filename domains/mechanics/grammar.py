"""Mechanics tasks as text: a prompt grammar in MeLM's ``Task<payload>`` style, its numbers, and its tokenizer.

Prompts and answers::

    Stiffness<honeycomb; theta=3.00e1; h=1.00e0; t=5.00e-2>
        [E1=2.87e-4, E2=2.87e-4, G12=7.20e-5, nu12=9.90e-1, nu21=9.90e-1, rho=5.69e-2]
    Design<honeycomb; E1=2.90e-4; E2=2.90e-4; rho<=6.00e-2>
        [theta=3.00e1, h=1.00e0, t=5.00e-2]       ([infeasible, ...] when no design reaches the request)
    StressCurve<cpshub; t1=8.25e-1; t2=2.75e-1; t3=7.85e-1; case=uniaxial_tension>
        [P11=3.14e-4 6.33e-4 9.56e-4 1.28e-3 1.30e-3]
    Thickness<cpshub; volumetric_compression=... ; ... all 16 load cases>
        [t1=8.25e-1, t2=2.75e-1, t3=7.85e-1]

Numbers are written with three significant digits in scientific notation, ``d.dde<n>`` (the exponent
without ``+`` or leading zeros). Moduli span about seven orders of magnitude, so fixed decimals would
erase the small ones; a logarithm would too, but it cannot carry the sign of a negative Poisson's
ratio or a compressive stress, and a rounding error of at most 0.5% of the value is far inside the 5%
that inverse design asks for. Users may type other number spellings (``theta=30``); :func:`canonical`
rewrites a prompt in the form above, which is what the tokenizer and model see.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from sciar.errors import SciarError
from sciar.tokenizer import VocabTokenizer

from domains.mechanics.lattices import FAMILIES, check_params, family_params
from domains.mechanics.properties import PROPERTIES

TASKS = ("Stiffness", "Design", "StressCurve", "Thickness")
CPSHUB = "cpshub"
LOAD_CASES = tuple(f"{kind}_{sense}" for kind in ("volumetric", "uniaxial", "biaxial", "planar", "shear", "biaxial2",
                                                  "biaxial3", "uniaxial-shear") for sense in ("compression", "tension"))
CURVE_POINTS = 5  # stresses at |lambda| = 0.06, 0.12, 0.18, 0.24, 0.30
THICKNESS_PARAMS = ("t1", "t2", "t3")

# what a number may be, by name (targets and answers); parameters use their family's ranges
RANGES = {"E1": (1e-12, 1.0), "E2": (1e-12, 1.0), "G12": (1e-12, 1.0), "nu12": (-20.0, 20.0), "nu21": (-20.0, 20.0),
          "rho": (1e-6, 1.0), "t1": (0.0, 1.0), "t2": (0.0, 1.0), "t3": (0.0, 1.0)}
STRESS_RANGE = 1.0  # |P| of a CPShub curve (wall material E = 1)

_NUMBER = re.compile(r"-?\d\.\d\de-?[1-9]\d*|-?\d\.\d\de0")
_PROMPT = re.compile(r"([A-Za-z]\w*)<(.*)>", re.S)
_ITEM = re.compile(r"\s*([A-Za-z][\w-]*)\s*(<=|>=|=)\s*(.*?)\s*")


def fmt(x: float) -> str:
    """Three significant digits in scientific notation: 2.87e-4, -3.00e1, 1.00e0."""
    if not math.isfinite(x):
        raise SciarError(f"cannot write {x} as a number")
    m, e = f"{x + 0.0:.2e}".split("e")  # + 0.0: no "-0.00e0"
    return f"{m}e{int(e)}"


def parse_number(text: str, name: str = "number") -> float:
    """A number as users type it (30, 0.05, 5e-2); SciarError when it is none."""
    try:
        v = float(text)
    except ValueError:
        raise SciarError(f"{name}={text!r} is not a number") from None
    if not math.isfinite(v):
        raise SciarError(f"{name}={text} is not a finite number")
    return v


def round3(x: float) -> float:
    """The value that :func:`fmt` writes (what a prompt can hold)."""
    return float(fmt(x))


def is_canonical_number(text: str) -> bool:
    return bool(_NUMBER.fullmatch(text))


@dataclass
class Prompt:
    """``task<subject; name op value; ...>``; a value is a float, a tuple of floats (a curve) or a word."""

    task: str
    subject: str
    items: list = field(default_factory=list)  # (name, op, value)

    def values(self) -> dict:
        return {n: v for n, _, v in self.items}


@dataclass
class Answer:
    items: list = field(default_factory=list)  # (name, value)
    infeasible: bool = False

    def values(self) -> dict:
        return dict(self.items)


def _value_text(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (tuple, list)):
        return " ".join(fmt(x) for x in v)
    return fmt(v)


def format_prompt(p: Prompt) -> str:
    return f"{p.task}<{'; '.join([p.subject] + [f'{n}{op}{_value_text(v)}' for n, op, v in p.items])}>"


def format_answer(a: Answer) -> str:
    parts = (["infeasible"] if a.infeasible else []) + [f"{n}={_value_text(v)}" for n, v in a.items]
    return f"[{', '.join(parts)}]"


def _check_range(name: str, v: float):
    lo, hi = RANGES[name]
    if not lo <= v <= hi:
        raise SciarError(f"{name}={fmt(v)} is outside its range [{lo:g}, {hi:g}]")


def _curve(text: str, name: str) -> tuple:
    vals = tuple(parse_number(x, name) for x in text.split())
    if len(vals) != CURVE_POINTS:
        raise SciarError(f"{name} needs {CURVE_POINTS} stresses separated by spaces (got {len(vals)})")
    if any(abs(x) > STRESS_RANGE for x in vals):
        raise SciarError(f"{name}: a stress above {STRESS_RANGE:g} in magnitude is outside the data's range")
    return vals


def parse_prompt(text: str) -> Prompt:
    """Parse and check a prompt: known task and subject, known names, numbers within their ranges."""
    m = _PROMPT.fullmatch(text.strip())
    if not m:
        raise SciarError(f"malformed prompt {text.strip()[:60]!r}: expected Task<subject; name=value; ...>")
    task, body = m.groups()
    if task not in TASKS:
        raise SciarError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    subject, *rest = [s.strip() for s in body.split(";")]
    items = []
    for raw in rest:
        im = _ITEM.fullmatch(raw)
        if not im or not im.group(3):
            raise SciarError(f"malformed item {raw.strip()!r} in {task}<...>: expected name=value")
        items.append(im.groups())
    names = [n for n, _, _ in items]
    if len(set(names)) != len(names):
        raise SciarError(f"{task}<...> names a quantity twice")
    return _CHECKS[task](task, subject, items)


def _check_stiffness(task, subject, items) -> Prompt:
    spec = family_params(subject)
    if any(op != "=" for _, op, _ in items):
        raise SciarError(f"{task} takes parameters as name=value")
    given = {n: parse_number(v, n) for n, _, v in items}
    p = check_params(subject, given)
    return Prompt(task, subject, [(q.name, "=", p[q.name]) for q in spec])


def _check_design(task, subject, items) -> Prompt:
    family_params(subject)
    if not items:
        raise SciarError(f"{task}<{subject}; ...> needs at least one target, e.g. E1=2.9e-4")
    out = []
    for n, op, v in items:
        if n not in PROPERTIES:
            raise SciarError(f"unknown property {n!r} in {task}; known: {', '.join(PROPERTIES)}")
        x = parse_number(v, n)
        _check_range(n, x)
        out.append((n, op, x))
    if all(op != "=" for _, op, _ in out):
        raise SciarError(f"{task} needs at least one property asked for with '=' (bounds alone pick no design)")
    order = {n: i for i, n in enumerate(PROPERTIES)}
    return Prompt(task, subject, sorted(out, key=lambda it: order[it[0]]))


def _check_cpshub(task, subject):
    if subject != CPSHUB:
        raise SciarError(f"{task} is asked of the {CPSHUB} lattices (got {subject!r})")


def _check_stress_curve(task, subject, items) -> Prompt:
    _check_cpshub(task, subject)
    vals = {n: v for n, op, v in items if op == "="}
    if set(vals) != {*THICKNESS_PARAMS, "case"} or len(items) != 4:
        raise SciarError(f"{task} needs t1, t2, t3 and case (got {', '.join(n for n, _, _ in items) or 'nothing'})")
    if vals["case"] not in LOAD_CASES:
        raise SciarError(f"unknown load case {vals['case']!r}; known: {', '.join(LOAD_CASES)}")
    out = []
    for n in THICKNESS_PARAMS:
        x = parse_number(vals[n], n)
        _check_range(n, x)
        out.append((n, "=", x))
    return Prompt(task, subject, out + [("case", "=", vals["case"])])


def _check_thickness(task, subject, items) -> Prompt:
    _check_cpshub(task, subject)
    vals = {n: v for n, op, v in items if op == "="}
    missing = [c for c in LOAD_CASES if c not in vals]
    if missing or len(items) != len(LOAD_CASES):
        raise SciarError(f"{task} needs the curves of all {len(LOAD_CASES)} load cases"
                         + (f" (missing {missing[0]})" if missing else " and nothing else"))
    return Prompt(task, subject, [(c, "=", _curve(vals[c], c)) for c in LOAD_CASES])


_CHECKS = {"Stiffness": _check_stiffness, "Design": _check_design,
           "StressCurve": _check_stress_curve, "Thickness": _check_thickness}


def parse_answer(text: str, prompt: Prompt) -> Answer:
    """Parse the answer to ``prompt`` and check it holds what that task answers, within range."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise SciarError(f"malformed answer {text[:60]!r}: expected [name=value, ...]")
    parts = [s.strip() for s in text[1:-1].split(",")]
    infeasible = parts[0] == "infeasible"
    if infeasible:
        if prompt.task != "Design":
            raise SciarError("only a Design answer may be 'infeasible'")
        parts = parts[1:]
    items = []
    for raw in parts:
        name, eq, v = raw.partition("=")
        if not eq or not name.strip() or not v.strip():
            raise SciarError(f"malformed answer item {raw!r}: expected name=value")
        items.append((name.strip(), v.strip()))
    expected = answer_names(prompt)
    if [n for n, _ in items] != list(expected):
        raise SciarError(f"a {prompt.task} answer holds {', '.join(expected)} in that order "
                         f"(got {', '.join(n for n, _ in items) or 'nothing'})")
    if prompt.task == "StressCurve":
        return Answer([(items[0][0], _curve(items[0][1], items[0][0]))])
    vals = {n: parse_number(v, n) for n, v in items}
    if prompt.task == "Design":
        vals = check_params(prompt.subject, vals)
    else:
        for n, x in vals.items():
            _check_range(n, x)
    return Answer([(n, vals[n]) for n in expected], infeasible)


def answer_names(prompt: Prompt) -> tuple:
    if prompt.task == "Stiffness":
        return PROPERTIES
    if prompt.task == "Design":
        return tuple(q.name for q in family_params(prompt.subject))
    if prompt.task == "StressCurve":
        return (stress_component(prompt.values()["case"]),)
    return THICKNESS_PARAMS


def stress_component(case: str) -> str:
    """The first Piola-Kirchhoff stress component a CPShub curve reports: P12 for shear, P11 otherwise."""
    return "P12" if case.startswith("shear") else "P11"


def canonical(text: str) -> str:
    """A prompt as the grammar writes it (three-significant-digit numbers, canonical order)."""
    return format_prompt(parse_prompt(text))


def mechanics_tokenizer() -> VocabTokenizer:
    """Whole tokens for the grammar's words and exponents, single digits for mantissas, and every other
    printable ASCII character alone, so that users' own tasks encode too (with exact round trip)."""
    words = set(TASKS) | set(FAMILIES) | {CPSHUB, "infeasible", "case", "P11", "P12"} | set(LOAD_CASES)
    words |= set(PROPERTIES) | set(THICKNESS_PARAMS) | {p.name for spec, _ in FAMILIES.values() for p in spec}
    exponents = [f"e{n}" for n in range(-15, 16)]
    punct = ["<", ">", "; ", ", ", "=", "<=", ">=", "[", "]", " ", "\n", "-", "."]
    single = [chr(c) for c in range(33, 127) if chr(c) not in punct and not chr(c).isdigit()]
    return VocabTokenizer([
        {"name": "word", "tokens": sorted(words)},
        {"name": "exponent", "tokens": exponents},
        {"name": "punct", "tokens": punct},
        {"name": "digit", "tokens": [str(d) for d in range(10)]},
        {"name": "char", "tokens": single},
    ])

"""Prompt grammar and tokenizer: exact round trips, number format, one-line errors for bad prompts."""

import math

import numpy as np
import pytest

from domains.mechanics.grammar import (LOAD_CASES, Answer, Prompt, canonical, fmt, format_answer, format_prompt,
                                       mechanics_tokenizer, parse_answer, parse_prompt)
from sciar.errors import SciarError


def test_numbers_have_three_significant_digits_in_scientific_notation():
    assert fmt(2.8652e-4) == "2.87e-4"
    assert fmt(-30) == "-3.00e1"
    assert fmt(1) == "1.00e0"
    assert fmt(0.0569017) == "5.69e-2"
    assert fmt(9.996) == "1.00e1"  # the carry moves the exponent
    rng = np.random.default_rng(0)
    for x in 10 ** rng.uniform(-9, 2, 500) * rng.choice([-1, 1], 500):
        s = fmt(x)
        mantissa, exponent = s.split("e")
        assert 1 <= abs(float(mantissa)) < 10 and len(mantissa.lstrip("-")) == 4
        assert abs(float(s) / x - 1) <= 0.005 + 1e-12  # at most half a unit in the third digit
        assert fmt(float(s)) == s


def _examples():
    curve = " ".join(fmt(x) for x in (-1.2e-5, -2.5e-5, -3.1e-5, -3.0e-5, -2.9e-5))
    return [
        "Stiffness<honeycomb; theta=3.00e1; h=1.00e0; t=5.00e-2>",
        "Stiffness<reentrant; theta=-2.50e1; h=1.50e0; t=1.23e-2>",
        "Stiffness<hierarchical; gamma=3.00e-1; t=1.00e-2>",
        "Design<kagome; E1=2.90e-4; E2=2.90e-4; rho<=6.00e-2>",
        "Design<honeycomb; E1=1.00e-5; nu12>=-5.00e-1>",
        "StressCurve<cpshub; t1=8.25e-1; t2=0.00e0; t3=7.85e-1; case=uniaxial-shear_tension>",
        "Thickness<cpshub; " + "; ".join(f"{c}={curve}" for c in LOAD_CASES) + ">",
    ]


@pytest.mark.parametrize("text", _examples())
def test_prompt_round_trip_text_and_tokens(text):
    assert format_prompt(parse_prompt(text)) == text
    tok = mechanics_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # words and exponents are single tokens


def test_users_spelling_is_made_canonical():
    assert canonical(" Stiffness<honeycomb; t = 0.05 ; theta=30>") == "Stiffness<honeycomb; theta=3.00e1; h=1.00e0; t=5.00e-2>"
    assert canonical("Design<square; rho<=0.1; E1=1e-2>") == "Design<square; E1=1.00e-2; rho<=1.00e-1>"


def test_answers_round_trip():
    p = parse_prompt("Design<honeycomb; E1=2.90e-4; E2=2.90e-4>")
    for text in ("[theta=3.00e1, h=1.00e0, t=5.00e-2]", "[infeasible, theta=6.00e1, h=2.00e0, t=1.50e-1]"):
        a = parse_answer(text, p)
        assert format_answer(a) == text
    s = parse_prompt("Stiffness<square; t=1.00e-2>")
    text = "[E1=1.00e-2, E2=1.00e-2, G12=5.00e-7, nu12=0.00e0, nu21=0.00e0, rho=1.99e-2]"
    assert format_answer(parse_answer(text, s)) == text
    c = parse_prompt("StressCurve<cpshub; t1=1.00e-1; t2=2.00e-1; t3=3.00e-1; case=shear_tension>")
    text = "[P12=1.00e-4 2.00e-4 3.00e-4 4.00e-4 5.00e-4]"
    assert format_answer(parse_answer(text, c)) == text


def test_random_prompts_round_trip_through_the_tokenizer():
    tok = mechanics_tokenizer()
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = Prompt("Stiffness", "honeycomb", [("theta", "=", float(fmt(rng.uniform(15, 60)))),
                                             ("h", "=", float(fmt(rng.uniform(0.5, 2)))),
                                             ("t", "=", float(fmt(10 ** rng.uniform(math.log10(0.005), math.log10(0.15)))))])
        text = format_prompt(p)
        assert format_prompt(parse_prompt(text)) == text
        assert tok.decode(tok.encode(text)) == text
        a = Answer([(k, float(fmt(v))) for k, v in zip("E1 E2 G12 nu12 nu21 rho".split(), rng.uniform(-1, 1, 6))])
        assert tok.decode(tok.encode(format_answer(a))) == format_answer(a)


def test_users_own_text_round_trips_through_the_tokenizer():
    tok = mechanics_tokenizer()
    text = "MyTask<foam; porosity=0.42 (open cells)>\n[strength=1.5 MPa]"
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text,message", [
    ("Stiffness honeycomb", "malformed prompt"),
    ("Bend<honeycomb; t=0.1>", "unknown task 'Bend'"),
    ("Stiffness<foam; t=0.1>", "unknown lattice family 'foam'"),
    ("Stiffness<honeycomb; t=0.5>", r"t=0.5 is outside its range \[0.005, 0.15\]"),
    ("Stiffness<honeycomb; t=thin>", "'thin' is not a number"),
    ("Stiffness<honeycomb; t=nan>", "not a finite number"),
    ("Stiffness<honeycomb; t>", "malformed item 't'"),
    ("Stiffness<honeycomb; t=0.1; t=0.1>", "twice"),
    ("Design<honeycomb; E1=2>", "outside its range"),
    ("Design<honeycomb; rho<=0.1>", "needs at least one property"),
    ("Design<honeycomb; K=1e-3>", "unknown property 'K'"),
    ("StressCurve<cpshub; t1=0.1; t2=0.2; t3=0.3; case=twist>", "unknown load case 'twist'"),
    ("StressCurve<honeycomb; t1=0.1; t2=0.2; t3=0.3; case=shear_tension>", "asked of the cpshub"),
    ("Thickness<cpshub; shear_tension=1e-4 2e-4 3e-4 4e-4 5e-4>", "all 16 load cases"),
])
def test_bad_prompts_are_one_line_errors(text, message):
    with pytest.raises(SciarError, match=message) as e:
        parse_prompt(text)
    assert "\n" not in str(e.value)


def test_bad_answers_are_one_line_errors():
    p = parse_prompt("Design<honeycomb; E1=2.90e-4>")
    with pytest.raises(SciarError, match="holds theta, h, t in that order"):
        parse_answer("[t=5.00e-2, theta=3.00e1, h=1.00e0]", p)
    with pytest.raises(SciarError, match="outside its range"):
        parse_answer("[theta=9.00e1, h=1.00e0, t=5.00e-2]", p)
    with pytest.raises(SciarError, match="malformed answer"):
        parse_answer("theta=3.00e1", p)

"""The shipped crystal checkpoints against what they produced at commit 82c2686 (tests/fixtures/), and the CIF
grammar as a constraint: greedy decoding must give the old tokens exactly, with the grammar and without; seeded
sampling draws other random numbers now (one generator per row), so sampled CIFs are checked for what they must
be (complete, parseable, of the prompt's composition), and the grammar's copy and rewind against a replay."""

import json
import warnings
from pathlib import Path

import pytest

from domains.crystals.cif import structure_from_cif
from domains.crystals.generate import CrystalGenerator, make_prompt
from domains.crystals.grammar import cif_constraint
from domains.crystals.validity import is_formula_consistent

ROOT = Path(__file__).resolve().parents[1]
REF = json.loads((ROOT / "tests" / "fixtures" / "crystal_reference_82c2686.json").read_text())

warnings.simplefilter("ignore")


@pytest.fixture(scope="module")
def small():
    return CrystalGenerator(ROOT / "data" / "checkpoints" / "crystal-small")


def cases(name, limit=None):
    return [(name, r) for r in REF["checkpoints"][name][:limit]]


@pytest.mark.parametrize("name,rec", cases("crystal-small") + cases("crystal-medium", 1),
                         ids=lambda x: x if isinstance(x, str) else f"{x['composition']}-{x['spacegroup']}")
def test_greedy_decoding_gives_the_tokens_of_82c2686(name, rec, small):
    gen = small if name == "crystal-small" else CrystalGenerator(ROOT / "data" / "checkpoints" / name)
    p = make_prompt(rec["composition"], rec["spacegroup"])
    assert p.text == rec["prompt"]
    for key, constrained, most in (("grammar", True, None), ("free", False, 160)):
        got = gen.sample([p], 1, top_k=1, seed=0, constrained=constrained, max_new_tokens=most, snap=False, fit=False)[0]
        want = rec[f"greedy_{key}"]
        assert got.text == want["text"] and got.n_tokens == want["n_tokens"] and got.complete == want["complete"]
        assert got.logprob == pytest.approx(want["logprob"], abs=1e-3)


def test_sampled_cifs_parse_and_keep_the_composition(small):
    prompts = [make_prompt(r["composition"], r["spacegroup"]) for r in REF["checkpoints"]["crystal-small"]]
    samples = small.sample(prompts, 2, seed=0, snap=False, fit=False)
    for p, s in zip([p for p in prompts for _ in range(2)], samples):
        assert s.complete, s.text
        st = structure_from_cif(s.text)
        assert st.composition.reduced_formula == p.composition.reduced_formula
        assert is_formula_consistent(s.text)


def test_grammar_copy_and_rewind_equal_a_replay(small):
    """A CIF's tokens through one constraint, forked midway and rewound, against fresh constraints replaying
    the same prefixes: the same allowed tokens at every point checked."""
    p = make_prompt("Na4Cl4")
    text = REF["checkpoints"]["crystal-small"][0]["greedy_grammar"]["text"]
    ids = small.tok.encode(text)[len(small.tok.encode(p.text)):]
    assert len(ids) > 200

    def replay(n):
        c = cif_constraint(small.vocab, p)
        for t in ids[:n]:
            c.advance(t)
        return c

    def allowed(c):
        a = c.allowed()
        return None if a is None else sorted(a)

    c = cif_constraint(small.vocab, p)
    for t in ids[:150]:
        c.advance(t)
    fork = c.copy()
    for t in ids[150:]:
        c.advance(t)
    assert allowed(fork) == allowed(replay(150))
    fork.advance(ids[150])
    assert allowed(fork) == allowed(replay(151))
    c.rewind(len(ids) - 200)
    assert c.taken == ids[:200] and allowed(c) == allowed(replay(200))

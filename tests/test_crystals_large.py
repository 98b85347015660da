"""Larger cells (the context bounds the symmetry-distinct sites) and the hybrid's ranking rule."""

import random
import warnings

import pytest

from cli import main
from domains.crystals.benchmark import merge_ranked
from domains.crystals.grammar import Vocab, cif_grammar
from domains.crystals.prompts import SITE_ROW_TOKENS, fewest_orbits, fewest_sites, make_prompt
from domains.crystals.tokenizer import cif_tokenizer

warnings.simplefilter("ignore")


def test_fewest_sites_worked_by_hand():
    # Fm-3m's multiplicities are 4, 8, 24, 32, 48, 96, 192: 52 = 48 + 4 (two sites), 12 = 8 + 4, 20 = 8 + 8 + 4
    fm3m = (4, 8, 24, 32, 48, 96, 192)
    assert [fewest_orbits(k, fm3m) for k in (4, 12, 20, 52, 56)] == [1, 2, 3, 2, 2]
    assert fewest_orbits(6, fm3m) >= 10**9  # 6 atoms cannot fill Fm-3m's positions
    assert fewest_orbits(7, (1,)) == 7  # P1: every atom its own site
    assert fewest_sites([24, 48], 225) == 1 + 1 and fewest_sites([3, 2], 1) == 5


def _walk(v, prompt, block, seed):
    """Drive the grammar with uniformly random allowed tokens (no model): the text it lets out."""
    rng = random.Random(seed)
    g = cif_grammar(v, prompt, block)
    ids = []
    allowed = next(g)
    while True:
        t = rng.choice(allowed)
        ids.append(t)
        try:
            allowed = g.send(t)
        except StopIteration:
            return v.tok.decode(ids)


def test_the_grammar_keeps_a_large_cell_inside_the_context():
    tok = cif_tokenizer()
    v = Vocab(tok)
    p = make_prompt("Li8Fe8O32")  # 48 atoms: in P1 48 sites, about 1,900 tokens
    block = 700
    lengths = []
    for seed in range(3):
        text = _walk(v, p, block, seed)
        n = len(tok.encode(p.text + text))
        lengths.append(n)
        assert n <= block
        rows = [r.split() for r in text.splitlines() if r.startswith(" ") and r.strip().endswith("1.0")]
        counts = {}
        for r in rows:
            counts[r[0]] = counts.get(r[0], 0) + int(r[2])
        assert counts == {"Li": 8, "Fe": 8, "O": 32}  # the composition, in the few sites that fit
        assert len(rows) <= (block - 280) // SITE_ROW_TOKENS + 1
    # without the context bound the same random walks run far past it
    assert max(len(tok.encode(p.text + _walk(v, p, None, s))) for s in range(3)) > block


def test_a_composition_beyond_the_context_is_refused_in_one_line_with_the_limit(tmp_path, capsys):
    # 25 elements, one atom each: every space group needs 25 sites; the atom-type block alone takes
    # most of the 1,024 tokens
    big = "".join(f"{e}1" for e in "Li Na K Rb Cs Be Mg Ca Sr Ba Sc Y Ti Zr Hf V Nb Ta Cr Mo W Mn Fe Co Ni".split())
    rc = main(["crystal", "sample", "--composition", big, "-n", "1", "--strategy", "lm", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "context of 1024 tokens" in err and "symmetry-distinct sites" in err and "needs at least 25" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.cif"))


class C:
    def __init__(self, name, source, share=0.0):
        self.name, self.source, self.share = name, source, share

    def __repr__(self):
        return self.name


def _same(pairs):
    return lambda a, b: (a.name, b.name) in pairs or (b.name, a.name) in pairs


def test_merge_ranked_worked_by_hand():
    lm = [C("l1", "lm", 0.5), C("l2", "lm", 0.3), C("l3", "lm", 0.025)]
    ret = [C("r1", "retrieval"), C("r2", "retrieval"), C("r3", "retrieval"), C("r4", "retrieval")]
    share = lambda c: c.share  # noqa: E731
    # weight 0.2, decay 1: retrieval's votes 0.2, 0.1, 0.0667, 0.05 by rank; l2 and r3 are one structure, so it
    # scores 0.3 + 0.0667 (kept as r3); votes: l1 0.5, r3 0.367, r1 0.2, r2 0.1, r4 0.05, l3 0.025
    out = merge_ranked(lm, ret, 10, _same({("l2", "r3")}), share, weight=0.2, decay=1.0)
    assert [c.name for c in out] == ["l1", "r3", "r1", "r2", "r4", "l3"]
    assert [c.name for c in merge_ranked(lm, ret, 2, _same({("l2", "r3")}), share, weight=0.2, decay=1.0)] == ["l1", "r3"]
    # decay 0: every retrieval candidate votes 0.5; l1 (0.5) ties with them and the lists take turns, the model first
    lm2 = [C("l1", "lm", 0.5), C("l2", "lm", 0.25)]
    out = merge_ranked(lm2, ret[:2], 10, _same(set()), share, weight=0.5, decay=0.0)
    assert [c.name for c in out] == ["l1", "r1", "r2", "l2"]
    # l2 equal to r2: 0.25 + 0.5 leads; a tie at 0.5 then goes to the model's l1 before r1
    out = merge_ranked(lm2, ret[:2], 10, _same({("l2", "r2")}), share, weight=0.5, decay=0.0)
    assert [c.name for c in out] == ["r2", "l1", "r1"]
    # a model structure pairs with the first retrieval candidate equal to it that is still free
    out = merge_ranked([C("l1", "lm", 0.1), C("l2", "lm", 0.05)], ret[:2], 10,
                       _same({("l1", "r1"), ("l2", "r1"), ("l2", "r2")}), share, weight=0.2, decay=1.0)
    assert [c.name for c in out] == ["r1", "r2"]  # 0.1 + 0.2 and 0.05 + 0.1
    # one list empty: the other in its own order
    assert [c.name for c in merge_ranked([], ret, 2, _same(set()), share)] == ["r1", "r2"]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])

"""The mechanics model: answer-grammar constraint (every sampled answer parses, in range; copy/rewind equal
replay), training through the core, inverse design verified by the oracle, an infeasible request worked out
by hand, and the train/ask/design/batch commands end to end with their exit codes."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from domains.mechanics.decode import (answer_constraint, answer_spread, canonical_numbers, median_answer,
                                     sample_answers)
from domains.mechanics.grammar import mechanics_tokenizer, parse_answer, parse_prompt
from domains.mechanics.lattices import build, family_params
from sciar.model import LanguageModel, ModelConfig

PROMPTS = [
    "Stiffness<honeycomb; theta=30; h=1; t=0.05>",
    "Design<reentrant; E1=1e-4; nu12=-1>",
    "Design<hierarchical; E1=1e-4; rho<=0.1>",
    "Design<square; E1=1e-2>",
    "StressCurve<cpshub; t1=0.5; t2=0; t3=0.2; case=shear_tension>",
]


@pytest.fixture(scope="module")
def untrained():
    tok = mechanics_tokenizer()
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=768)).eval()


def test_number_tokens_are_the_tokenizers():
    from domains.mechanics.decode import number_trie

    tok = mechanics_tokenizer()
    seqs = []

    def walk(node, path):
        for k, child in node.items():
            if k == -1:
                seqs.append((path, child))
            else:
                walk(child, path + [k])

    walk(number_trie(-20.0, 20.0), [])
    assert len(seqs) == len(canonical_numbers(-20.0, 20.0))
    for path, v in seqs[::97]:
        assert tok.decode(path) == f"{v:.2e}".split("e")[0] + "e" + str(int(f"{v:.2e}".split("e")[1]))
        assert tok.encode(tok.decode(path)) == path


def test_canonical_numbers_by_hand():
    # 1.50 .. 2.50 at exponent 0: 101 mantissas; [-1e-15, 1e-15] holds 0 and +-1.00e-15 only
    assert canonical_numbers(1.5, 2.5) == pytest.approx([1.5 + k / 100 for k in range(101)])
    assert sorted(canonical_numbers(-1e-15, 1e-15)) == [-1e-15, 0.0, 1e-15]
    assert len(canonical_numbers(0.005, 0.15)) == (999 - 500 + 1) + 900 + (150 - 100 + 1)


def test_untrained_model_under_the_constraint_answers_in_grammar_and_range(untrained):
    prompts = [parse_prompt(p) for p in PROMPTS]
    for p, recs in zip(prompts, sample_answers(untrained, prompts, n=4, seed=3)):
        for r in recs:
            a = parse_answer(r["text"], p)  # the grammar module's own parser: names, order, ranges
            assert r["error"] is None and not a.infeasible
            if p.task == "Design":
                params = a.values()
                for q in family_params(p.subject):
                    assert q.lo <= params[q.name] <= q.hi
                build(p.subject, params)  # re-entrant walls that touch would raise
    # without the constraint the same model writes garbage
    free = sample_answers(untrained, prompts[:1], n=4, seed=3, constrained=False, max_new_tokens=40)[0]
    assert all(r["answer"] is None for r in free)


def test_copy_and_rewind_equal_replay():
    tok = mechanics_tokenizer()
    p = parse_prompt("Design<reentrant; E1=1e-4>")
    answer = tok.encode("[theta=-3.00e1, h=2.00e0, t=5.00e-2]")
    c = answer_constraint(p)
    states = []
    for t in answer:
        allowed = c.allowed()
        assert t in list(allowed)  # the canonical answer is in the grammar
        states.append(sorted(allowed))
        c.advance(t)
    for k in (1, 5, len(answer) - 3):
        fresh = answer_constraint(p)
        for t in answer[:k]:
            fresh.advance(t)
        twin = c.copy()
        twin.rewind(len(answer) - k)
        assert sorted(twin.allowed()) == sorted(fresh.allowed()) == states[k]
    # theta = -30 needs h > 2 sin(30 deg) + t >= 1.005: after "h=1.0" the next digit cannot be 0
    c = answer_constraint(p)
    for t in tok.encode("[theta=-3.00e1, h=1.0"):
        c.advance(t)
    assert sorted(c.allowed()) == [tok.encode(str(d))[0] for d in range(1, 10)]


def _oracle_error(request, props):
    errs = []
    for name, op, want in request.items:
        got = props[name]
        if op == "=":
            errs.append(abs(got / want - 1) if name != "nu12" else abs(got - want))
        elif op == "<=":
            errs.append(max(0.0, got / want - 1))
    return max(errs)


def test_design_candidates_errors_are_the_oracles(untrained):
    from domains.mechanics.design import design
    from domains.mechanics.properties import simulate

    req = parse_prompt("Design<honeycomb; E1=2.9e-4; E2=2.9e-4; rho<=0.06>")
    table, calls = design(untrained, req, n=6, seed=1)
    assert len(table) == 6 and 1 <= calls <= 6 and list(table["error"]) == sorted(table["error"])
    for _, r in table.iterrows():
        props = simulate("honeycomb", {"theta": r["theta"], "h": r["h"], "t": r["t"]}).to_dict()
        assert r["E1"] == props["E1"] and r["error"] == pytest.approx(_oracle_error(req, props), rel=1e-12)
        assert r["meets"] == (abs(props["E1"] / 2.9e-4 - 1) <= 0.05 and abs(props["E2"] / 2.9e-4 - 1) <= 0.05
                              and props["rho"] <= 0.06)


def test_refinement_keeps_to_the_call_budget(untrained):
    """``design(refine=True, calls=N)``: the samples and the least-squares refinement together solve at most N
    distinct designs (an unreachable request, so the refinement runs until the budget is spent)."""
    from domains.mechanics.design import design

    req = parse_prompt("Design<honeycomb; E1=5e-1; E2=5e-1>")  # far above any honeycomb's stiffness
    table, calls = design(untrained, req, n=4, seed=0, refine=True, calls=12)
    assert calls == 12 and not table["meets"].any()
    assert (table["source"] == "refined").sum() == 1 and len(table) == 5


def test_infeasible_triangular_stretching_bound(untrained):
    """The triangular lattice is stretching-dominated: E = rho_sum / 3 = 2 sqrt(3) t / 3 (plus O(t^2) bending),
    at most 0.173 at the family's thickest walls t = 0.15; E1 = 0.3 is out of reach, the nearest is t = 0.15."""
    from domains.mechanics.ask import ask

    res = ask(untrained, "Design<triangular; E1=0.3; E2=0.3>", n=4, seed=0)
    assert res["answer"] == "[infeasible, t=1.50e-1]"
    bound = 2 * math.sqrt(3) * 0.15 / 3
    assert res["best"]["E1"] == pytest.approx(bound, rel=0.15 ** 2)
    assert res["best"]["error"] == pytest.approx(1 - res["best"]["E1"] / 0.3, rel=1e-9)
    # a reachable request is not infeasible: E = 2 sqrt(3) t / 3 at t = 0.05
    ok = ask(untrained, f"Design<triangular; E1={2 * math.sqrt(3) * 0.05 / 3:.3e}>", n=4, seed=0)
    assert not ok["answer"].startswith("[infeasible") and ok["best"]["error"] <= 0.05


runner = CliRunner()


def _cli(*args):
    from domains.mechanics.cli import app

    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few steps by the train command on a small oracle table."""
    from domains.mechanics.datasets import oracle_dataset

    d = tmp_path_factory.mktemp("mech")
    oracle_dataset(["square", "triangular"], 6, seed=0, progress=False).to_parquet(d / "o.parquet")
    pd.DataFrame({"prompt": ["Buckling<square; t=5.00e-2>"], "answer": ["[Pcr=1.23e-3]"]}).to_csv(d / "u.csv")
    r = _cli("train", "--data", d / "o.parquet", "--data", d / "u.csv", "--preset", "tiny", "--steps", 3,
             "--batch-size", 4, "--threads", 1, "--out", d / "ck")
    assert r.exit_code == 0, r.output
    assert "Stiffness 12, Design 12, Buckling 1" in r.output and (d / "ck" / "loss.png").is_file()
    return d


def test_cli_ask_design_batch(trained, capsys):
    from cli import main

    ck = trained / "ck"
    r = _cli("ask", "Stiffness<square; t=0.05>", "--checkpoint", ck, "-n", 2)
    assert r.exit_code == 0, r.output
    assert "oracle: [E1=5.00e-2, E2=5.00e-2, G12=6.25e-5" in r.output  # E = t, G = t^3 / 2
    for bad in (["ask", "Stiffness<square; t=0.5>"], ["ask", "Bend<square>"],
                ["design", "--family", "mesh", "--target", "E1=1e-3", "--out", str(trained / "x")]):
        assert main(["mechanics", *bad, "--checkpoint", str(ck)]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:"), err
    r = _cli("design", "--family", "square", "--target", "E1=1e-2", "--max-density", 0.05, "-n", 3, "--top", 1,
             "--checkpoint", ck, "--out", trained / "d")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(trained / "d" / "candidates.csv")
    assert len(table) == 3 and (trained / "d" / "candidate_01.png").is_file()
    r = _cli("design", "--family", "square", "--target", "E1=1e-2", "-n", 3, "--search", "mcts", "--top", 0,
             "--checkpoint", ck, "--out", trained / "m")
    assert r.exit_code == 0, r.output
    assert (pd.read_csv(trained / "m" / "candidates.csv")["source"] == "mcts").all()
    pd.DataFrame({"prompt": ["Stiffness<square; t=0.05>", "Design<square; E1=1e-2>", "Stiffness<square; t=9>"]}
                 ).to_csv(trained / "p.csv", index=False)
    r = _cli("batch", "--input", trained / "p.csv", "--output", trained / "r.parquet", "--checkpoint", ck, "-n", 2)
    assert r.exit_code == 0, r.output
    out = pd.read_parquet(trained / "r.parquet")
    assert list(out["status"]) == ["ok", "ok", "error"] and "outside its range" in out["error"].iloc[2]
    assert np.isfinite(out["verified_error"].iloc[1]) and out["rel_error_E1"].notna().iloc[0]


def test_median_answer_by_hand():
    """Moduli: the median of the logarithms (1e-4, 1e-2, 2e-3 -> 2e-3; 1e-4 and 1e-2 alone -> their geometric
    mean 1e-3, not 5.05e-3); signed values and zeros: the plain median; curves per stretch; three digits."""
    p = parse_prompt("Stiffness<square; t=0.05>")
    texts = ["[E1=1.00e-4, E2=1.00e-4, G12=1.00e-5, nu12=1.00e-1, nu21=-2.00e-1, rho=1.00e-1]",
             "[E1=1.00e-2, E2=3.00e-4, G12=1.00e-5, nu12=3.00e-1, nu21=0.00e0, rho=1.00e-1]",
             "[E1=2.00e-3, E2=1.00e-4, G12=1.00e-5, nu12=2.00e-1, nu21=1.00e-1, rho=1.00e-1]"]
    recs = [{"answer": parse_answer(t, p)} for t in texts]
    got = median_answer(recs).values()
    assert got["E1"] == 2e-3 and got["E2"] == 1e-4 and got["nu21"] == 0.0 and got["nu12"] == 0.2
    two = median_answer(recs[:2]).values()
    assert two["E1"] == 1e-3 and two["E2"] == float(f"{math.sqrt(3e-8):.2e}")  # 1.73e-4
    assert two["nu21"] == -0.1
    c = parse_prompt("StressCurve<cpshub; t1=0.5; t2=0; t3=0.2; case=shear_tension>")
    curves = ["[P12=1.00e-3 2.00e-3 -1.00e-3 4.00e-3 5.00e-3]", "[P12=3.00e-3 1.00e-3 2.00e-3 -4.00e-3 6.00e-3]",
              "[P12=2.00e-3 3.00e-3 1.00e-3 0.00e0 7.00e-3]"]
    got = median_answer([{"answer": parse_answer(t, c)} for t in curves]).items[0][1]
    assert got == (2e-3, 2e-3, 1e-3, 0.0, 6e-3)
    assert median_answer([{"answer": None}]) is None


def test_answer_spread_by_hand():
    """Quartiles interpolated linearly (numpy's default), by hand: E1 of 1e-4, 2e-4, 4e-4, 8e-4 has log-quartiles a
    factor 2^1.5 apart (spread 2^1.5 - 1); nu21 of -0.2, 0, 0.1, 0.3 (signs mixed) has quartiles -0.05 and 0.15."""
    p = parse_prompt("Stiffness<square; t=0.05>")
    recs = [{"answer": parse_answer(f"[E1={e1}, E2=1.00e-4, G12=1.00e-5, nu12=1.00e-1, nu21={nu}, rho=1.00e-1]", p)}
            for e1, nu in (("1.00e-4", "-2.00e-1"), ("2.00e-4", "0.00e0"), ("4.00e-4", "1.00e-1"), ("8.00e-4", "3.00e-1"))]
    got = answer_spread(recs)
    assert got["E1"] == pytest.approx(2 ** 1.5 - 1) and got["E2"] == 0.0
    assert got["nu21"] == pytest.approx(0.2)


def test_batches_keep_to_one_length_bucket_and_draw_documents_uniformly():
    """Short and long documents never share a batch, and over many batches each kind is drawn in its share of
    the documents (90 of 40 tokens, 10 of 600: a tenth long, within four binomial standard errors)."""
    import torch

    from domains.mechanics.model import AnswerBatches

    docs = [([1] * 40, 20)] * 90 + [([2] * 600, 300)] * 10
    src = AnswerBatches({"train": docs})
    gen = torch.Generator().manual_seed(0)
    long = total = 0
    for _ in range(2000):
        b = src.get_batch("train", 8, gen)
        lengths = {int((row != 0).sum()) for row in b["idx"]}
        assert len(lengths) == 1  # one bucket: no padding at all here
        long += 8 * (lengths == {599})
        total += 8
    share, se = long / total, (0.1 * 0.9 / 2000) ** 0.5  # batches, not tokens, are the independent draws
    assert abs(share - 0.1) < 4 * se

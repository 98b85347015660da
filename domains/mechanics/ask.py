"""Answering one prompt of any task with the model, the oracle's answer beside it where there is one.

Forward prompts (``Stiffness``) are answered greedily-ish by the model (the most likely of ``n``
constrained samples) and compared with the oracle's answer; ``Design`` requests take ``n`` sampled
candidates, each solved by the oracle, and the best refined by least squares when none meets the
request (:func:`domains.mechanics.design.design`): the answer is the best design, marked
``infeasible`` when no design found meets the request. CPShub tasks (``StressCurve``, ``Thickness``)
and users' own tasks have no oracle here: the model's answer is all there is.
"""

from __future__ import annotations

from domains.mechanics.grammar import Prompt, format_answer, format_prompt, parse_prompt
from domains.mechanics.properties import MODULI, PROPERTIES


def ask(model, text: str, n: int = 8, temperature: float = 1.0, seed: int = 0) -> dict:
    """The answer to prompt ``text``: ``prompt`` (canonical), ``answer`` (text), and per task ``oracle``
    (the oracle's answer), ``rel_error`` and ``abs_error``, ``candidates``/``oracle_calls`` (Design)."""
    from domains.mechanics.decode import sample_answers

    prompt = parse_prompt(text)
    out = {"prompt": format_prompt(prompt)}
    if prompt.task == "Design":
        from domains.mechanics.design import answer_text, design

        table, calls = design(model, prompt, n=n, temperature=temperature, seed=seed, refine=True)
        out.update(answer=answer_text(prompt, table), oracle_calls=calls, candidates=table,
                   best={k: float(table.iloc[0][k]) for k in (*PROPERTIES, "error") if k in table})
        return out
    recs = sample_answers(model, [prompt], n, temperature=temperature, seed=seed)[0]
    best = max(recs, key=lambda r: r["logprob"])
    out["answer"] = best["text"]
    if prompt.task == "Stiffness":
        out.update(oracle_comparison(prompt, best["answer"].values()))
    return out


def oracle_comparison(prompt: Prompt, predicted: dict) -> dict:
    """The oracle's answer to a Stiffness prompt, the model's relative errors of the moduli and density and its
    absolute errors of the Poisson's ratios (which may be 0: the square lattice)."""
    from domains.mechanics.grammar import Answer
    from domains.mechanics.properties import simulate

    truth = simulate(prompt.subject, prompt.values()).to_dict()
    return {"oracle": format_answer(Answer([(k, truth[k]) for k in PROPERTIES])),
            "rel_error": {k: abs(predicted[k] / truth[k] - 1) for k in (*MODULI, "rho")},
            "abs_error": {k: abs(predicted[k] - truth[k]) for k in ("nu12", "nu21")}}

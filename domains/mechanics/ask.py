"""Answering one prompt of any task with the model, the oracle's answer beside it where there is one.

Forward prompts (``Stiffness``, and the CPShub tasks) are answered by the median of ``n`` constrained samples,
field by field (:func:`domains.mechanics.decode.median_answer`; on held-out designs it nearly halves the greedy
answer's error of the moduli: the domain README has the figures), and Stiffness answers are compared with the
oracle's; ``Design`` requests take ``n`` sampled candidates, each solved by the oracle, and the best refined by
least squares when none meets the request (:func:`domains.mechanics.design.design`): the answer is the best design, marked
``infeasible`` when no design found meets the request. CPShub tasks (``StressCurve``, ``Thickness``)
and users' own tasks have no oracle here: the model's answer is all there is.
"""

from __future__ import annotations

from domains.mechanics.grammar import Prompt, format_answer, format_prompt, parse_prompt
from domains.mechanics.properties import MODULI, PROPERTIES


SAMPLES = 16  # answers sampled per prompt by default (the median of 16 errs 8% less than of 8: the README)


def ask(model, text: str, n: int = SAMPLES, temperature: float = 1.0, seed: int = 0) -> dict:
    """The answer to prompt ``text``: ``prompt`` (canonical), ``answer`` (text), and per task ``spread`` (forward:
    how far the samples disagree, per field), ``oracle`` (the oracle's answer), ``rel_error`` and ``abs_error``,
    ``candidates``/``oracle_calls`` (Design)."""
    from domains.mechanics.decode import answer_spread, median_answer, sample_answers

    prompt = parse_prompt(text)
    out = {"prompt": format_prompt(prompt)}
    if prompt.task == "Design":
        from domains.mechanics.design import answer_text, design

        table, calls = design(model, prompt, n=n, temperature=temperature, seed=seed, refine=True)
        out.update(answer=answer_text(prompt, table), oracle_calls=calls, candidates=table,
                   best={k: float(table.iloc[0][k]) for k in (*PROPERTIES, "error") if k in table})
        return out
    records = sample_answers(model, [prompt], n, temperature=temperature, seed=seed)[0]
    answer = median_answer(records)
    out["answer"] = format_answer(answer)
    out["spread"] = answer_spread(records)
    if prompt.task == "Stiffness":
        out.update(oracle_comparison(prompt, answer.values()))
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

"""The generator API: a loaded crystal checkpoint that samples CIFs for compositions.

:class:`CrystalGenerator` decodes prompts (:mod:`domains.crystals.prompts`) through the core's token loop
(:func:`sciar.decode.tokens.generate`) with the CIF grammar (:mod:`domains.crystals.grammar`) as each row's
constraint, then snaps the sites onto Wyckoff positions (:mod:`domains.crystals.wyckoff`) and fits the bond
lengths (:mod:`domains.crystals.bondfit`): :func:`finish_cif`. ``Prompt``, ``make_prompt`` and ``prompts_for``
are importable from here too, as the generator takes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from domains.crystals import DEFAULT_CHECKPOINT, DOMAIN
from domains.crystals.canonical import atom_props_block
from domains.crystals.cif import SG_KEY
from domains.crystals.grammar import Vocab, cif_constraint
from domains.crystals.prompts import (
    MAX_ATOMS, SITE_ROW_TOKENS, Prompt, fewest_sites, fitting_spacegroups, make_prompt, prompts_for)
from domains.crystals.wyckoff import snap_to_wyckoff
from sciar.errors import SciarError

__all__ = ["CrystalGenerator", "Sample", "Prompt", "make_prompt", "prompts_for", "apportion", "finish_cif"]


@dataclass
class Sample:
    prompt: str
    text: str  # canonical CIF as generated (identity symmetry loop)
    logprob: float
    n_tokens: int
    complete: bool
    moved_sites: int = 0  # sites moved onto a Wyckoff position of their multiplicity (snap)
    source: str = "lm"  # lm, or the retrieved template (retrieval and hybrid strategies)
    cell_scale: float = 1.0  # factor the cell lengths were scaled by to plausible bond lengths (fit)
    nudged: bool = False  # atoms moved under the symmetry to plausible bond lengths (fit)
    weight: float = 1.0  # the model's probability this sample stands for, relative to a plain draw (spread)


class CrystalGenerator:
    """A loaded crystal checkpoint that samples CIFs for compositions."""

    def __init__(self, checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu", threads: int | None = 1):
        from sciar.checkpoint import load_language_model
        from sciar.paths import find_checkpoint
        from sciar.runtime import set_threads

        set_threads(threads)  # decoding a small model is overhead-bound: one thread is fastest on a shared CPU
        self.path = find_checkpoint(checkpoint)
        self.model, self.tok, self.ck = load_language_model(self.path, DOMAIN, device=device)
        self.vocab = Vocab(self.tok)
        self.block = self.model.cfg.block_size

    @classmethod
    def from_model(cls, model, tok):
        self = cls.__new__(cls)
        self.path, self.model, self.tok, self.ck = None, model.eval(), tok, None
        self.vocab = Vocab(tok)
        self.block = model.cfg.block_size
        return self

    def check_fits(self, p: Prompt):
        """SciarError (one line, with the limit) when even the shortest CIF for this composition cannot fit the
        context. A CIF's length grows with its symmetry-distinct sites (``SITE_ROW_TOKENS`` each), so how many
        atoms fit depends on the space group: the bound is the space group that holds the composition in the
        fewest sites (the stated one, or any that fits)."""
        from domains.crystals.grammar import header_tokens
        from domains.crystals.tokenizer import spacegroup_symbols

        if p.composition.num_atoms > MAX_ATOMS:
            raise SciarError(f"composition {p.formula} is too large: {p.composition.num_atoms:g} atoms in the cell, and "
                             f"the model writes at most {MAX_ATOMS} (give a smaller --z or the reduced formula)")
        counts = [int(round(c)) for c in p.composition.values()]
        groups = [p.spacegroup] if p.spacegroup else fitting_spacegroups(counts)
        sites, sg = min((fewest_sites(counts, spacegroup_symbols().index(g) + 1), g) for g in groups)
        fixed = len(self.tok.encode(p.text)) + 1 + header_tokens(self.vocab, p.composition) + 1
        if not p.spacegroup:
            fixed += len(self.tok.encode(atom_props_block(p.composition) + f"\n{SG_KEY} "))
        room = (self.block - fixed) // SITE_ROW_TOKENS
        if sites > room:
            raise SciarError(f"composition {p.formula} is too large for the model's context of {self.block} tokens: "
                             f"it holds at most {room} symmetry-distinct sites of this composition ({fixed} tokens + "
                             f"{SITE_ROW_TOKENS} per site), and {p.formula} needs at least {sites} (in {sg})"
                             + ("" if p.spacegroup else ", the space group that needs the fewest")
                             + "; give a smaller --z or the reduced formula")

    def fitting(self, prompts: list[Prompt]) -> list[Prompt]:
        """The prompts whose CIFs can fit the context; the first prompt's error when none can."""
        fitting, err = [], None
        for p in prompts:
            try:
                self.check_fits(p)
                fitting.append(p)
            except SciarError as e:
                err = err or e
        if not fitting:
            raise err
        return fitting

    def sample(self, prompts: list[Prompt], n: int = 1, temperature: float = 1.0, top_k: int | None = 10,
               seed: int | None = None, constrained: bool = True, max_new_tokens: int | None = None,
               use_cache: bool = True, snap: bool = True, fit: bool = True) -> list[Sample]:
        """``n`` samples for each prompt (in order: n for the first, then the next...).

        ``snap`` moves each site that the model placed off a position of its stated multiplicity
        onto the nearest such Wyckoff position (:func:`snap_to_wyckoff`); ``moved_sites`` counts them.
        ``fit`` then scales the cell, or failing that nudges the atoms under the space group's
        symmetry, so that every bond length is plausible (:func:`domains.crystals.bondfit.fit_bonds`);
        ``cell_scale`` and ``nudged`` record what it did.
        """
        for p in prompts:
            self.check_fits(p)
        rows = [p for p in prompts for _ in range(n)]
        return self._sample_rows(rows, seed, temperature, top_k, constrained, max_new_tokens, use_cache, snap, fit)

    def _sample_rows(self, rows: list[Prompt], seed, temperature, top_k, constrained, max_new_tokens, use_cache,
                     snap, fit) -> list[Sample]:
        """One sample per row, decoded as one batch (row i draws from its own seed, ``row_seed(seed, i)``)."""
        from sciar.decode.tokens import generate

        ids = [self.tok.encode(p.text) for p in rows]
        cons = [cif_constraint(self.vocab, p, self.block) for p in rows] if constrained else None
        gens = generate(self.model, ids, max_new_tokens=max_new_tokens or self.block, temperature=temperature,
                        top_k=top_k, stop=[[self.vocab.nl, self.vocab.nl]], constraints=cons, seed=seed,
                        use_cache=use_cache)
        out = []
        for p, g in zip(rows, gens):
            text = (p.text + self.tok.decode(g.tokens)).rstrip("\n") + "\n"
            text, moved, scale, nudged = finish_cif(text, snap, fit) if g.stopped else (text, 0, 1.0, False)
            out.append(Sample(p.text, text, g.logprob, len(g.tokens), g.stopped, moved, cell_scale=scale, nudged=nudged))
        return out

    def spacegroup_probs(self, p: Prompt, top_k: int | None = 10) -> dict[str, float]:
        """The model's distribution over the space-group token of prompt ``p`` (a prompt without a
        space group): the groups that can hold its atom counts, the ``top_k`` likeliest, renormalised."""
        import torch.nn.functional as F

        fits = fitting_spacegroups([int(round(c)) for c in p.composition.values()])
        ids = self.tok.encode(p.text + atom_props_block(p.composition) + f"\n{SG_KEY} ")
        with torch.no_grad():
            logits = self.model(torch.tensor([ids]))[0, -1].float()
        lp = F.log_softmax(logits[[self.vocab.sg[s] for s in fits]], -1)
        order = torch.argsort(lp, descending=True)[: top_k or len(fits)]
        w = lp[order].softmax(-1)
        return {fits[int(i)]: float(x) for i, x in zip(order, w)}

    def sample_spread(self, p: Prompt, n: int, spread: float = 2.0, seed: int | None = None, top_k: int | None = 10,
                      temperature: float = 1.0, constrained: bool = True, max_new_tokens: int | None = None,
                      use_cache: bool = True, snap: bool = True, fit: bool = True) -> list[Sample]:
        """``n`` samples of ``p`` spread over the model's likeliest space groups: group g gets draws in
        proportion to ``P(g) ** (1 / spread)`` (1: as the model draws them; larger: flatter, so the
        less likely groups are drawn too) and is then sampled on its own; each sample's ``weight`` is
        ``P(g) * n / draws(g)``, so summed weights still estimate how often the model itself would
        draw a structure. The draws are stratified: the same seed gives the same allocation."""
        import numpy as np

        kw = dict(temperature=temperature, top_k=top_k, constrained=constrained, max_new_tokens=max_new_tokens,
                  use_cache=use_cache, snap=snap, fit=fit)
        if p.spacegroup is not None or spread <= 0:
            return self.sample([p], n, seed=seed, **kw)
        self.check_fits(p)
        probs = self.spacegroup_probs(p, top_k)
        per = dict(zip(probs, apportion(np.array(list(probs.values())) ** (1.0 / spread), n)))
        rows = [make_prompt(p.composition, sg) for sg, k in per.items() for _ in range(k)]
        out = self._sample_rows(rows, seed, **kw)
        for s, q in zip(out, rows):
            s.prompt, s.weight = p.text, probs[q.spacegroup] * n / per[q.spacegroup]
        return out

    def header_logprobs(self, prompts: list[Prompt]) -> list[float]:
        """The model's log-probability of each prompt's ``data_<formula>`` line (its prior over Z)."""
        import torch.nn.functional as F

        out = []
        for p in prompts:
            ids = self.tok.encode(f"data_{p.formula}\n")
            x = torch.tensor([ids])
            with torch.no_grad():
                logits = self.model(x)
            lp = F.log_softmax(logits[0, :-1].float(), -1).gather(1, x[0, 1:, None])
            out.append(float(lp.sum()))
        return out

    def allocate(self, prompts: list[Prompt], n: int) -> list[int]:
        """Spread n samples over prompts (formula-unit counts) in proportion to the model's prior."""
        import numpy as np

        if len(prompts) == 1:
            return [n]
        lp = np.array(self.header_logprobs(prompts))
        return apportion(np.exp(lp - lp.max()), n)

    def sample_composition(self, composition: str, n: int = 20, spacegroup: str | None = None, z: int | None = None,
                           **kw) -> list[Sample]:
        """``n`` samples for a user's composition, spread over the formula-unit counts that fit
        in proportion to the model's probability of each ``data_`` header."""
        fitting = self.fitting(prompts_for(composition, spacegroup, z))
        per = self.allocate(fitting, n)
        return self.sample([p for p, k in zip(fitting, per) for _ in range(k)], 1, **kw)


def apportion(weights, n: int) -> list[int]:
    """Split n draws in proportion to ``weights`` (largest remainders; the counts sum to n)."""
    import numpy as np

    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    base = np.floor(w * n).astype(int)
    for i in np.argsort(-(w * n - base), kind="stable")[: n - base.sum()]:
        base[i] += 1
    return base.tolist()


def finish_cif(text: str, snap: bool = True, fit: bool = True) -> tuple[str, int, float, bool]:
    """What sampling does to a complete generated CIF: (text, moved sites, cell scale, atoms nudged)
    after :func:`snap_to_wyckoff` (with ``snap``) and then :func:`domains.crystals.bondfit.fit_bonds`
    (with ``fit``)."""
    from domains.crystals.bondfit import fit_bonds

    moved, scale, nudged = 0, 1.0, False
    if snap:
        text, moved = snap_to_wyckoff(text)
    if fit:
        text, scale, nudged = fit_bonds(text)
    return text, moved, scale, nudged

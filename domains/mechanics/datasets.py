"""Data for the mechanics tasks: oracle-generated designs, CPShub's simulated beam lattices, users' task tables.

**Oracle data.** Designs are drawn uniformly in each family's parameter box (the thickness t
log-uniformly, since moduli scale as t to t^3), rounded to the three significant digits a prompt
holds, and solved by the frame oracle. Each row carries the forward pair (``Stiffness`` prompt and
answer) and an inverse pair (``Design`` asking for the row's E1 and E2, every second row also for
rho at most 1.1 times its own). The held-out set is fixed by the design itself, not by the seed:
a design is held out when the sha256 of its canonical ``Stiffness`` prompt ends in a digit below
``HELD_OUT_SHARE``'s tenths (10%), so no seed or dataset size ever trains on it.

**CPShub** (``cpshub_sim_data.tar.xz``, CC BY 4.0): 107 parametric 3D beam lattices, each under 16
load cases, stretch lambda from 0 to +-0.3. A curve is reported as the first Piola-Kirchhoff stress
at ``|lambda|`` in ``CURVE_STRETCHES`` (negative for compression): P12 for simple shear (F12 is the
driven component), P11 for every other case (F11 is driven; for uniaxial-shear F11 and F12 both are,
P11 is kept). Units: the lattice material's E = 1.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sciar.errors import DataError, SciarError
from sciar.tables import read_table

from domains.mechanics.grammar import (CURVE_POINTS, LOAD_CASES, THICKNESS_PARAMS, Answer, Prompt, format_answer,
                                       format_prompt, mechanics_tokenizer, round3, stress_component)
from domains.mechanics.lattices import family_params
from domains.mechanics.properties import PROPERTIES, simulate

HELD_OUT_SHARE = 0.1
CURVE_STRETCHES = (0.06, 0.12, 0.18, 0.24, 0.30)
assert len(CURVE_STRETCHES) == CURVE_POINTS
RHO_BOUND_FACTOR = 1.1


def sample_designs(family: str, n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` designs of a family, uniform in its box (t log-uniform), rounded as a prompt writes them."""
    spec = family_params(family)
    out = []
    while len(out) < n:
        p = {}
        for q in spec:
            if q.name == "t":
                v = 10 ** rng.uniform(math.log10(q.lo), math.log10(q.hi))
            else:
                v = rng.uniform(q.lo, q.hi)
            p[q.name] = min(max(round3(v), q.lo), q.hi)
        if family == "reentrant" and p["h"] <= 2 * abs(math.sin(math.radians(p["theta"]))) + p["t"]:
            continue  # walls would touch: not a design of this family
        out.append(p)
    return out


def stiffness_prompt(family: str, params: dict) -> str:
    return format_prompt(Prompt("Stiffness", family, [(q.name, "=", params[q.name]) for q in family_params(family)]))


def is_held_out(family: str, params: dict) -> bool:
    """Whether a design belongs to the fixed held-out set (a hash of its canonical prompt)."""
    h = int(hashlib.sha256(stiffness_prompt(family, params).encode()).hexdigest(), 16)
    return (h % 1000) < HELD_OUT_SHARE * 1000


def design_request(family: str, props: dict, with_bound: bool) -> Prompt:
    """The inverse request a design answers: its E1 and E2, and optionally rho at most 1.1 times its own."""
    items = [("E1", "=", round3(props["E1"])), ("E2", "=", round3(props["E2"]))]
    if with_bound:
        items.append(("rho", "<=", round3(props["rho"] * RHO_BOUND_FACTOR)))
    return Prompt("Design", family, items)


def oracle_rows(family: str, params: dict, with_bound: bool) -> dict:
    """One design solved: its parameters, properties, split and both task pairs."""
    props = simulate(family, params).to_dict()
    C = props.pop("C")
    spec = family_params(family)
    return {
        "family": family, **{q.name: params[q.name] for q in spec}, **props,
        **{f"C{i}{j}": C[i][j] for i in range(3) for j in range(i, 3)},
        "split": "test" if is_held_out(family, params) else "train",
        "prompt": stiffness_prompt(family, params),
        "answer": format_answer(Answer([(k, props[k]) for k in PROPERTIES])),
        "design_prompt": format_prompt(design_request(family, props, with_bound)),
        "design_answer": format_answer(Answer([(q.name, params[q.name]) for q in spec])),
    }


def oracle_dataset(families: list[str], n: int, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """``n`` designs per family, seeded; a design the oracle cannot solve keeps its row with an ``error``."""
    for f in families:
        family_params(f)
    rng = np.random.default_rng(seed)
    rows = []
    with tqdm(total=n * len(families), desc="oracle designs", unit="design", disable=not progress) as bar:
        for family in families:
            for i, p in enumerate(sample_designs(family, n, rng)):
                try:
                    rows.append({**oracle_rows(family, p, with_bound=bool(i % 2)), "error": None})
                except SciarError as e:
                    rows.append({"family": family, **p, "error": str(e)})
                bar.update(1)
    return pd.DataFrame(rows)


def read_oracle_tables(paths, families: list[str] | None = None) -> pd.DataFrame:
    """The designs of oracle datasets written by ``dataset`` (one table, rows of every path), optionally only
    those of ``families``; a table that is not an oracle dataset is a one-line :class:`DataError`."""
    frames = []
    for path in paths:
        df = read_table(path, text_columns=("prompt", "answer", "design_prompt", "design_answer"))
        missing = [c for c in ("family", "split", "prompt", "design_prompt", "error") if c not in df.columns]
        if missing:
            raise DataError(f"{path} is not an oracle dataset (no {', '.join(missing)} column; "
                            "write one with `sciar mechanics dataset`)")
        frames.append(df)
    data = pd.concat(frames, ignore_index=True)
    if families is not None:
        data = data[data["family"].isin(families)].reset_index(drop=True)
    if data.empty:
        which = f" of {', '.join(families)}" if families else ""
        raise DataError(f"no designs{which} in {', '.join(map(str, paths))}")
    return data


# ---------------------------------------------------------------- CPShub


def read_cpshub(path: str | Path, progress: bool = False) -> pd.DataFrame:
    """One row per (lattice, load case): ``run``, ``t1..t3``, ``case``, ``component``, ``s1..s5``.

    ``path``: the tar.xz as shipped, or its extracted folder.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"CPShub data {path} not found (expected cpshub_sim_data.tar.xz or its folder)")
    files: dict[str, bytes] = {}
    meta = None
    key = "parametric_beam_lattice_metamaterials/data/"
    if path.is_dir():
        for f in path.rglob("*"):
            rel = f.as_posix()
            if key in rel and f.is_file():
                files[rel.split(key, 1)[1]] = f.read_bytes()
    else:
        try:
            with tarfile.open(path, "r:*") as tf:
                for m in tqdm(tf, desc="reading CPShub", unit="file", disable=not progress):
                    if m.isfile() and key in m.name:
                        files[m.name.split(key, 1)[1]] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read CPShub archive {path}: {e}") from None
    if "meta_all.json" not in files:
        raise DataError(f"{path} holds no parametric_beam_lattice_metamaterials/data/meta_all.json")
    meta = json.loads(files.pop("meta_all.json"))
    rows = []
    for run, m in sorted(meta.items()):
        t = [float(x) for x in m["t"]]
        for i, case in enumerate(LOAD_CASES):
            name = f"{run}/{i // 2}{case}.dat"
            if name not in files:
                raise DataError(f"CPShub run {run} has no file for load case {case} ({name})")
            rows.append({"run": run, **dict(zip(THICKNESS_PARAMS, t)), "case": case,
                         "component": stress_component(case), **_curve_at_stretches(files[name], case, name)})
    return pd.DataFrame(rows)


def _curve_at_stretches(raw: bytes, case: str, name: str) -> dict:
    d = pd.read_csv(io.BytesIO(raw), sep="\t")
    comp = stress_component(case)
    if "lambda" not in d.columns or comp not in d.columns:
        raise DataError(f"{name} lacks the lambda or {comp} column")
    lam, s = d["lambda"].to_numpy(float), d[comp].to_numpy(float)
    order = np.argsort(np.abs(lam))
    if np.abs(lam).max() < CURVE_STRETCHES[-1] - 1e-9:
        raise DataError(f"{name} stops at |lambda| = {np.abs(lam).max():g}, before {CURVE_STRETCHES[-1]}")
    vals = np.interp(CURVE_STRETCHES, np.abs(lam)[order], s[order])
    return {f"s{k + 1}": float(v) for k, v in enumerate(vals)}


def cpshub_tasks(table: pd.DataFrame) -> pd.DataFrame:
    """Prompt/answer pairs: a StressCurve per (lattice, load case) and a Thickness per lattice."""
    rows = []
    for run, g in table.groupby("run", sort=True):
        t = g.iloc[0][list(THICKNESS_PARAMS)].astype(float).tolist()
        curves = {}
        for _, r in g.iterrows():
            curve = tuple(round3(r[f"s{k + 1}"]) for k in range(CURVE_POINTS))
            curves[r["case"]] = curve
            prompt = Prompt("StressCurve", "cpshub", [*zip(THICKNESS_PARAMS, "===", map(round3, t)), ("case", "=", r["case"])])
            rows.append({"run": run, "task": "StressCurve", "prompt": format_prompt(prompt),
                         "answer": format_answer(Answer([(r["component"], curve)]))})
        prompt = Prompt("Thickness", "cpshub", [(c, "=", curves[c]) for c in LOAD_CASES])
        rows.append({"run": run, "task": "Thickness", "prompt": format_prompt(prompt),
                     "answer": format_answer(Answer(list(zip(THICKNESS_PARAMS, map(round3, t)))))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- users' tasks


def read_task_table(path: str | Path) -> pd.DataFrame:
    """A user's own tasks: a CSV/parquet with ``prompt`` and ``answer`` text columns, every row in the vocabulary."""
    df = read_table(path, text_columns=("prompt", "answer"))
    missing = [c for c in ("prompt", "answer") if c not in df.columns]
    if missing:
        raise DataError(f"{path} needs prompt and answer columns (missing {', '.join(missing)})")
    tok = mechanics_tokenizer()
    for i, (p, a) in enumerate(zip(df["prompt"], df["answer"])):
        for col, v in (("prompt", p), ("answer", a)):
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{path} row {i + 1}: empty {col}")
            try:
                tok.encode(v)
            except DataError as e:
                raise DataError(f"{path} row {i + 1}, {col}: {e}") from None
    return df[["prompt", "answer"]].reset_index(drop=True)

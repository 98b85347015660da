"""Baselines the model must beat: forward regressors (kNN, gradient-boosted trees, MLP) and inverse searches.

Forward regressors see log10 of the thickness and predict log10 of the moduli (and the Poisson's
ratios as they are); hyperparameters are chosen by 5-fold cross-validation on the training rows
(grouped by lattice on CPShub). Inverse baselines answer a ``Design`` request with up to ``n``
proposals, each checked by the oracle: kNN lookup among training designs (their stored oracle
answers, no new oracle call), random search in the family's box, and a least-squares optimiser
of the log moduli started from the nearest neighbour; the last two spend at most ``n`` oracle calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from domains.mechanics.datasets import sample_designs
from domains.mechanics.grammar import LOAD_CASES, THICKNESS_PARAMS, Prompt
from domains.mechanics.lattices import FAMILIES, family_params
from domains.mechanics.metrics import design_meets, verify_design
from domains.mechanics.properties import MODULI

PARAM_COLUMNS = ("theta", "h", "gamma", "t")
NU = ("nu12", "nu21")
CPS_MIN_T = 1e-3  # log of a thickness: zeros (absent beams) are clamped here and flagged by a 0/1 input


# ---------------------------------------------------------------- forward


def oracle_features(df: pd.DataFrame) -> np.ndarray:
    """Family one-hot, theta, h, gamma (0 where a family has none) and log10 t."""
    cols = [(df["family"] == f).astype(float).to_numpy() for f in FAMILIES]
    for c in PARAM_COLUMNS:
        v = df[c].fillna(0).to_numpy(float) if c in df else np.zeros(len(df))
        cols.append(np.log10(v) if c == "t" else v)
    return np.stack(cols, axis=1)


def oracle_targets(df: pd.DataFrame) -> np.ndarray:
    return np.column_stack([np.log10(df[list(MODULI)].to_numpy(float)), df[list(NU)].to_numpy(float)])


def cpshub_features(table: pd.DataFrame) -> np.ndarray:
    t = table[list(THICKNESS_PARAMS)].to_numpy(float)
    cases = np.stack([(table["case"] == c).astype(float).to_numpy() for c in LOAD_CASES], axis=1)
    return np.column_stack([np.log10(np.maximum(t, CPS_MIN_T)), (t > 0).astype(float), cases])


def case_sign(table: pd.DataFrame) -> np.ndarray:
    """The stress sign of each row's load case (compression negative), which log targets drop."""
    return np.where(table["case"].str.endswith("compression"), -1.0, 1.0)


@dataclass
class Grid:
    """Hyperparameter grids; ``quick`` trims them (and CV to 3 folds) for a short run."""

    quick: bool = False

    @property
    def folds(self) -> int:
        return 3 if self.quick else 5

    def models(self, seed: int = 0) -> dict:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.multioutput import MultiOutputRegressor
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.compose import TransformedTargetRegressor
        from sklearn.preprocessing import StandardScaler

        q = self.quick
        knn = (make_pipeline(StandardScaler(), KNeighborsRegressor()),
               {"kneighborsregressor__n_neighbors": [1, 3, 8] if q else [1, 2, 4, 8, 16],
                "kneighborsregressor__weights": ["distance"] if q else ["uniform", "distance"]})
        gbt = (MultiOutputRegressor(HistGradientBoostingRegressor(max_iter=150 if q else 800, random_state=seed)),
               {"estimator__learning_rate": [0.1] if q else [0.03, 0.1],
                "estimator__max_leaf_nodes": [15, 63] if q else [15, 31, 63]})
        mlp = (TransformedTargetRegressor(
                   make_pipeline(StandardScaler(), MLPRegressor(max_iter=200 if q else 2000, early_stopping=True,
                                                                n_iter_no_change=30, random_state=seed)),
                   transformer=StandardScaler()),
               {"regressor__mlpregressor__hidden_layer_sizes": [(64, 64)] if q else [(64, 64), (128, 128), (128, 128, 128)],
                "regressor__mlpregressor__alpha": [1e-4, 1e-2] if q else [1e-5, 1e-4, 1e-3]})
        return {"knn": knn, "gbt": gbt, "mlp": mlp}


def fit_tuned(model, grid: dict, x, y, groups=None, folds: int = 5):
    """Grid search by k-fold CV (by groups when given) on mean squared error of the (log) targets."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, GroupKFold, KFold

    cv = GroupKFold(folds) if groups is not None else KFold(folds, shuffle=True, random_state=0)
    search = GridSearchCV(model, grid, cv=cv, scoring="neg_mean_squared_error", n_jobs=1)
    with warnings.catch_warnings():  # the MLP's iteration cap is part of its budget, not a fault
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x, y, groups=groups)
    return search


def forward_oracle_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """``mare`` and ``r2_log`` of the moduli, ``nu_abs_err`` of the Poisson's ratios (log-target layout)."""
    from domains.mechanics.metrics import mare, r2_log

    e_true, e_pred = 10 ** y_true[:, :3], 10 ** y_pred[:, :3]
    return {"mare": mare(e_true, e_pred), "r2_log": r2_log(e_true, e_pred),
            "nu_abs_err": float(np.mean(np.abs(y_true[:, 3:] - y_pred[:, 3:])))}


def forward_oracle_baselines(train: pd.DataFrame, test: pd.DataFrame, grid: Grid, progress=None) -> dict:
    xtr, ytr, xte, yte = oracle_features(train), oracle_targets(train), oracle_features(test), oracle_targets(test)
    out = {}
    for name, (model, params) in grid.models().items():
        search = fit_tuned(model, params, xtr, ytr, folds=grid.folds)
        out[name] = {**forward_oracle_scores(yte, search.predict(xte)), "params": _plain(search.best_params_)}
        if progress:
            progress(name, out[name])
    return out


def forward_cpshub_baselines(table: pd.DataFrame, grid: Grid, folds: int = 5, progress=None) -> dict:
    """5-fold CV over lattices (never rows); inside each training fold, hyperparameters by CV over lattices."""
    from sklearn.model_selection import GroupKFold

    from domains.mechanics.metrics import mare, r2_log

    s = table[[f"s{k}" for k in range(1, 6)]].to_numpy(float)
    x, y, sign, groups = cpshub_features(table), np.log10(np.abs(s)), case_sign(table), table["run"].to_numpy()
    preds = {name: np.zeros_like(s) for name in grid.models()}
    chosen = {name: [] for name in preds}
    for tr, te in GroupKFold(folds).split(x, y, groups):
        for name, (model, params) in grid.models().items():
            search = fit_tuned(model, params, x[tr], y[tr], groups=groups[tr], folds=grid.folds)
            preds[name][te] = sign[te, None] * 10 ** search.predict(x[te])
            chosen[name].append(_plain(search.best_params_))
    out = {}
    for name, p in preds.items():
        out[name] = {"mare": mare(s, p), "r2_log": r2_log(s, p), "params": chosen[name]}
        if progress:
            progress(name, out[name])
    return out


def inverse_cpshub_baselines(table: pd.DataFrame, folds: int = 5) -> dict:
    """All 16 curves of a lattice (log |stress|) to its three thicknesses, 5-fold over lattices: kNN
    (k by inner CV) and the training mean; ``param_error`` is the mean absolute thickness error."""
    from sklearn.model_selection import KFold
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    wide = table.pivot(index="run", columns="case", values=[f"s{k}" for k in range(1, 6)])
    x = np.log10(np.abs(wide.to_numpy(float)))
    t = table.groupby("run")[list(THICKNESS_PARAMS)].first().loc[wide.index].to_numpy(float)
    err = {"knn": [], "mean": []}
    for tr, te in KFold(folds, shuffle=True, random_state=0).split(x):
        search = fit_tuned(make_pipeline(StandardScaler(), KNeighborsRegressor()),
                           {"kneighborsregressor__n_neighbors": [1, 2, 4, 8]}, x[tr], t[tr], folds=folds)
        err["knn"].append(np.abs(search.predict(x[te]) - t[te]))
        err["mean"].append(np.abs(t[tr].mean(axis=0) - t[te]))
    return {k: {"param_error": float(np.concatenate(v).mean())} for k, v in err.items()}


def _plain(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ---------------------------------------------------------------- inverse


class OracleBudget:
    """Counts oracle calls for one request and stops at the budget; remembers whether any call succeeded."""

    class Spent(Exception):
        pass

    def __init__(self, request: Prompt, budget: int):
        self.request, self.budget, self.calls, self.success = request, budget, 0, False

    def __call__(self, params: dict) -> dict | None:
        if self.calls >= self.budget:
            raise self.Spent
        self.calls += 1
        ok, props = verify_design(self.request, params)
        self.success |= ok
        return props


def _request_vector(request: Prompt) -> tuple[np.ndarray, float | None]:
    v = request.values()
    bound = next((x for n, op, x in request.items if n == "rho" and op == "<="), None)
    return np.log10([v["E1"], v["E2"]]), bound


def knn_proposals(request: Prompt, train: pd.DataFrame, n: int) -> pd.DataFrame:
    """The n training designs of the family (within the density bound) nearest in log E1, log E2."""
    target, bound = _request_vector(request)
    pool = train[train["family"] == request.subject]
    if bound is not None:
        pool = pool[pool["rho"] <= bound]
    d = np.linalg.norm(np.log10(pool[["E1", "E2"]].to_numpy(float)) - target, axis=1)
    return pool.iloc[np.argsort(d)[:n]]


def knn_success(request: Prompt, train: pd.DataFrame, n: int) -> bool:
    """Success of kNN lookup, judged on the training designs' stored oracle answers (no new call)."""
    return any(design_meets(request, r) for r in knn_proposals(request, train, n).to_dict("records"))


def random_search(request: Prompt, n: int, rng: np.random.Generator) -> OracleBudget:
    oracle = OracleBudget(request, n)
    for p in sample_designs(request.subject, n, rng):
        oracle(p)
        if oracle.success:
            break
    return oracle


def least_squares_search(request: Prompt, train: pd.DataFrame, n: int) -> OracleBudget:
    """scipy's least_squares on log moduli (and a density-bound penalty), parameters scaled to [0, 1]
    (t in log), started from the nearest training design; every evaluation, finite differences
    included, is an oracle call within the budget."""
    from scipy.optimize import least_squares

    spec = family_params(request.subject)
    lo = np.array([math.log10(q.lo) if q.name == "t" else q.lo for q in spec])
    hi = np.array([math.log10(q.hi) if q.name == "t" else q.hi for q in spec])
    target, bound = _request_vector(request)
    oracle = OracleBudget(request, n)

    def params_of(z):
        v = lo + np.clip(z, 0, 1) * (hi - lo)
        return {q.name: float(10 ** x if q.name == "t" else x) for q, x in zip(spec, v)}

    def residual(z):
        props = oracle(params_of(z))
        if props is None:  # outside the family (walls touching): a wall in the objective
            return np.full(3, 10.0)
        r = np.log10([props["E1"], props["E2"]]) - target
        pen = max(0.0, math.log10(props["rho"] / bound)) if bound is not None else 0.0
        if oracle.success:
            raise OracleBudget.Spent
        return np.append(r, 10 * pen)

    start = knn_proposals(request, train, 1)
    if len(start):
        row = start.iloc[0]
        x0 = np.array([math.log10(row[q.name]) if q.name == "t" else row[q.name] for q in spec])
    else:
        x0 = (lo + hi) / 2
    z0 = np.clip((x0 - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    try:
        least_squares(residual, z0, bounds=(0, 1), diff_step=1e-3, max_nfev=n)
    except OracleBudget.Spent:
        pass
    return oracle


def inverse_oracle_baselines(requests: list[Prompt], train: pd.DataFrame, n: int = 20, seed: int = 0,
                             progress: bool = True) -> dict:
    """Shares of requests answered (one of the first n proposals verified) and mean oracle calls per method."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    hits = {"knn_n1": 0, "knn_n20": 0, "random_n20": 0, "optimiser_n20": 0}
    calls = {"knn_n1": 0, "knn_n20": 0, "random_n20": 0, "optimiser_n20": 0}
    for req in tqdm(requests, desc="inverse baselines", unit="request", disable=not progress):
        hits["knn_n1"] += knn_success(req, train, 1)
        hits["knn_n20"] += knn_success(req, train, n)
        r = random_search(req, n, rng)
        hits["random_n20"] += r.success
        calls["random_n20"] += r.calls
        o = least_squares_search(req, train, n)
        hits["optimiser_n20"] += o.success
        calls["optimiser_n20"] += o.calls
    m = max(len(requests), 1)
    return {**{k: v / m for k, v in hits.items()}, "oracle_calls": {k: v / m for k, v in calls.items()},
            "requests": len(requests)}

"""The hair benchmark: CHARM's metrics for each method against held-out procedural targets and the real hairstyle.

Every method sees the same condition per target (:func:`domains.hair.baselines.condition_points`). The procedural
targets are the held-out random draws (``test``) and the held-out region (``heldout_region``); the real target is the
USC-HairSalon hairstyle's cards (:func:`domains.hair.strands.strands_to_cards`), scored as the mean over
``resamplings`` conditions. Retrieval is also scored against training sets of growing size. ``model`` (a function of
the condition cloud and a seed returning cards, e.g. a trained checkpoint's sampler) fills the ``model`` entries;
without one they are ``null``.
"""

from __future__ import annotations

import time

import numpy as np

from domains.hair.baselines import Retrieval, condition_points
from domains.hair.metrics import compare
from domains.hair.strands import points_to_cards
from domains.hair.tokens import quantised
from domains.hair.validity import check_cards
from sciar.errors import SciarError

METHODS = ("retrieval", "geometric_fit", "quantised")
METRICS = ("chamfer", "emd", "hausdorff", "iou")


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS} | {"n": len(rows)} if rows else None


def score_targets(targets: list[list[np.ndarray]], predict: dict, head, seeds) -> dict:
    """Per method of ``predict`` (name -> ``f(target, condition, seed) -> cards``): the metric rows, the inside-head
    shares and the seconds spent, over every (target, seed)."""
    from tqdm import tqdm

    out = {m: {"rows": [], "inside": [], "seconds": 0.0} for m in predict}
    jobs = [(t, s) for t in targets for s in seeds]
    for target, seed in tqdm(jobs, desc="benchmark"):
        cond = condition_points(target, head, seed)
        for m, f in predict.items():
            t0 = time.perf_counter()
            pred = f(target, cond, seed)
            out[m]["seconds"] += time.perf_counter() - t0
            out[m]["rows"].append(compare(pred, target, head, seed))
            out[m]["inside"].append(check_cards(pred, head)["inside_share"])
    return out


def representation_errors(hairstyles: list[list[np.ndarray]], head) -> dict:
    """Quantisation error (tokens) and mesh round-trip error (OBJ out and back), millimetres."""
    import tempfile
    from pathlib import Path

    from domains.hair.mesh import export_mesh, from_mesh, load_mesh, to_mesh

    point, size, mesh_err = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for cards in hairstyles:
            a, q = np.concatenate(cards), np.concatenate(quantised(cards, head))
            point.append(np.linalg.norm(a[:, :3] - q[:, :3], axis=1))
            size.append(np.abs(a[:, 3:] - q[:, 3:]))
            export_mesh(to_mesh(cards, head), Path(tmp) / "m.obj")
            mesh_err.append(np.abs(np.concatenate(from_mesh(load_mesh(Path(tmp) / "m.obj"))) - a).max())
    point, size = np.concatenate(point) * 1000, np.concatenate(size) * 1000
    return {"quantisation_point_max_mm": float(point.max()), "quantisation_point_mean_mm": float(point.mean()),
            "quantisation_width_max_mm": float(size[:, 0].max()), "quantisation_thickness_max_mm": float(size[:, 1].max()),
            "mesh_round_trip_max_mm": float(max(mesh_err) * 1000), "n": len(hairstyles)}


def run_benchmark(train: list[list[np.ndarray]], procedural: dict[str, list[list[np.ndarray]]], real: list[np.ndarray] | None,
                  head, train_sizes=(), resamplings: int = 10, seed: int = 0, model=None, baselines: bool = True) -> dict:
    """The JSON the ``benchmark`` command writes (see the module docstring). ``procedural``: split name -> targets;
    ``model(condition_points, seed) -> cards`` or ``None``; ``baselines``: score retrieval, the fit and the quantised
    floor (with retrieval's scaling and the representation errors). A method not scored has ``null`` entries."""
    predict = {}
    if model is not None:
        predict["model"] = lambda target, cond, s: model(cond, s)
    if baselines:
        retrieval = Retrieval(train, head, seed)
        predict |= {"retrieval": lambda target, cond, s: retrieval(cond),
                    "geometric_fit": lambda target, cond, s: points_to_cards(cond, head),
                    "quantised": lambda target, cond, s: quantised(target, head)}
    if not predict:
        raise SciarError("nothing to score: neither the model nor the baselines")
    parts = {name: score_targets(ts, predict, head, [seed]) for name, ts in procedural.items() if ts}
    if real is not None:
        parts["real"] = score_targets([real], predict, head, range(seed, seed + resamplings))
    pooled = {m: {"rows": [r for p in parts if p != "real" for r in parts[p][m]["rows"]],
                  "inside": [r for p in parts if p != "real" for r in parts[p][m]["inside"]]} for m in predict}
    every = list(parts.values())

    def per_method(f):
        return {m: f(m) if m in predict else None for m in ("model", *METHODS)}

    result = {
        "procedural": per_method(lambda m: _mean(pooled[m]["rows"])),
        "procedural_by_split": {p: per_method(lambda m: _mean(parts[p][m]["rows"])) for p in parts if p != "real"},
        "real": per_method(lambda m: _mean(parts["real"][m]["rows"])) if "real" in parts else None,
        "inside_head_share": per_method(lambda m: float(np.mean([x for p in every for x in p[m]["inside"]]))),
        "seconds_per_hairstyle": per_method(lambda m: sum(p[m]["seconds"] for p in every) / max(1, sum(len(p[m]["rows"]) for p in every))),
        "n_train": len(train),
    }
    if not baselines:
        return result
    targets = [t for ts in procedural.values() for t in ts]
    by_size = {}
    for n in sorted(set(int(n) for n in train_sizes if 0 < n < len(train))):
        r = Retrieval(train[:n], head, seed)
        rows = [compare(r(condition_points(t, head, seed)), t, head, seed) for t in targets]
        by_size[str(n)] = _mean(rows)
    by_size[str(len(train))] = result["procedural"]["retrieval"]
    result["retrieval_by_train_size"] = by_size
    result["representation"] = {"procedural": representation_errors(targets, head)}
    if real is not None:
        result["representation"]["real"] = representation_errors([real], head)
    return result

"""The hair benchmark: CHARM's metrics for each method against held-out procedural targets and the real hairstyle.

Every method sees the same condition per target (:func:`domains.hair.baselines.condition_points`). The procedural
targets are the held-out random draws (``test``) and the held-out region (``heldout_region``); the real target is the
USC-HairSalon hairstyle's cards (:func:`domains.hair.strands.strands_to_cards`), scored as the mean over
``resamplings`` conditions. Retrieval is also scored against training sets of growing size. The ``model`` entries
stay ``null`` until a model exists.
"""

from __future__ import annotations

import time

import numpy as np

from domains.hair.baselines import Retrieval, condition_points
from domains.hair.metrics import compare
from domains.hair.strands import points_to_cards
from domains.hair.tokens import quantised
from domains.hair.validity import check_cards

METHODS = ("retrieval", "geometric_fit", "quantised")
METRICS = ("chamfer", "emd", "hausdorff", "iou")


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS} | {"n": len(rows)} if rows else None


def score_targets(targets: list[list[np.ndarray]], retrieval: Retrieval, head, seeds) -> dict:
    """Per method: the metric rows, the inside-head shares and the seconds spent, over every (target, seed)."""
    from tqdm import tqdm

    out = {m: {"rows": [], "inside": [], "seconds": 0.0} for m in METHODS}
    jobs = [(t, s) for t in targets for s in seeds]
    for target, seed in tqdm(jobs, desc="benchmark"):
        cond = condition_points(target, head, seed)
        for m in METHODS:
            t0 = time.perf_counter()
            pred = {"retrieval": lambda: retrieval(cond), "geometric_fit": lambda: points_to_cards(cond, head),
                    "quantised": lambda: quantised(target, head)}[m]()
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
                  head, train_sizes=(), resamplings: int = 10, seed: int = 0) -> dict:
    """The JSON the ``benchmark`` command writes (see the module docstring). ``procedural``: split name -> targets."""
    retrieval = Retrieval(train, head, seed)
    parts = {name: score_targets(ts, retrieval, head, [seed]) for name, ts in procedural.items() if ts}
    if real is not None:
        parts["real"] = score_targets([real], retrieval, head, range(seed, seed + resamplings))
    pooled = {m: {"rows": [r for p in parts if p != "real" for r in parts[p][m]["rows"]],
                  "inside": [r for p in parts if p != "real" for r in parts[p][m]["inside"]],
                  "seconds": sum(parts[p][m]["seconds"] for p in parts if p != "real")} for m in METHODS}
    every = [parts[p] for p in parts]
    result = {
        "procedural": {"model": None, **{m: _mean(pooled[m]["rows"]) for m in METHODS}},
        "procedural_by_split": {p: {m: _mean(parts[p][m]["rows"]) for m in METHODS} for p in parts if p != "real"},
        "real": {"model": None, **{m: _mean(parts["real"][m]["rows"]) for m in METHODS}} if "real" in parts else None,
        "inside_head_share": {"model": None, **{m: float(np.mean([x for p in every for x in p[m]["inside"]])) for m in METHODS}},
        "seconds_per_hairstyle": {"model": None, **{m: sum(p[m]["seconds"] for p in every) / max(1, sum(len(p[m]["rows"]) for p in every))
                                                    for m in METHODS}},
        "n_train": len(train),
    }
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

"""Validity checks for any set of cards (generated, fitted or read from a file).

- ``finite``: no NaN or infinite field;
- ``short_cards``: cards with fewer than two control points (no mesh can be made of them);
- ``out_of_range``: control-point fields outside the token bins (they would be clipped);
- ``inside_share``: the share of control points inside the head (generalised winding number above 0.5);
- ``root_to_scalp``: each card's root distance to the head surface (median and largest, mm).

A hairstyle is ``valid`` when every field is finite, no card is short, nothing is out of range, at most
``MAX_INSIDE_SHARE`` of its points lie inside the head and every root lies within ``MAX_ROOT_MM`` of the scalp.
"""

from __future__ import annotations

import numpy as np

from domains.hair.tokens import out_of_range

MAX_INSIDE_SHARE = 0.01
MAX_ROOT_MM = 30.0  # a root farther out floats in the air (ponytail ties are about 3 cm out, their roots are not)


def check_cards(cards: list[np.ndarray], head) -> dict:
    """The checks above as one flat dict (numbers and booleans; JSON-ready)."""
    cards = [np.asarray(c, dtype=np.float64).reshape(-1, 5) if np.size(c) else np.zeros((0, 5)) for c in cards]
    finite = all(np.isfinite(c).all() for c in cards)
    short = sum(len(c) < 2 for c in cards)
    usable = [c for c in cards if len(c) and np.isfinite(c).all()]
    pts = np.concatenate([c[:, :3] for c in usable]) if usable else np.zeros((0, 3))
    inside = float(head.inside(pts).mean()) if len(pts) else 0.0
    roots = np.stack([c[0, :3] for c in usable]) if usable else np.zeros((0, 3))
    root_mm = head.closest(roots)[0] * 1000 if len(roots) else np.zeros(0)
    oor = out_of_range(usable, head)
    out = {
        "n_cards": len(cards),
        "n_points": int(sum(len(c) for c in cards)),
        "finite": bool(finite),
        "short_cards": int(short),
        "out_of_range": int(sum(oor.values())),
        **{f"out_of_range_{f}": n for f, n in oor.items()},
        "inside_share": inside,
        "root_to_scalp_median_mm": float(np.median(root_mm)) if len(root_mm) else float("nan"),
        "root_to_scalp_max_mm": float(root_mm.max()) if len(root_mm) else float("nan"),
    }
    out["valid"] = bool(cards and finite and not short and not out["out_of_range"] and inside <= MAX_INSIDE_SHARE
                        and len(root_mm) and root_mm.max() <= MAX_ROOT_MM)
    return out

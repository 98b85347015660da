"""Pictures of hairstyles on the head: front, side and back views (orthographic, painter's algorithm, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# view name -> (screen-right axis, up axis, toward-the-viewer axis) as signed unit vectors
VIEWS = {
    "front": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])),
    "side": (np.array([0, 0, 1.0]), np.array([0, 1.0, 0]), np.array([-1.0, 0, 0])),
    "back": (np.array([-1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),
}
HEAD_RGB = np.array([0.93, 0.82, 0.74])


PIXELS = 220  # per view, on the longer side


def _surface_points(v, f, rgb, n_points, rng):
    """Area-weighted random surface points with their face normals and colours."""
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(n, axis=1)
    n /= area[:, None] + 1e-12
    # a degenerate card set (every point in one place: an undertrained model's) has no area: draw faces uniformly
    face = rng.choice(len(f), n_points, p=area / area.sum() if area.sum() > 0 else None)
    a, b = rng.random((2, n_points))
    flip = a + b > 1
    a, b = np.where(flip, 1 - a, a), np.where(flip, 1 - b, b)
    t = tri[face]
    p = t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])
    return p, n[face], (rgb[face] if rgb.ndim == 2 else np.broadcast_to(rgb, (n_points, 3)))


def draw(ax, cards: list[np.ndarray], head, view: str, title: str = "", seed: int = 0):
    """Splat dense surface samples of the head and the cards into a z-buffered image, shaded by the view angle."""
    from domains.hair.mesh import to_mesh

    rng = np.random.default_rng(seed)
    right, up, toward = VIEWS[view]
    parts = [_surface_points(head.vertices, head.faces, HEAD_RGB, 150_000, rng)]
    if cards:
        m = to_mesh(cards, head)
        card_of_face = np.repeat(np.arange(len(cards)), [8 * (len(c) - 1) + 4 for c in cards])
        hue = 2 * np.pi * np.linspace(0, 1, len(cards), endpoint=False)[card_of_face]
        rgb = np.stack([0.45 + 0.2 * np.sin(hue), 0.3 + 0.12 * np.cos(hue), 0.62 + 0.25 * np.sin(hue + 1)], 1)
        parts.append(_surface_points(np.asarray(m.vertices), np.asarray(m.faces), rgb, 250_000, rng))
    p, n, rgb = (np.concatenate(x) for x in zip(*parts))
    x, y, depth = p @ right, p @ up, p @ toward
    span = max(np.ptp(x), np.ptp(y)) + 0.02
    px = span / PIXELS
    i = ((y.max() + 0.01 - y) / px).astype(int)
    j = ((x - x.min() + 0.01) / px).astype(int)
    h, w = i.max() + 1, j.max() + 1
    order = np.argsort(depth)  # far to near: the nearest sample, written last, wins each pixel
    img = np.ones((h, w, 3))
    shade = (0.35 + 0.65 * np.abs(n @ toward))[:, None]
    img[i[order], j[order]] = np.clip(rgb * shade, 0, 1)[order]
    ax.imshow(img, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)


def save_gallery(hairstyles: list[list[np.ndarray]], titles: list[str], head, path: str | Path, views=("front", "side", "back")):
    """One row per hairstyle, one column per view; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sciar.io import atomic_path

    rows = len(hairstyles)
    fig, axes = plt.subplots(rows, len(views), figsize=(2.2 * len(views), 2.6 * rows), squeeze=False)
    for r, (cards, title) in enumerate(zip(hairstyles, titles)):
        for c, view in enumerate(views):
            draw(axes[r, c], cards, head, view, f"{title} ({view})" if c == 0 else view)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

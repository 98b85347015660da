"""Cards to triangle meshes and back, as CHARM builds them.

At each control point: the tangent from finite differences (central inside, one-sided at the ends); the outward
head normal at the nearest head point (vertex normals interpolated there, then averaged with the neighbours' along
the card); the width direction ``tangent x normal`` (so a card lies flat over the head) and the thickness direction
``width x tangent`` (the normal made perpendicular to the tangent). A cross-section is a flat quad (width by
thickness) or a triangle (the width edge and an apex at the thickness); faces are stitched between consecutive
sections and the two ends capped. UVs run across the card (u) and along it by arc length (v).

A mesh is read back section by section: vertices come in sections of 3 or 4 in card order (what :func:`to_mesh`
writes and what an edit that keeps the vertex order leaves), each connected component is one card, and each
section gives one control point: its centre, its width (the mean length of the width edges) and its thickness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sciar.errors import DataError

SECTIONS = {"quad": 4, "triangle": 3}


def frames(card: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per control point: unit tangent, width direction and thickness direction, each ``(n, 3)``.

    ``normals``: the outward head normal at each point's nearest head point (``head.closest``).
    """
    p = card[:, :3]
    t = np.gradient(p, axis=0) if len(p) > 1 else np.array([[0.0, -1.0, 0.0]])
    t[np.linalg.norm(t, axis=1) < 1e-12] = [0.0, -1.0, 0.0]  # coincident points (a model's output): hang down
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    n = normals
    if len(n) > 2:  # CHARM's smoothed normals: a [1, 2, 1] average along the card
        n = np.concatenate([n[:1] * 3 + n[1:2], n[:-2] + 2 * n[1:-1] + n[2:], n[-1:] * 3 + n[-2:-1]])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    b = np.cross(t, n)
    for i in range(len(b)):  # a tangent along the normal has no width direction: keep the previous one
        if np.linalg.norm(b[i]) < 1e-6:
            ref = b[i - 1] if i else np.cross(t[i], [1.0, 0.0, 0.0] if abs(t[i, 0]) < 0.9 else [0.0, 0.0, 1.0])
            b[i] = ref - t[i] * (ref @ t[i])
        b[i] /= np.linalg.norm(b[i])
        if i and b[i] @ b[i - 1] < 0:  # no half-turn between neighbours
            b[i] = -b[i]
    m = np.cross(b, t)
    return t, b, m


def card_vertices(card: np.ndarray, normals: np.ndarray, section: str = "quad") -> tuple[np.ndarray, np.ndarray]:
    """The section vertices ``(n * k, 3)`` of one card and their UVs ``(n * k, 2)``."""
    k = SECTIONS[section]
    _, b, m = frames(card, normals)
    c, hw, th = card[:, None, :3], card[:, 3, None, None] / 2, card[:, 4, None, None]
    if k == 4:
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        v = c + corners[None, :, :1] * hw * b[:, None] + corners[None, :, 1:] * (th / 2) * m[:, None]
        u = np.array([0.0, 1.0, 1.0, 0.0])
    else:
        v = np.concatenate([c - hw * b[:, None], c + hw * b[:, None], c + th * m[:, None]], axis=1)
        u = np.array([0.0, 1.0, 0.5])
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(card[:, :3], axis=0), axis=1))])
    s = s / s[-1] if s[-1] > 0 else s
    uv = np.stack(np.broadcast_arrays(u[None, :], s[:, None]), -1).reshape(-1, 2)
    return v.reshape(-1, 3), uv


def card_faces(n: int, k: int) -> np.ndarray:
    """Triangles of a card with ``n`` sections of ``k`` vertices, outward-facing."""
    f = []
    for i in range(n - 1):
        for j in range(k):
            a, b = i * k + j, i * k + (j + 1) % k
            f += [[a, b + k, b], [a, a + k, b + k]]
    last = (n - 1) * k
    if k == 4:
        f += [[0, 1, 2], [0, 2, 3], [last, last + 2, last + 1], [last, last + 3, last + 2]]
    else:
        f += [[0, 1, 2], [last, last + 2, last + 1]]
    return np.asarray(f, dtype=np.int64)


def to_mesh(cards: list[np.ndarray], head, section: str = "quad"):
    """All cards as one ``trimesh.Trimesh`` (one connected component per card) with UVs."""
    import trimesh

    if section not in SECTIONS:
        raise DataError(f"unknown section {section!r} (quad or triangle)")
    cards = [np.asarray(c, dtype=np.float64) for c in cards]
    if any(len(c) < 2 for c in cards):
        raise DataError("a card needs at least two control points to make a mesh")
    if not cards:
        raise DataError("no cards to mesh")
    _, _, normals = head.closest(np.concatenate([c[:, :3] for c in cards]))
    starts = np.cumsum([0] + [len(c) for c in cards])
    vs, uvs, fs, base = [], [], [], 0
    for i, c in enumerate(cards):
        v, uv = card_vertices(c, normals[starts[i]:starts[i + 1]], section)
        vs.append(v), uvs.append(uv), fs.append(card_faces(len(c), SECTIONS[section]) + base)
        base += len(v)
    mesh = trimesh.Trimesh(np.concatenate(vs), np.concatenate(fs), process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=np.concatenate(uvs))
    return mesh


def export_mesh(mesh, path: str | Path):
    """OBJ or GLB (by suffix), written atomically."""
    from sciar.io import atomic_path

    path = Path(path)
    if path.suffix.lower() not in (".obj", ".glb"):
        raise DataError(f"{path}: mesh files are .obj or .glb")
    data = mesh.export(file_type=path.suffix.lower()[1:])
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())


def load_mesh(path: str | Path):
    """A triangle mesh from OBJ/GLB/PLY/STL with its vertex order kept; unreadable or empty files are a DataError."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        m = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's problem
        raise DataError(f"{path}: not a readable mesh ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(m, trimesh.Trimesh) or len(m.vertices) == 0 or len(m.faces) == 0:
        raise DataError(f"{path}: the mesh is empty")
    if not np.isfinite(m.vertices).all():
        raise DataError(f"{path}: the mesh has NaN or infinite vertex coordinates")
    return m


def from_mesh(mesh, section: str = "quad") -> list[np.ndarray]:
    """Cards fitted back from a card mesh laid out in sections (see the module docstring)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    k = SECTIONS.get(section)
    if k is None:
        raise DataError(f"unknown section {section!r} (quad or triangle)")
    v, f = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n_comp, label = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(v), len(v))),
                                         directed=False)
    used = np.zeros(len(v), bool)
    used[f.ravel()] = True
    cards = []
    for ci in range(n_comp):
        idx = np.flatnonzero((label == ci) & used)
        if len(idx) == 0:
            continue
        if len(idx) % k or len(idx) < 2 * k:
            raise DataError(f"mesh part {len(cards) + 1} has {len(idx)} vertices: not sections of {k} "
                            f"({section} cards, at least two sections)")
        ring = v[idx].reshape(-1, k, 3)
        if k == 4:
            centre = ring.mean(1)
            width = (np.linalg.norm(ring[:, 1] - ring[:, 0], axis=1) + np.linalg.norm(ring[:, 2] - ring[:, 3], axis=1)) / 2
            thick = (np.linalg.norm(ring[:, 3] - ring[:, 0], axis=1) + np.linalg.norm(ring[:, 2] - ring[:, 1], axis=1)) / 2
        else:
            centre = (ring[:, 0] + ring[:, 1]) / 2
            width = np.linalg.norm(ring[:, 1] - ring[:, 0], axis=1)
            thick = np.linalg.norm(ring[:, 2] - centre, axis=1)
        cards.append(np.concatenate([centre, width[:, None], thick[:, None]], axis=1))
    if not cards:
        raise DataError("the mesh has no card (no faces)")
    return cards

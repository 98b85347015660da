"""Point-cloud distances against hand-worked cases, and each domain's metric against its definition written out
on dense distance matrices (the numbers the domains' benchmarks were measured with)."""

import numpy as np
import pytest

from sciar import pointcloud as pc


def test_distances_of_hand_worked_point_sets():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0], [0, 2, 0], [3, 0, 0]])
    # a->b: 0, 1; b->a: 0, 2 (not sqrt 5), 2
    ab, ba = pc.nearest_distances(a, b)
    np.testing.assert_allclose(ab, [0, 1])
    np.testing.assert_allclose(ba, [0, 2, 2])
    assert pc.chamfer(a, b) == pytest.approx(0.5 + 8 / 3)  # mean(0, 1) + mean(0, 4, 4)
    assert pc.chamfer(a, b, average=True) == pytest.approx((0.5 + 8 / 3) / 2)
    assert pc.hausdorff(a, b) == pytest.approx(2.0)
    # at 1.5: precision 2/2 (a is the prediction), recall 1/3 -> 2 * 1 * (1/3) / (4/3) = 0.5
    assert pc.fscore(a, b, 1.5) == pytest.approx(0.5)
    assert pc.fscore(a, b, 0.5) == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # EMD: a0-(0,1,0) and a1-(3,0,0) cost 1 + 2; the other matching 3 + sqrt 2
    assert pc.emd(a, np.array([[0.0, 1, 0], [3, 0, 0]])) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="same size"):
        pc.emd(a, b)
    m = pc.chamfer_matrix([a, b], [b])
    assert m.shape == (2, 1) and m[0, 0] == pytest.approx(0.5 + 8 / 3) and m[1, 0] == 0.0


def _dense(a, b):
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return d.min(1), d.min(0)


def test_each_domain_keeps_its_definitions_on_a_seeded_case():
    from domains.hair import metrics as H
    from domains.shapes import metrics as S

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(200, 3)) * 1.1 + 0.05
    ab, ba = _dense(a, b)
    # shapes: the mean of the two directions' mean squared distances; F-score at 2% and 4% of the cube (x 10 here)
    assert S.chamfer(a, b) == pytest.approx((np.mean(ab**2) + np.mean(ba**2)) / 2, rel=1e-12)
    out = S.reconstruction_metrics(np.ones(4, bool), np.r_[True, False, True, True], b, a)
    assert out["iou"] == 0.75 and out["chamfer"] == pytest.approx(S.chamfer(a, b), rel=1e-12)
    for t, key in [(0.02, "fscore_002"), (0.04, "fscore_004")]:
        p, r = np.mean(ab < t * 10), np.mean(ba < t * 10)
        assert pc.fscore(a, b, t * 10) == pytest.approx(2 * p * r / (p + r), rel=1e-12)
        p, r = np.mean(ab < t), np.mean(ba < t)  # reconstruction_metrics: its prediction (a) against the truth (b)
        assert out[key] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-12)
    clouds = [a[:100], b[:100], a[100:200] + 1]
    d = S.chamfer_matrix(clouds)
    for i in range(3):
        for j in range(3):
            x, y = _dense(clouds[i], clouds[j])
            assert d[i, j] == pytest.approx((np.mean(x**2) + np.mean(y**2)) / 2, rel=1e-12, abs=1e-15)
    # hair: the two directions added; Hausdorff the larger maximum; EMD by brute force over all matchings of 6
    assert H.chamfer(a, b) == pytest.approx(np.mean(ab**2) + np.mean(ba**2), rel=1e-12)
    assert H.hausdorff(a, b) == pytest.approx(max(ab.max(), ba.max()), rel=1e-12)
    from itertools import permutations

    x, y = a[:6], b[:6]
    cost = np.linalg.norm(x[:, None] - y[None], axis=-1)
    best = min(cost[range(6), list(p)].mean() for p in permutations(range(6)))
    assert H.emd(x, y) == pytest.approx(best, rel=1e-12)

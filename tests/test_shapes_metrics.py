"""Shape metrics against closed forms and hand-worked cases; the grid baseline and mesh extraction against exact shapes."""

import numpy as np
import pytest
import trimesh

from domains.shapes import metrics as M
from domains.shapes.extract import extract_mesh, sample_grid
from domains.shapes.grid_baseline import reconstruct
from domains.shapes.mesh import inside
from sciar.errors import SciarError
from sciar.pointcloud import fscore


def test_volume_iou_of_concentric_cubes_and_spheres_is_the_volume_ratio():
    points = M.uniform_points(30_000, seed=1)
    small, big = trimesh.creation.box((1.0, 1.0, 1.0)), trimesh.creation.box((1.6, 1.6, 1.6))
    assert M.volume_iou(inside(small, points), inside(big, points)) == pytest.approx((1 / 1.6) ** 3, abs=0.01)
    # similar polyhedra, so the ratio is exact whatever the subdivision
    s1, s2 = trimesh.creation.icosphere(2, radius=0.5), trimesh.creation.icosphere(2, radius=0.8)
    assert M.volume_iou(inside(s1, points), inside(s2, points)) == pytest.approx((0.5 / 0.8) ** 3, abs=0.01)
    assert M.volume_iou(inside(s2, points), inside(s2, points)) == 1.0
    # disjoint: nothing shared
    far = trimesh.creation.box((0.5, 0.5, 0.5)).apply_translation([0.6, 0, 0])
    near = trimesh.creation.box((0.5, 0.5, 0.5)).apply_translation([-0.6, 0, 0])
    assert M.volume_iou(inside(far, points), inside(near, points)) == 0.0


def test_chamfer_and_fscore_of_hand_worked_point_sets():
    a = np.array([[0.0, 0, 0]])
    b = np.array([[0.1, 0, 0], [0.3, 0, 0]])
    # a->b: 0.1^2 = 0.01; b->a: (0.01 + 0.09) / 2 = 0.05; mean of the two directions: 0.03
    assert M.chamfer(a, b) == pytest.approx(0.03)
    assert M.chamfer(b, b) == 0.0
    # precision: 1 of 2 predicted points within 0.2 of the truth; recall: the one true point is covered
    assert fscore(b, a, 0.2) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert fscore(b, a, 0.05) == 0.0


def test_reconstruction_metrics_of_an_empty_prediction():
    truth = np.random.default_rng(0).normal(size=(50, 3))
    out = M.reconstruction_metrics(np.ones(10, bool), np.zeros(10, bool), truth, np.zeros((0, 3)))
    assert out == {"iou": 0.0, "chamfer": float("inf"), "fscore_002": 0.0, "fscore_004": 0.0}


def test_generation_metrics_extremes():
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(64, 3)) + [3 * i, 0, 0] for i in range(6)]
    d = M.chamfer_matrix(clouds)
    assert np.allclose(np.diag(d), 0) and (d[~np.eye(6, dtype=bool)] > 1).all()
    assert np.allclose(d, M.chamfer_matrix(clouds, clouds))  # the symmetric shortcut and the full matrix agree
    assert M.coverage(d) == 1.0 and M.minimum_matching_distance(d) == 0.0
    # a generated set that duplicates the reference: every shape's nearest is its twin on the other side
    assert M.one_nn_accuracy(d, d, d) == 0.0
    # single-point clouds: the Chamfer distance is the squared distance
    assert M.chamfer_matrix([np.zeros((1, 3))], [np.array([[0.0, 2.0, 0.0]])])[0, 0] == pytest.approx(4.0)


def test_one_nna_is_half_for_one_distribution_and_one_for_two_apart():
    rng = np.random.default_rng(0)

    def dist(x, y):
        return np.abs(x[:, None] - y[None, :])

    gen, ref = rng.normal(size=400), rng.normal(size=400)
    assert M.one_nn_accuracy(dist(gen, ref), dist(gen, gen), dist(ref, ref)) == pytest.approx(0.5, abs=0.06)
    apart = gen + 100
    assert M.one_nn_accuracy(dist(apart, ref), dist(apart, apart), dist(ref, ref)) == 1.0
    # all generated shapes near one reference shape: coverage 1 of 400
    assert M.coverage(dist(np.zeros(5), ref)) == pytest.approx(1 / 400)


def test_memorised_share_by_hand():
    # test shapes' nearest training distances 1, 2, 3 -> median 2; generated: 0.5 and 2.5 -> one of two below
    d_test_train = np.array([[1.0, 5.0], [2.0, 9.0], [7.0, 3.0]])
    d_gen_train = np.array([[0.5, 4.0], [2.5, 6.0]])
    assert M.memorised_share(d_gen_train, d_test_train) == (0.5, pytest.approx(1 / 3))


def test_coarse_to_fine_extraction_matches_the_dense_grid_and_the_sphere():
    def field(p):
        return 0.7 - np.linalg.norm(p, axis=1)

    values, queried = sample_grid(field, resolution=64, coarse=16)
    axis = np.linspace(-1.05, 1.05, 65)
    dense = field(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)).reshape(65, 65, 65)
    assert ((values > 0) == (dense > 0)).all()
    assert queried < 0.35 * 65**3
    mesh = extract_mesh(field, resolution=64, coarse=16)
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 / 3 * np.pi * 0.7**3, rel=0.02)
    assert np.allclose(np.linalg.norm(mesh.vertices, axis=1), 0.7, atol=0.005)
    with pytest.raises(SciarError, match="power of two"):
        sample_grid(field, resolution=48, coarse=32)


def test_grid_baseline_of_a_sphere_recovers_it():
    sphere = trimesh.creation.icosphere(4, radius=0.7)
    field, mesh = reconstruct(sphere, size=16, resolution=64)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(r.mean() - 0.7) < 0.01 and r.std() < 0.01
    points = M.uniform_points(20_000, seed=2)
    assert M.volume_iou(field(points) > 0, np.linalg.norm(points, axis=1) < 0.7) > 0.97


def test_training_set_reference_of_a_set_against_itself(tmp_path):
    from domains.shapes.bench import training_set_reference
    from domains.shapes.dataset import find_meshes

    # the same three shapes as train and test: every test shape is covered, each shape's nearest is its twin in the
    # other set (1-NNA 0), and the matching distance is that of two samplings of one surface (spacing ~0.05: ~0.002)
    for split in ("train", "test"):
        (tmp_path / "c" / split).mkdir(parents=True)
        for i, mesh in enumerate([trimesh.creation.box((1, 1, 1)), trimesh.creation.icosphere(2),
                                  trimesh.creation.cylinder(0.3, 2.0)]):
            mesh.export(tmp_path / "c" / split / f"{i}.obj")
    files = find_meshes(tmp_path, val_per_class=0)
    train, test = [f for f in files if f.split == "train"], [f for f in files if f.split == "test"]
    out = training_set_reference(train, test, progress=False)
    assert out["cov"] == 1.0 and out["generated"] == out["reference"] == 3
    assert out["nna"] == 0.0 and out["mmd"] < 0.005


def test_the_picture_grid_fits_the_number_of_shapes(tmp_path):
    from PIL import Image

    from domains.shapes.render import grid_shape, render_meshes

    # at most 4 to a row: n = 1, 2, 4, 5, 9 -> 1x1, 1x2, 1x4, 2x4, 3x4 (no empty column); nothing: one empty cell
    assert [grid_shape(n, 4) for n in (1, 2, 4, 5, 9, 0)] == [(1, 1), (1, 2), (1, 4), (2, 4), (3, 4), (1, 1)]
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    render_meshes([box, box], ["a", "b"], tmp_path / "two.png", cell=1.0)
    assert Image.open(tmp_path / "two.png").size == (180, 90)  # two 1-inch cells at 90 dpi, side by side

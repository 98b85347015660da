"""The benchmark's point-cloud classifier and memorisation: invariances by construction, two SHREC'16 classes told
apart, nearest training shapes by hand."""

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from domains.shapes.bench import nearest_training
from domains.shapes.classify import CLOUD_POINTS, cloud_features, train_classifier
from domains.shapes.metrics import chamfer, memorised_share
from sciar.errors import SciarError


def test_features_ignore_rotation_scale_and_position():
    cloud = np.random.default_rng(0).normal(size=(CLOUD_POINTS, 3)) * (1.0, 0.4, 0.2)
    moved = 2.5 * cloud @ Rotation.from_euler("xyz", (30, 70, -20), degrees=True).as_matrix().T + (3.0, -1.0, 0.5)
    np.testing.assert_allclose(cloud_features(moved, seed=4), cloud_features(cloud, seed=4), atol=1e-9)
    with pytest.raises(SciarError):
        cloud_features(np.zeros((100, 3)))
    with pytest.raises(SciarError):
        cloud_features(np.full((100, 3), np.nan))


def test_features_tell_a_rod_from_a_ball():
    # D2 of a ball's surface spreads up to its diameter; a thin rod's pairs are spread along it (as a uniform
    # segment's |u - v|); the principal variances' shares: (1/3, 1/3, 1/3) for the sphere, nearly (1, 0, 0) for the rod
    ball = trimesh.creation.icosphere(4).sample(CLOUD_POINTS, seed=0)
    rod = trimesh.creation.cylinder(0.02, 2.0, sections=32).sample(CLOUD_POINTS, seed=0)
    fb, fr = cloud_features(ball), cloud_features(rod)
    shares = slice(96, 99)
    np.testing.assert_allclose(fb[shares], 1 / 3, atol=0.02)
    assert fr[shares][0] > 0.99


@pytest.fixture(scope="module")
def two_class_cache(shrec, tmp_path_factory):
    """Two SHREC'16 classes (camel, two_balls; 16 training meshes each) prepared at 2,048 surface points."""
    from domains.shapes.cache import prepare
    from domains.shapes.dataset import find_meshes
    from domains.shapes.sampling import SamplingConfig

    cache = tmp_path_factory.mktemp("cache")
    files = find_meshes(shrec)
    prepare(files, cache, SamplingConfig(surface_points=CLOUD_POINTS, dense_factor=2, near_points=16, uniform_points=16),
            progress=False)
    return cache, shrec, files


def test_classifier_tells_camels_from_two_balls(two_class_cache):
    from domains.shapes.mesh import load_shape

    cache, _, files = two_class_cache
    clf, fit = train_classifier(cache, views=1)
    assert clf.classes == ["camel", "two_balls"] and set(fit["val_accuracy"]) == {1.0, 3.0, 10.0, 30.0, 100.0}
    test = [f for f in files if f.split == "test"]
    meshes = [load_shape(f.path).mesh for f in test]
    assert clf.accuracy_of_meshes(meshes, [f.label for f in test]) == 1.0
    # a mesh without faces counts as wrong; the labels swapped, every answer is wrong
    assert clf.accuracy_of_meshes([trimesh.Trimesh()] + meshes[1:], [f.label for f in test]) == 7 / 8  # 4 meshes a class
    swapped = ["camel" if f.label == "two_balls" else "two_balls" for f in test]
    assert clf.accuracy_of_meshes(meshes, swapped) == 0.0


def test_nearest_training_shape_within_the_class_by_hand():
    rng = np.random.default_rng(0)
    train = [rng.normal(size=(64, 3)) + k for k in range(4)]
    labels = ["a", "a", "b", "b"]
    # clouds: a copy of train[1] (class a), train[2] shifted by (0.1, 0.1, 0.1) (class b), and one of class c (no training shape)
    clouds = [train[1].copy(), train[2] + 0.1, train[0]]
    d = nearest_training(clouds, ["a", "b", "c"], train, labels)
    assert d[0, 0] == 0.0
    assert d[1, 0] == pytest.approx(min(chamfer(clouds[1], train[2]), chamfer(clouds[1], train[3])))
    assert d[1, 0] <= 0.03 + 1e-12  # a shift of length sqrt(0.03): no squared distance above 0.03
    assert np.isinf(d[2, 0])
    # the test shapes' median distance 0.02 is the line: one of two generated and one of three test shapes below it
    assert memorised_share(np.array([[0.0], [0.025]]), np.array([[0.005], [0.02], [0.03]])) == (0.5, 1 / 3)

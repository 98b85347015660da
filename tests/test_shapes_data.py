"""Shape data: reading and repairing meshes from anywhere, normalisation, splits, sampling, the cache and the CLI."""

import json

import numpy as np
import pytest
import trimesh

from cli import main
from domains.shapes.cache import prepare, read_entry, read_index
from domains.shapes.dataset import find_meshes
from domains.shapes.mesh import load_shape
from domains.shapes.sampling import SamplingConfig, augment, sample_shape
from sciar.errors import DataError

TINY = SamplingConfig(surface_points=256, dense_factor=4, near_points=256, uniform_points=256)


def _box(extents=(2.0, 4.0, 6.0)):
    return trimesh.creation.box(extents)


def test_normalisation_fits_the_cube_and_maps_back(tmp_path):
    box = _box().apply_scale(1e6).apply_translation([3e6, -1e6, 5e5])
    box.export(tmp_path / "big.stl")  # STL: every triangle's vertices apart, merged on reading
    shape = load_shape(tmp_path / "big.stl")
    lo, hi = shape.mesh.bounds
    assert np.allclose(lo + hi, 0, atol=1e-9) and (hi - lo).max() == pytest.approx(1.8)
    assert shape.mesh.is_watertight and shape.notes == []
    assert shape.mesh.volume == pytest.approx(2 * 4 * 6 * (1.8 / 6) ** 3)
    back = shape.frame.from_unit(shape.mesh.vertices)
    assert np.allclose(np.sort(back, 0), np.sort(np.unique(box.vertices, axis=0), 0), rtol=1e-9)


def test_meshes_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr("domains.shapes.mesh.REPAIR_RESOLUTION", 64)  # the same remeshing, coarser, for speed
    # an open surface with holes: closed by the winding number, volume close to the sphere's
    sphere = trimesh.creation.icosphere(3, radius=1e-4)
    holes = sphere.copy()
    holes.update_faces(np.arange(len(holes.faces)) % 97 != 0)
    holes.remove_unreferenced_vertices()
    holes.export(tmp_path / "holes.ply")
    shape = load_shape(tmp_path / "holes.ply")
    assert "not closed" in shape.notes[0] and shape.mesh.is_watertight
    assert shape.mesh.volume == pytest.approx(4 / 3 * np.pi * 0.9**3, rel=0.03)
    # two bodies, inside out: flipped, both kept
    two = trimesh.util.concatenate([_box((1, 1, 1)), _box((1, 1, 1)).apply_translation([2, 0, 0])])
    two.invert()
    two.export(tmp_path / "two.off")
    shape = load_shape(tmp_path / "two.off")
    assert shape.bodies == 2 and "flipped" in shape.notes[0]
    assert shape.mesh.volume == pytest.approx(2 * (1.8 / 3) ** 3)
    # quad faces: a unit cube of six quads
    quads = "\n".join(["v 0 0 0", "v 1 0 0", "v 1 1 0", "v 0 1 0", "v 0 0 1", "v 1 0 1", "v 1 1 1", "v 0 1 1",
                       "f 1 4 3 2", "f 5 6 7 8", "f 1 2 6 5", "f 2 3 7 6", "f 3 4 8 7", "f 4 1 5 8"])
    (tmp_path / "quads.obj").write_text(quads + "\n")
    shape = load_shape(tmp_path / "quads.obj")
    assert len(shape.mesh.faces) == 12 and shape.mesh.volume == pytest.approx(1.8**3)
    # a GLB scene of two meshes
    scene = trimesh.Scene([_box((1, 1, 1)), trimesh.creation.icosphere(2, radius=0.5).apply_translation([0, 3, 0])])
    scene.export(tmp_path / "scene.glb")
    assert load_shape(tmp_path / "scene.glb").bodies == 2


@pytest.mark.parametrize("name, content, message", [
    ("empty.obj", "", "empty"),
    ("text.obj", "this is not a mesh\n", "no triangles"),
    ("nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
    ("inf.obj", "v 0 0 0\nv inf 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
    ("flat.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 3\n", "no volume"),
    ("points.ply", "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
                   "end_header\n0 0 0\n1 1 1\n", "no triangles"),
    ("mesh.txt", "v 0 0 0\n", "not a mesh file"),
])
def test_bad_mesh_files_raise_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message) as e:
        load_shape(tmp_path / name)
    assert "\n" not in str(e.value)


def test_shrec_classes_and_fixed_validation_split(shrec):
    files = find_meshes(shrec)
    assert {f.label for f in files} == {"camel", "two_balls"}
    for label in ("camel", "two_balls"):
        splits = [f.split for f in files if f.label == label]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (14, 2, 4)
    val = [f.relative for f in files if f.split == "val"]
    assert val == [f.relative for f in find_meshes(shrec) if f.split == "val"]
    assert all("/train/" in v for v in val)


def test_samples_on_a_sphere_and_augmentation_keep_occupancy():
    r = 0.6
    sphere = trimesh.creation.icosphere(4, radius=r)
    s = sample_shape(sphere, TINY, seed=0)
    assert s["surface"].shape == (256, 3) and s["queries"].shape == (512, 3)
    assert np.allclose(np.linalg.norm(s["surface"], axis=1), r, atol=0.01)
    assert (np.sum(s["normals"] * s["surface"] / r, axis=1) > 0.98).all()  # outward radial normals
    radius = np.linalg.norm(s["queries"], axis=1)
    clear = np.abs(radius - r) > 0.01  # away from the polyhedron's facets, the sphere decides
    assert (s["occupancy"][clear] == (radius[clear] < r)).all()
    # an off-centre box, rotated about y and scaled: labels still say inside the moved box
    box = _box((0.6, 0.4, 0.2)).apply_translation([0.3, 0.1, 0])
    sb = sample_shape(box, TINY, seed=1)
    a = augment(sb, np.random.default_rng(3))
    assert np.allclose(a["queries"][:, 1] / sb["queries"][:, 1], a["queries"][0, 1] / sb["queries"][0, 1])
    scale = a["queries"][0, 1] / sb["queries"][0, 1]
    assert 0.9 <= scale <= 1.1 and np.abs(a["surface"]).max() <= 0.99 + 1e-6
    assert np.allclose(np.linalg.norm(a["surface"], axis=1), scale * np.linalg.norm(sb["surface"], axis=1), atol=1e-5)


def test_prepare_caches_reports_and_resumes(shrec, tmp_path):
    src = tmp_path / "meshes"
    (src / "camel").mkdir(parents=True)
    for p in sorted((shrec / "camel" / "test").glob("*.obj"))[:2]:
        (src / "camel" / p.name).write_bytes(p.read_bytes())
    (src / "camel" / "copy.obj").write_bytes(p.read_bytes())  # the same content: the same cache entry
    (src / "broken.obj").write_text("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    report = prepare(find_meshes(src, val_per_class=0), tmp_path / "cache", TINY, progress=False)
    assert list(report["path"]) == ["broken.obj", "camel/T106.obj", "camel/T431.obj", "camel/copy.obj"]
    assert "NaN" in report["error"][0] and (report["error"][1:] == "").all()
    assert report["key"][2] == report["key"][3] and bool(report["cached"][3])
    arrays, meta = read_entry(tmp_path / "cache" / "samples" / f"{report['key'][1]}.npz")
    assert arrays["surface"].shape == (256, 3) and arrays["occupancy"].dtype == bool
    assert meta["source"] == "camel/T106.obj" and meta["scale"] > 0
    again = prepare(find_meshes(src, val_per_class=0), tmp_path / "cache", TINY, progress=False)
    assert again["cached"][1:].all()
    assert len(read_index(tmp_path / "cache")) == 3
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cli_prepare_and_benchmark(shrec, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.off").write_text("")
    assert main(["shapes", "prepare", "--meshes", str(bad), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("error: no usable mesh") and "empty" in err and "\n" not in err
    assert main(["shapes", "prepare", "--meshes", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    out = tmp_path / "bench.json"
    code = main(["shapes", "benchmark", "--meshes", str(shrec), "--per-class", "1", "--sizes", "12",
                 "--resolution", "32", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    g = result["grid_baseline"]
    assert g["meshes"] == 2 and g["floats"] == 12**3 and 0 < g["iou"] < 1
    assert set(g) >= {"iou", "chamfer", "fscore_002", "fscore_004"}
    assert main(["shapes", "benchmark", "--meshes", str(shrec), "--sizes", "1"]) == 2
    assert main(["shapes", "benchmark", "--meshes", str(shrec), "--resolution", "48"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --resolution must be 32, 64, 128, 256 ... (got 48)"

"""Hair cards: the head frame and the shipped strands' alignment, CHARM tokens, meshes, validity, the generator,
strands to cards, metrics on hand-worked cases, and the CLI's outputs and one-line errors."""

import gzip
import json
import struct

import numpy as np
import pandas as pd
import pytest

from cli import main
from domains.hair import tokens as T
from domains.hair.head import load_head
from sciar.errors import DataError


@pytest.fixture(scope="module")
def head():
    return load_head()


@pytest.fixture(scope="module")
def styles(head):
    """One procedural hairstyle of each of the first styles drawn from seed 0."""
    from domains.hair.procedural import hairstyle

    got = {}
    for i in range(12):
        p, split, cards = hairstyle(0, i, head)
        got.setdefault(p.style, (p, split, cards))
    return got


def _card(y0=0.45, n=6, z=0.0, x=0.0, w=0.03, th=0.004):
    """A straight card hanging down from above the crown (metres)."""
    c = np.zeros((n, 5))
    c[:, 0], c[:, 1], c[:, 2], c[:, 3], c[:, 4] = x, np.linspace(y0, y0 - 0.1, n), z, w, th
    return c


def test_strands_align_with_the_head_as_the_data_readme_says(shared_data, head):
    """Roots of the shipped strands, scaled by 0.01 and shifted, sit 2.0 mm (median) from the nearest head vertex."""
    from scipy.spatial import cKDTree

    from domains.hair.strands import read_strands

    strands = read_strands(shared_data / "hair" / "harolongo.data.gz")
    assert len(strands) == 7905 and all(len(s) == 21 for s in strands)
    raw = gzip.open(shared_data / "hair" / "harolongo.data.gz").read()
    first = np.frombuffer(raw[8:8 + 12], "<f4")  # strand 1, point 1, as written in the file (cm)
    np.testing.assert_allclose(strands[0][0], first * 0.01 + [0, 0.2685, 0.0965], atol=1e-7)
    d = cKDTree(head.vertices).query(np.stack([s[0] for s in strands]))[0] * 1000
    assert 1.7 < np.median(d) < 2.3 and np.percentile(d, 90) < 4.0


def test_head_frame_holds_long_hair(head):
    b = head.bounds
    assert b[1, 1] - b[0, 1] == pytest.approx(0.329, abs=0.002)  # the README's extent
    u = head.to_frame(np.array([[0.0, b[1, 1], (b[0, 2] + b[1, 2]) / 2, 0.03, 0.003]]))
    assert u[0, 1] == pytest.approx(0.38) and abs(u[0, 0]) < 0.01 and abs(u[0, 2]) < 1e-9
    assert u[0, 3] == pytest.approx(0.03 / (3 * 0.329), rel=0.01)
    # the frame reaches 85 cm below the top of the head
    assert head.to_frame(np.array([[0.0, b[1, 1] - 0.85, 0, 0, 0]]))[0, 1] > -0.501
    np.testing.assert_allclose(head.from_frame(head.to_frame(_card())), _card(), atol=1e-12)


def test_piecewise_bins_hand_worked():
    x = T.BINS["x"]
    assert x.n == 512 and T.FIELD_SIZES == (512, 512, 512, 128, 128)
    # 0.0 lies in the middle piece [-0.1, 0.1) of 320 bins of 0.000625: bin 96 + 160
    assert x.quantise(0.0) == 256 and x.dequantise(256) == pytest.approx(-0.1 + 160.5 * 0.2 / 320)
    assert x.quantise(-0.501) == 0 and x.quantise(0.501) == 511 and x.quantise(9.0) == 511
    assert x.quantise(-0.1) == 96 and x.quantise(-0.1 - 1e-9) == 95
    y = T.BINS["y"]  # [0.3, 0.501): 256 bins of 0.201 / 256
    assert y.quantise(0.31) == 96 + 160 + int(0.01 / (0.201 / 256))
    with pytest.raises(DataError):
        x.dequantise(512)


def test_tokens_round_trip_exactly(styles, head):
    cards = next(iter(styles.values()))[2]
    tok = T.encode(cards, head)
    assert tok.shape == (sum(len(c) for c in cards) + len(cards) + 1, 6)
    assert tok[0, 0] == T.START and tok[-1, 0] == T.END and (tok[:, 0] == T.SEP).sum() == len(cards) - 1
    special = tok[:, 0] != T.POINT
    assert (tok[special, 1:] == T.PAD).all() and (tok[~special, 1:] >= 0).all()
    back = T.decode(tok, head)
    assert [len(c) for c in back] == [len(c) for c in cards]
    np.testing.assert_array_equal(T.encode(back, head), tok)
    # the continuous error is at most half a bin per field: bound it independently from the bin edges
    worst = np.array([max((e[i + 1] - e[i]) / c[i] for i in range(len(c))) / 2
                      for e, c in ((T.BINS[f].edges, T.BINS[f].counts) for f in T.FIELDS)]) * head.scale
    err = np.abs(np.concatenate(back) - np.concatenate(cards))
    assert (err <= worst + 1e-12).all() and err[:, :3].max() > 0


def test_malformed_tokens_are_refused(head):
    tok = T.encode([_card()], head)
    for bad in (tok[1:], tok[:-1], np.concatenate([tok[:1], [[T.SEP] + [T.PAD] * 5], tok[1:]])):
        with pytest.raises(DataError):
            T.decode(bad, head)
    with pytest.raises(DataError, match="outside the token frame"):
        T.encode([_card(y0=2.0)], head)


def test_cards_are_oriented_root_first_and_sorted_by_azimuth(head):
    # four cards around the head at known azimuths, given tip first and shuffled
    cards = []
    for az in (2.0, -0.5, 0.5, -2.5):
        d = np.array([np.sin(az), 0, np.cos(az)])
        c = np.concatenate([0.3 * np.ones((5, 1)) * [0, 1, 0] + head.origin * [1, 0, 1] + np.linspace(0.2, 0.1, 5)[:, None] * d,
                            np.full((5, 2), 0.01)], 1)  # from 20 cm out (tip) to 10 cm out (root)
        cards.append(c)
    out = T.orient_and_sort(cards, head)
    az = [np.arctan2(*(c[:, [0, 2]].mean(0) - head.origin[[0, 2]])) for c in out]
    assert np.allclose(az, [-2.5, -0.5, 0.5, 2.0])
    assert all(np.linalg.norm(c[0, [0, 2]] - head.origin[[0, 2]]) < np.linalg.norm(c[-1, [0, 2]] - head.origin[[0, 2]]) for c in out)


@pytest.mark.parametrize("section,area_factor", [("quad", 1.0), ("triangle", 0.5)])
def test_mesh_volume_directions_and_round_trip(head, tmp_path, section, area_factor):
    from domains.hair.mesh import export_mesh, frames, from_mesh, load_mesh, to_mesh

    card = _card(y0=0.5)  # straight, 10 cm, above the crown: a box (or prism) of w x th x 10 cm
    one = to_mesh([card], head, section)
    assert one.is_watertight and one.is_winding_consistent
    ring = np.asarray(one.vertices).reshape(6, -1, 3)
    assert np.allclose(np.linalg.norm(ring[:, 1] - ring[:, 0], axis=1), 0.03)  # the width edge
    # the thickness: quad, the side edge; triangle, the apex above the width edge's middle
    side = ring[:, 3] - ring[:, 0] if section == "quad" else ring[:, 2] - (ring[:, 0] + ring[:, 1]) / 2
    assert np.allclose(np.linalg.norm(side, axis=1), 0.004)
    # a slight twist (the head normal turns along the card) bends the faces: the volume is w x th x L within 1%
    assert one.volume == pytest.approx(area_factor * 0.03 * 0.004 * 0.1, rel=0.01)
    mesh = to_mesh([card, _card(y0=0.5, x=0.05)], head, section)
    normals = head.closest(card[:, :3])[2]
    t, b, m = frames(card, normals)
    np.testing.assert_allclose(t, [[0, -1, 0]] * 6, atol=1e-12)
    assert np.abs((b * t).sum(1)).max() < 1e-12 and np.abs((b * normals).sum(1)).max() < 0.01  # width across tangent and normal
    flat = normals - (normals * t).sum(1, keepdims=True) * t  # the outward normal, made perpendicular to the tangent
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    assert ((m * flat).sum(1) > 0.99).all()  # thickness along it: the card lies flat over the head
    for suffix in (".obj", ".glb"):
        export_mesh(mesh, tmp_path / f"m{suffix}")
        back = from_mesh(load_mesh(tmp_path / f"m{suffix}"), section)
        assert len(back) == 2 and np.abs(back[0] - card).max() < 1e-6
    assert np.asarray(mesh.visual.uv)[:, 1].max() == pytest.approx(1.0)
    with pytest.raises(DataError, match="sections of"):
        from_mesh(to_mesh([card[:5]], head, "quad"), "triangle")  # 20 vertices: not sections of 3


def test_validity_catches_inside_points_short_cards_and_nan(head):
    from domains.hair.validity import check_cards

    spike = _card(y0=0.51, z=0.045)[::-1]  # root 1 cm above the crown, standing up
    good = check_cards([spike], head)
    assert good["valid"] and good["inside_share"] == 0 and 5 < good["root_to_scalp_max_mm"] < 15
    assert not check_cards([_card(y0=0.6, z=0.045)[::-1]], head)["valid"]  # root 11 cm above: floating
    inside = _card(y0=0.45, z=0.045)  # y 0.45 .. 0.35 through the crown (at 0.40 there): 3 of 6 points inside
    r = check_cards([inside], head)
    assert r["inside_share"] == pytest.approx(3 / 6) and not r["valid"]
    r = check_cards([spike, spike[:1]], head)
    assert r["short_cards"] == 1 and not r["valid"]
    nan = _card(y0=0.5)
    nan[2, 0] = np.nan
    assert not check_cards([nan], head)["finite"]
    far = _card(y0=0.5, w=0.2)  # width 20 cm: beyond the width bins (0.1 x 0.987 m)
    assert check_cards([far], head)["out_of_range_width"] == 6


def test_procedural_styles_are_seeded_and_valid(styles, head):
    from domains.hair.procedural import HELDOUT_LONG, StyleParams, hairstyle, split_of
    from domains.hair.validity import check_cards

    assert len(styles) >= 5
    for p, split, cards in styles.values():
        assert 25 <= len(cards) <= 130 and len(cards) == p.n_cards
        r = check_cards(cards, head)
        assert r["valid"] and r["inside_share"] == 0, (p.style, r)
        assert not sum(T.out_of_range(cards, head).values())
    p, split, cards = hairstyle(0, 3, head)
    np.testing.assert_array_equal(np.concatenate(cards), np.concatenate(hairstyle(0, 3, head)[2]))
    assert split_of(StyleParams("long", 50, HELDOUT_LONG + 0.01, 0, 0.1, 0, 0.02), np.random.default_rng(0)) == "heldout_region"


def test_metrics_hand_worked():
    from domains.hair.metrics import chamfer, emd, hausdorff, voxel_iou

    a = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0), [0.0]), -1).reshape(-1, 3)  # unit grid
    b = a + [0.3, 0, 0]
    assert chamfer(a, b) == pytest.approx(2 * 0.09) and hausdorff(a, b) == pytest.approx(0.3)
    assert emd(a, b[::-1]) == pytest.approx(0.3)
    c = np.concatenate([a, [[0, 0, 10.0]]])  # one outlier 10 from its nearest
    assert hausdorff(a, c) == pytest.approx(10.0) and chamfer(a, c) == pytest.approx(100 / 26)
    assert voxel_iou(np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]]), np.array([[1.2, 0.1, 0.9], [2.5, 0.5, 0.5]]), 1.0) == pytest.approx(1 / 3)


def test_strands_to_cards_cover_the_strands(shared_data, head):
    from domains.hair.strands import coverage, read_strands, strands_to_cards
    from domains.hair.validity import check_cards

    strands = read_strands(shared_data / "hair" / "harolongo.data.gz")[::10]
    cards = strands_to_cards(strands, head, {"n_cards": 30})
    assert len(cards) == 30 and check_cards(cards, head)["valid"]
    cov = coverage(strands, cards, head, n_samples=2000)
    assert cov["cards_to_strands_median_mm"] < 10 and cov["strands_to_cards_median_mm"] < 10
    assert 0.05 < cov["card_area_m2"] < 2.0


def test_truncated_strands_file_is_one_line_error(tmp_path):
    from domains.hair.strands import read_strands

    data = struct.pack("<i", 3) + struct.pack("<i", 2) + np.zeros(6, "<f4").tobytes() + struct.pack("<i", 21) + b"\0" * 40
    (tmp_path / "cut.data").write_bytes(data)
    with pytest.raises(DataError, match="truncated strands file: strand 2 of 3"):
        read_strands(tmp_path / "cut.data")


def test_benchmark_keys_and_the_quantised_floor(styles, head):
    from domains.hair.benchmark import run_benchmark

    sets = [s[2] for s in styles.values()]
    r = run_benchmark(sets[1:], {"test": sets[:1]}, None, head, train_sizes=(2,), resamplings=1)
    assert r["procedural"]["model"] is None and r["real"] is None
    for m in ("retrieval", "geometric_fit", "quantised"):
        assert set(r["procedural"][m]) >= {"chamfer", "emd", "hausdorff", "iou"}
        assert m in r["inside_head_share"] and m in r["seconds_per_hairstyle"]
    q, ret = r["procedural"]["quantised"], r["procedural"]["retrieval"]
    assert q["chamfer"] < ret["chamfer"] and q["iou"] > ret["iou"]
    assert set(r["retrieval_by_train_size"]) == {"2", str(len(sets) - 1)}
    rep = r["representation"]["procedural"]
    assert 0 < rep["quantisation_point_mean_mm"] < rep["quantisation_point_max_mm"] < 5 and rep["mesh_round_trip_max_mm"] < 1e-3


def test_cli_procedural_check_and_meshes(tmp_path):
    out = tmp_path / "set"
    assert main(["hair", "procedural", "-n", "2", "--seed", "1", "--out", str(out), "--no-gallery"]) == 0
    df = pd.read_parquet(out / "hairstyles.parquet")
    styles = pd.read_csv(out / "styles.csv")
    assert sorted(df["hairstyle"].unique()) == [0, 1] and styles["valid"].all()
    one = df[df["hairstyle"] == 0].drop(columns="hairstyle")
    from domains.hair.files import read_set

    sets, st = read_set(out)
    assert len(sets) == 2 and list(st["split"]) == list(styles["split"])
    np.testing.assert_array_equal(np.concatenate(sets[0]), one.drop(columns="card").to_numpy())
    one.to_csv(tmp_path / "cards.csv", index=False)
    assert main(["hair", "check", str(tmp_path / "cards.csv"), "--json", str(tmp_path / "check.json")]) == 0
    assert json.loads((tmp_path / "check.json").read_text())[str(tmp_path / "cards.csv")]["valid"]
    assert main(["hair", "to-mesh", str(tmp_path / "cards.csv"), "--out", str(tmp_path / "m.glb")]) == 0
    assert main(["hair", "from-mesh", str(tmp_path / "m.glb"), "--out", str(tmp_path / "back.csv")]) == 0
    back = pd.read_csv(tmp_path / "back.csv")
    np.testing.assert_allclose(back.drop(columns="card").to_numpy(), one.drop(columns="card").to_numpy(), atol=1e-5)


def test_cli_bad_input_is_one_line_exit_2(tmp_path, head, capsys):
    (tmp_path / "cut.data").write_bytes(struct.pack("<i", 5) + struct.pack("<i", 21))
    assert main(["hair", "from-strands", str(tmp_path / "cut.data"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "nan.csv").write_text("card,x,y,z,width,thickness\n0,0,0.45,0,0.03,0.003\n0,nan,0.4,0,0.03,0.003\n")
    assert main(["hair", "check", str(tmp_path / "nan.csv")]) == 2
    (tmp_path / "empty.obj").write_text("")
    assert main(["hair", "from-mesh", str(tmp_path / "empty.obj"), "--out", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "truncated" in err[0] and "NaN" in err[1] and "empty.obj" in err[2]
    bad = {"empty.xyz": "", "nan.xyz": "0 0.3 0\nnan 0.3 0\n", "garbage.ply": "ply\nnot really\n"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    np.savetxt(tmp_path / "far.xyz", np.random.default_rng(0).normal([0, 5.0, 0], 0.05, (100, 3)))
    for name in [*bad, "far.xyz"]:
        assert main(["hair", "fit", str(tmp_path / name), "--out", str(tmp_path / "fit")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "no points" in err[0] and "NaN" in err[1] and "garbage.ply" in err[2]
    assert "4.7" in err[3] and "m from the head's centre" in err[3]  # the far cloud's centroid: (0, 5, 0) vs the head's


def test_cli_fit_cards_to_a_point_cloud(styles, head, tmp_path):
    from domains.hair.baselines import condition_points
    from domains.hair.files import read_cards_csv

    p, _, cards = styles["long"]
    np.savetxt(tmp_path / "cond.xyz", condition_points(cards, head, seed=0, n=600))
    assert main(["hair", "fit", str(tmp_path / "cond.xyz"), "--out", str(tmp_path / "fit"), "--n-cards", "12"]) == 0
    fitted = read_cards_csv(tmp_path / "fit" / "cards.csv")
    assert len(fitted) == 12 and (tmp_path / "fit" / "cards.glb").stat().st_size > 0

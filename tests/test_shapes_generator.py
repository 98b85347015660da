"""The shape generator on the core: a toy latent set with two classes, the fitted Gaussian, and the commands."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from domains.shapes.generator import FittedGaussian, LatentSet, build_generator, generate_causal
from sciar.decode.masked import generate
from sciar.train import TrainConfig, train

L, D = 4, 2
# hand-picked class means per token: class "a" near (+1, -1) with a tilt along the positions, "b" mirrored
TOY_MEANS = np.array([[[1.0, -1.0], [1.0, -0.5], [0.5, -1.0], [1.0, -1.0]]])
TOY_MEANS = np.concatenate([TOY_MEANS, -TOY_MEANS])
NOISE = 0.05


def _toy_set(n_per_class=64, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    z = TOY_MEANS[y] + NOISE * rng.standard_normal((len(y), L, D))
    splits = ["train"] * len(y)
    splits[::8] = ["val"] * len(splits[::8])
    meta = {"mean": 0.0, "std": 1.0, "labels": ["a" if c == 0 else "b" for c in y], "splits": splits}
    return LatentSet(torch.tensor(z, dtype=torch.float32), meta)


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    """Both generators (masked and causal, tiny) trained 300 steps on the toy set by the core's trainer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data, out = _toy_set(), {}
    for kind in ("masked", "causal"):
        torch.manual_seed(0)
        model = build_generator(kind, "tiny", L, D, 2, sample_steps=25)
        cfg = TrainConfig(max_steps=300, batch_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.0,
                          eval_every=300, eval_batches=1, save_every=300, seed=0, device="cpu", progress=False,
                          ema=0.9)
        path = tmp_path_factory.mktemp(kind)
        train(model, data, cfg, path, model.config(), None, {"domain": "shapes", "role": "generator"})
        out[kind] = (model.eval(), pd.read_csv(path / "train_log.csv")["loss"].to_numpy())
    torch.set_num_threads(threads)
    return data, out


def test_toy_latents_have_the_classes_and_splits():
    data = _toy_set()
    assert data.classes == ["a", "b"]
    assert len(data.rows["val"]) == 16 and len(data.rows["train"]) == 112
    z, y = data.split("train")
    assert torch.allclose(z[y == 0].mean(0), torch.tensor(TOY_MEANS[0], dtype=torch.float32), atol=0.03)


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_training_loss_decreases(toy_models, kind):
    _, models = toy_models
    loss = models[kind][1]
    # the head's noise MSE starts near 1 (zero-initialised output: the noise's variance) and must fall well below it
    assert loss[:10].mean() > 0.8
    assert loss[-30:].mean() < 0.6 * loss[:10].mean()


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_guided_class_samples_recover_the_class_means(toy_models, kind):
    _, models = toy_models
    model = models[kind][0]
    torch.set_num_threads(1)
    labels = torch.tensor([0] * 12 + [1] * 12)
    if kind == "masked":
        z = generate(model, labels=labels, steps=2, cfg=3.0, head_steps=25, seed=0)
    else:
        z = generate_causal(model, labels, cfg=3.0, head_steps=25, seed=0)
    for c in (0, 1):
        mean = z[labels == c].mean(0).numpy()
        # within half the smallest gap between the two classes' means in any coordinate (1.0): the right class
        assert np.abs(mean - TOY_MEANS[c]).max() < 0.45, (c, mean)
        assert np.abs(mean - TOY_MEANS[c]).mean() < 0.15, (c, mean)
        # every sample lies on its class's side: the signs of the hand-picked means
        assert (np.sign(z[labels == c].numpy()) == np.sign(TOY_MEANS[c])).mean() > 0.95


def test_fitted_gaussian_matches_numpy():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((30, 3, 2)) * [1.0, 2.0] + 0.5
    y = np.repeat([0, 1], 15)
    g = FittedGaussian(torch.tensor(z), torch.tensor(y), 2)
    for c in (0, 1):
        flat = z[y == c].reshape(15, -1)
        np.testing.assert_allclose(g.means[c].numpy(), flat.mean(0), atol=1e-12)
        np.testing.assert_allclose(g.covariance(c).numpy(), np.cov(flat, rowvar=False), atol=1e-12)
    draws = g.sample([1] * 20000, seed=0).reshape(20000, -1).double().numpy()
    flat = z[y == 1].reshape(15, -1)
    np.testing.assert_allclose(draws.mean(0), flat.mean(0), atol=0.05)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), np.cov(flat, rowvar=False), atol=0.12)


@pytest.fixture(scope="module")
def box_pair(tmp_path_factory):
    """A tiny VAE fitted to one box and a tiny masked generator fitted to that box's latents, saved as a pair."""
    import shutil

    import trimesh

    from domains.shapes.autoencode import DOMAIN, ROLE, encode
    from domains.shapes.generator import VAE_DIR
    from domains.shapes.sampling import SamplingConfig, sample_shape
    from domains.shapes.vae import PRESETS, ShapeVAE
    from sciar.checkpoint import save_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    box = trimesh.creation.box((1.8, 0.9, 1.35))
    s = sample_shape(box, SamplingConfig(surface_points=256, dense_factor=4, near_points=512, uniform_points=512), seed=0)
    vae = ShapeVAE(PRESETS["tiny"])
    opt = torch.optim.AdamW(vae.parameters(), 3e-3)
    batch = {k: torch.from_numpy(v)[None].repeat(4, *[1] * v.ndim) for k, v in s.items()}
    for _ in range(120):
        vae(**batch).backward()
        opt.step()
        opt.zero_grad()
    vae.eval()
    z = encode(vae, s["surface"], s["normals"])
    root = tmp_path_factory.mktemp("pair")
    save_checkpoint(root / "vae", vae, {"model": PRESETS["tiny"].to_dict()}, None, {"domain": DOMAIN, "role": ROLE})
    # the generator's training set: the box's latents, twice as two classes, a little jitter
    mean, std = float(z.mean()), float(z.std())
    zz = z[None].repeat(32, 1, 1) + 0.01 * std * torch.randn(32, *z.shape)
    meta = {"mean": mean, "std": std, "labels": ["box", "crate"] * 16, "splits": ["train"] * 32}
    data = LatentSet(zz, meta, points=torch.as_tensor(s["surface"])[None].repeat(32, 1, 1), cond_points=64)
    model = build_generator("masked", "tiny", *z.shape, 2, sample_steps=10, points=True)
    cfg = TrainConfig(max_steps=150, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=10, weight_decay=0.0,
                      eval_batches=0, save_every=150, seed=0, device="cpu", progress=False, ema=0.9)
    gen = root / "gen"
    shutil.copytree(root / "vae", gen / VAE_DIR)
    train(model, data, cfg, gen, model.config(), None,
          {"domain": "shapes", "role": "generator", "kind": "masked", "classes": data.classes,
           "latent_mean": mean, "latent_std": std, "points": 64})
    torch.set_num_threads(threads)
    return root, box


def test_generate_writes_n_meshes_and_a_png(box_pair, tmp_path):
    from cli import main
    from domains.shapes.metrics import uniform_points
    from domains.shapes.mesh import inside

    root, box = box_pair
    out = tmp_path / "out"
    assert main(["shapes", "generate", "--model", str(root / "gen"), "--class", "crate", "-n", "3", "--cfg", "2",
                 "--steps", "4", "--resolution", "32", "--out", str(out)]) == 0
    objs = sorted(out.glob("*.obj"))
    assert [p.name for p in objs] == ["crate-0.obj", "crate-1.obj", "crate-2.obj"]
    assert (out / "shapes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the generator learnt the box's latents: each generated mesh encloses mostly the box (IoU by sampled points)
    import trimesh

    pts = uniform_points(4000, seed=0)
    truth = (np.abs(pts) < np.array([0.9, 0.45, 0.675])).all(1)
    for p in objs:
        got = inside(trimesh.load(p, force="mesh"), pts)
        assert (got & truth).sum() / max(1, (got | truth).sum()) > 0.5


def test_export_ships_the_moving_average_and_the_vae(box_pair, tmp_path):
    from safetensors.torch import load_file

    from domains.shapes.generator import export_generator, load_generator

    root, _ = box_pair
    out = export_generator(root / "gen", tmp_path / "shipped")
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    shipped, ema = load_file(out / "model.safetensors"), load_file(root / "gen" / "ema.safetensors")
    assert shipped.keys() == ema.keys() and all(torch.equal(shipped[k], ema[k]) for k in ema)
    assert not (out / "vae" / "last").exists()
    gen = load_generator(out)
    assert gen.classes == ["box", "crate"]
    with pytest.raises(Exception, match="exists"):
        export_generator(root / "gen", out)


def test_generate_on_a_point_cloud_comes_out_in_its_frame(box_pair, tmp_path):
    import trimesh

    from cli import main

    root, box = box_pair
    scan = box.copy()
    scan.apply_scale(10.0)
    scan.apply_translation([5.0, -2.0, 1.0])
    trimesh.PointCloud(scan.sample(3000, seed=0)).export(tmp_path / "scan.ply")
    out = tmp_path / "out"
    assert main(["shapes", "generate", "--model", str(root / "gen"), "--class", "box", "-n", "1", "--steps", "2",
                 "--points", str(tmp_path / "scan.ply"), "--resolution", "32", "--out", str(out)]) == 0
    got = trimesh.load(out / "box-0.obj", force="mesh")
    # the box spans 18 x 9 x 13.5 around (5, -2, 1) in the scan's frame: the generated (tiny, blobby) box is centred
    # there and its largest side is about 18, not the normalised frame's 1.8
    np.testing.assert_allclose(got.bounds.mean(0), [5.0, -2.0, 1.0], atol=1.5)
    assert 18.0 * 0.8 < got.extents.max() < 18.0 * 1.2


def test_interpolate_writes_the_steps_between_two_meshes(box_pair, tmp_path):
    from cli import main

    root, box = box_pair
    box.export(tmp_path / "a.ply")
    other = box.copy()
    other.apply_transform(np.diag([1.0, 1.0, 1.0, 1.0])[[0, 2, 1, 3]])  # the box with y and z swapped
    other.export(tmp_path / "b.obj")
    out = tmp_path / "line"
    assert main(["shapes", "interpolate", str(tmp_path / "a.ply"), str(tmp_path / "b.obj"), "--vae", str(root / "gen"),
                 "-n", "3", "--resolution", "32", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.obj")) == ["step-0.obj", "step-1.obj", "step-2.obj"]
    assert (out / "shapes.png").is_file()


def test_batch_records_a_bad_class_and_goes_on(box_pair, tmp_path):
    from cli import main

    root, _ = box_pair
    pd.DataFrame({"class": ["box", "giraffe"]}).to_csv(tmp_path / "p.csv", index=False)
    assert main(["shapes", "batch", "--model", str(root / "gen"), "--input", str(tmp_path / "p.csv"), "--output",
                 str(tmp_path / "r.parquet"), "--steps", "2", "--resolution", "32"]) == 0
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert list(df["status"]) == ["ok", "error"]
    assert "giraffe" in df["error"].iloc[1] and df["mesh"].iloc[0].endswith(".obj")


def test_bad_input_exits_2_with_one_line(box_pair, tmp_path, capsys):
    import shutil

    from cli import main

    root, _ = box_pair
    base = ["shapes", "generate", "--model", str(root / "gen"), "--out", str(tmp_path / "o"), "--resolution", "32"]
    for extra, words in ((["--class", "giraffe"], "unknown class"), (["--class", "box", "--cfg", "0.5"], "--cfg"),
                         (["--class", "box", "--steps", "0"], "--steps")):
        capsys.readouterr()
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    bad = Path(shutil.copytree(root / "gen", tmp_path / "corrupt"))
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["shapes", "generate", "--model", str(bad), "--class", "box", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "checksum" in err and len(err.splitlines()) == 1


def test_point_cloud_condition_picks_the_shape():
    """One class, two toy shapes told apart only by their point clouds (around (+0.5, 0, 0) or (-0.5, 0, 0)):
    the masked generator conditioned by cross-attention on a cloud draws that shape's tokens."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    which = np.repeat([0, 1], 64)
    z = TOY_MEANS[which] + NOISE * rng.standard_normal((len(which), L, D))
    centres = np.array([[0.5, 0, 0], [-0.5, 0, 0]])
    clouds = centres[which][:, None] + 0.1 * rng.standard_normal((len(which), 64, 3))
    meta = {"mean": 0.0, "std": 1.0, "labels": ["toy"] * len(which), "splits": ["train"] * len(which)}
    data = LatentSet(torch.tensor(z, dtype=torch.float32), meta, points=torch.tensor(clouds), cond_points=32)
    torch.manual_seed(0)
    model = build_generator("masked", "tiny", L, D, 1, sample_steps=25, points=True)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        model(**data.get_batch("train", 64, g)).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    from domains.shapes.generator import point_features

    test_clouds = torch.tensor(centres[[0] * 8 + [1] * 8][:, None] + 0.1 * rng.standard_normal((16, 32, 3)),
                               dtype=torch.float32)
    out = generate(model, labels=torch.zeros(16, dtype=torch.long), context=point_features(test_clouds), steps=2,
                   cfg=3.0, head_steps=25, seed=0)
    torch.set_num_threads(threads)
    for c in (0, 1):
        mean = out[c * 8:(c + 1) * 8].mean(0).numpy()
        assert np.abs(mean - TOY_MEANS[c]).max() < 0.45, (c, mean)

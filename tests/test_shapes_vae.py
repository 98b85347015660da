"""The shape VAE: loss terms by hand, point-order invariance, learning a box, batches, train-vae and reconstruct."""

import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from cli import main
from domains.shapes.autoencode import DOMAIN, ROLE, OccupancyField, encode
from domains.shapes.batches import ShapeBatches
from domains.shapes.cache import prepare
from domains.shapes.dataset import find_meshes
from domains.shapes.mesh import inside
from domains.shapes.metrics import uniform_points, volume_iou
from domains.shapes.sampling import SamplingConfig, sample_shape
from domains.shapes.vae import PRESETS, ShapeVAE
from sciar.checkpoint import save_checkpoint

TINY = PRESETS["tiny"]
BOX = (1.8, 0.9, 1.35)  # a box as normalisation leaves it: largest side 1.8


def _box_sample():
    return sample_shape(trimesh.creation.box(BOX), SamplingConfig(surface_points=256, dense_factor=4, near_points=512,
                                                                  uniform_points=512), seed=0)


def test_loss_of_a_zeroed_model_is_log_two_and_no_kl():
    torch.manual_seed(0)
    model = ShapeVAE(TINY)
    for layer in (model.to_moments[-1], model.to_logit[-1]):  # mean 0, log-variance 0, logits 0
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    s = _box_sample()
    batch = {k: torch.from_numpy(v)[None] for k, v in s.items()}
    loss = model(**batch)
    assert model.last_terms["kl"] == 0.0
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)


def test_encoder_ignores_the_order_of_surface_points():
    torch.manual_seed(0)
    model = ShapeVAE(TINY).eval()
    s = _box_sample()
    perm = np.random.default_rng(0).permutation(len(s["surface"]))
    a = encode(model, s["surface"], s["normals"])
    b = encode(model, s["surface"][perm], s["normals"][perm])
    assert torch.allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def box_vae(tmp_path_factory):
    """A tiny VAE fitted to one box (120 steps), saved as a shapes VAE checkpoint."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: a second thread on a busy machine costs more than it gives
    s = _box_sample()
    model = ShapeVAE(TINY)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    batch = {k: torch.from_numpy(v)[None].repeat(4, *[1] * v.ndim) for k, v in s.items()}
    for _ in range(120):
        model(**batch).backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("ck") / "box-vae"
    save_checkpoint(path, model, {"model": TINY.to_dict()}, None, {"domain": DOMAIN, "role": ROLE})
    return model.eval(), s, path


def test_a_vae_fitted_to_a_box_decodes_the_box(box_vae):
    model, s, _ = box_vae
    field = OccupancyField(model, encode(model, s["surface"], s["normals"]))
    points = uniform_points(20_000, seed=1)
    truth = (np.abs(points) < np.array(BOX) / 2).all(1)
    assert volume_iou(field(points) > 0, truth) > 0.8


def test_reconstruct_maps_back_to_the_input_frame(box_vae, tmp_path, capsys):
    _, _, path = box_vae
    # the same box in other units and place: normalisation brings it to the box the VAE knows
    scale, shift = 250.0, np.array([1000.0, -40.0, 7.0])
    trimesh.creation.box(BOX).apply_scale(scale).apply_translation(shift).export(tmp_path / "box.ply")
    out = tmp_path / "rec.obj"
    assert main(["shapes", "reconstruct", str(tmp_path / "box.ply"), "--vae", str(path), "--out", str(out),
                 "--resolution", "32"]) == 0
    rec = trimesh.load(out, force="mesh")
    extent = np.array(BOX) * scale
    # in the input's coordinates, the reconstruction overlaps the box there
    points = shift + uniform_points(20_000, seed=3) * extent.max() / 1.8
    truth = (np.abs(points - shift) < extent / 2).all(1)
    assert volume_iou(inside(rec, points), truth) > 0.7
    # a corrupted checkpoint (a copy: the fixture's serves other tests) and a wrong output type: one line, exit 2
    path = Path(shutil.copytree(path, tmp_path / "corrupt"))
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["shapes", "reconstruct", str(tmp_path / "box.ply"), "--vae", str(path), "--out", str(out)]) == 2
    assert "checksum" in capsys.readouterr().err
    assert main(["shapes", "reconstruct", str(tmp_path / "box.ply"), "--vae", str(path), "--out",
                 str(tmp_path / "x.txt")]) == 2


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from tests.conftest import SHARED

    root = tmp_path_factory.mktemp("shrec")
    with tarfile.open(SHARED / "shapes" / "shrec_16.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("shrec_16/camel/train/T1")
                   or m.name.startswith("shrec_16/camel/train/T2")]
        tar.extractall(root, members=members, filter="data")
    files = find_meshes(root / "shrec_16", val_per_class=1)
    cache = tmp_path_factory.mktemp("cache")
    prepare(files, cache, SamplingConfig(surface_points=256, dense_factor=2, near_points=128, uniform_points=128),
            progress=False)
    return cache


def test_batches_are_a_function_of_the_generator(tiny_cache):
    src = ShapeBatches(tiny_cache, surface_points=256, query_points=64)
    assert len(src.splits["train"]) == 2 and len(src.splits["val"]) == 1  # T187, T219, T242: one held out

    def batch(split, seed):
        g = torch.Generator()
        g.manual_seed(seed)
        return src.get_batch(split, 2, g)

    a, b = batch("train", 5), batch("train", 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["surface"].shape == (2, 256, 3) and a["occupancy"].dtype == torch.bool
    # validation batches are not augmented: every query is one of the stored ones, half of them near the surface
    v = batch("val", 1)
    stored = src.splits["val"][0]["queries"]
    rows = [int(np.flatnonzero((stored == q).all(1))[0]) for q in v["queries"][0].numpy()]
    assert sum(r < 128 for r in rows) == 32
    with pytest.raises(Exception, match="surface points"):
        ShapeBatches(tiny_cache, surface_points=512, query_points=64)


def test_train_vae_command_trains_and_resumes(tiny_cache, tmp_path, capsys):
    out = tmp_path / "vae"
    args = ["shapes", "train-vae", "--cache", str(tiny_cache), "--out", str(out), "--preset", "tiny",
            "--batch-size", "2", "--threads", "1"]
    # the tiny preset reads 256 surface points per mesh, as cached
    assert main(args + ["--steps", "2"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "last" / "trainer.json").is_file()
    assert main(args + ["--steps", "4"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert main(args + ["--preset", "huge"]) == 2


def test_benchmark_script_scores_grid_and_vae(box_vae, tmp_path, benchmark_module):
    from tests.conftest import SHARED

    _, _, path = box_vae
    with tarfile.open(SHARED / "shapes" / "shrec_16.tar.gz") as tar:
        tar.extractall(tmp_path, members=[m for m in tar.getmembers() if m.name.startswith("shrec_16/two_balls/")],
                       filter="data")
    result = benchmark_module("shapes").main(["--meshes", str(tmp_path / "shrec_16"), "--per-class", "1", "--sizes",
                                              "12", "--resolution", "32", "--vae", str(path),
                                              "--json", str(tmp_path / "b.json")])
    assert result["grid_baseline"]["meshes"] == 1 and result["vae"]["meshes"] == 1 and result["vae_train"]["meshes"] == 1
    for key in ("grid_baseline", "vae", "vae_train"):
        assert 0 <= result[key]["iou"] <= 1 and set(result[key]) >= {"iou", "chamfer", "fscore_002", "fscore_004"}


def test_encode_command_writes_latents_and_their_scale(box_vae, tiny_cache, tmp_path):
    from domains.shapes.autoencode import read_latents
    from domains.shapes.cache import read_index

    _, _, path = box_vae
    out = tmp_path / "z.safetensors"
    assert main(["shapes", "encode", "--vae", str(path), "--cache", str(tiny_cache), "--out", str(out)]) == 0
    z, meta = read_latents(out)
    index = read_index(tiny_cache)
    assert z.shape == (3, TINY.num_latents, TINY.latent_dim) and torch.isfinite(z).all()
    assert meta["splits"] == list(index["split"]) and meta["paths"] == list(index["path"])
    train = z[[s == "train" for s in meta["splits"]]].numpy()
    assert meta["std"] == pytest.approx(float(np.std(train, ddof=1)), rel=1e-4)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Exception, match="not a latents file"):
        read_latents(tmp_path / "junk.safetensors")

"""The shipped shape generator (data/checkpoints/shapes-small, its VAE in vae/): it loads, records how it was
trained, and `sciar shapes generate` without --model makes a closed mesh of a class."""

import json

import numpy as np
import trimesh

from cli import main
from domains.shapes.adapter import ADAPTER
from sciar.paths import find_checkpoint


def test_shipped_checkpoints_record_their_training():
    path = find_checkpoint(ADAPTER.checkpoints[0])
    gen, vae = (json.loads((p / "domain.json").read_text()) for p in (path, path / "vae"))
    assert gen["role"] == "generator" and gen["kind"] == "masked" and vae["role"] == "vae"
    assert gen["command"].startswith("sciar shapes train ") and vae["command"].startswith("sciar shapes train-vae ")
    assert gen["data_fingerprint"] == vae["data_fingerprint"] and len(gen["classes"]) == 30
    assert gen["vae_weights_sha256"] == vae["weights_sha256"]
    for p in path.rglob("*"):
        assert p.stat().st_size < 25 * 2**20, p


def test_generate_without_a_model_makes_a_closed_camel(tmp_path):
    assert main(["shapes", "generate", "--class", "camel", "-n", "1", "--steps", "8", "--resolution", "64",
                 "--out", str(tmp_path)]) == 0
    mesh = trimesh.load(tmp_path / "camel-0.obj", force="mesh")
    assert len(mesh.faces) > 200
    # marching cubes of a field that is outside at the cube's border: closed, with a volume inside [-1, 1]^3
    assert mesh.is_watertight and mesh.volume > 0.01
    assert np.abs(mesh.vertices).max() <= 1.0
    assert (tmp_path / "shapes.png").stat().st_size > 1000

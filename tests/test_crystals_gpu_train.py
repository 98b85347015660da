"""benchmarks/gpu_train.py end to end on CPU: prepare the token stream, train within a budget, ship back, reassemble."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from sciar.checkpoint import load_language_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "crystals"


def _gpu_train():
    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "benchmarks" / "gpu_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_run_assemble_round_trip(tmp_path):
    gt = _gpu_train()
    csv = tmp_path / "slice.csv"
    pd.read_csv(SHARED / "perov_5" / "train.csv.gz").head(60).to_csv(csv, index=False)
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "work"
    gt.prepare(data, data=[str(csv)])
    meta = json.loads((data / "crystal_tokens.json").read_text())
    assert meta["n_train_cifs"] + meta["n_val_cifs"] == 60 and meta["n_val_cifs"] >= 1

    gt.run(data, out, seconds=1, presets=["tiny"], shares=[1.0], work=work, device="cpu", probe_steps=1, min_steps=2)
    shards = sorted(out.glob("tiny.*.safetensors"))
    assert shards and (out / "runs.tar").is_file()
    assert all(v.dtype == torch.float16 for f in shards for v in load_file(str(f)).values())

    gt.assemble(out, tmp_path / "ck")
    model, tok, ck = load_language_model(tmp_path / "ck" / "crystal-tiny-gpu", "crystal")
    assert ck.domain["preset"] == "tiny" and ck.domain["data_fingerprint"] == meta["data_fingerprint"]
    assert ck.domain["step"] == 2 and "fp16" in ck.domain["weights_note"]
    trained = load_file(str(work / "tiny" / "model.safetensors"))
    got = model.state_dict()
    for k, v in trained.items():  # the same weights, up to fp16 rounding
        assert torch.allclose(got[k], v, rtol=1e-3, atol=1e-4), k

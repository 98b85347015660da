"""benchmarks/gpu_train.py end to end on CPU: prepare the token stream, train within a budget, ship back, reassemble."""

import json
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from sciar.checkpoint import load_language_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "crystals"


def test_prepare_run_assemble_round_trip(tmp_path, benchmark_module):
    gt = benchmark_module("gpu_train")
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


def test_fine_tune_a_named_set_from_a_checkpoint(tmp_path, benchmark_module):
    """Per-split fine-tuning: a named token set validated on its own val rows, started from a checkpoint."""
    gt = benchmark_module("gpu_train")
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    pd.read_csv(SHARED / "perov_5" / "train.csv.gz").head(40).to_csv(train, index=False)
    pd.read_csv(SHARED / "perov_5" / "val.csv.gz").head(30).to_csv(val, index=False)
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "work"
    gt.prepare(data, data=[str(train)], name="perov", val=str(val), val_rows=12)
    meta = json.loads((data / "perov_tokens.json").read_text())
    assert meta["n_train_cifs"] == 40 and meta["n_val_cifs"] == 12  # every training row trains; val from its file

    gt.run(data, out, seconds=1, presets=["tiny"], shares=[1.0], work=work, device="cpu", probe_steps=1, min_steps=2,
           sets=["perov"])
    base = work / "tiny-perov"
    gt.run(data, tmp_path / "out2", seconds=1, presets=["tiny"], shares=[1.0], work=tmp_path / "work2", device="cpu",
           probe_steps=1, min_steps=2, sets=["perov"], init=base, lr=1e-4)
    res = json.loads((tmp_path / "work2" / "results.json").read_text())["runs"]["tiny-perov"]
    assert res["lr"] == 1e-4 and res["val_before"] > 0
    _, _, ck = load_language_model(tmp_path / "work2" / "tiny-perov", "crystal")
    assert ck.domain["init"]["checkpoint"] == str(base) and ck.domain["val_data"].endswith("perov_val12.csv")
    # the fine-tune began from the checkpoint's weights: its loss before training is the base model's, not a fresh one's
    src, cpu = gt._source(data, "perov")[0], torch.device("cpu")
    model = load_language_model(base, "crystal")[0]
    before = gt.val_loss(model, src, 8, cpu)
    torch.manual_seed(1337)
    fresh = gt.val_loss(type(model)(model.cfg), src, 8, cpu)
    assert abs(before - res["val_before"]) < 1e-3 < abs(fresh - res["val_before"])

"""The moving average of the weights (sciar.ema) through training, checkpoints and resume."""

import pytest
import torch
from safetensors.torch import load_file

from core_tasks import TOK, ReverseTask
from safetensors.torch import save_file

from sciar.checkpoint import check_weights, load_weights, read_checkpoint
from sciar.ema import EMA
from sciar.errors import CheckpointError, SciarError
from sciar.io import sha256_file
from sciar.model import LanguageModel, ModelConfig
from sciar.train import TrainConfig, train


def _model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, block_size=20, n_layer=1, n_head=2, n_embd=16)
    return LanguageModel(cfg), cfg


def _params(model) -> dict:
    return {k: v.detach().double().clone() for k, v in model.state_dict().items()}


def test_ema_follows_the_recurrence_and_resumes_exactly(tmp_path):
    decay = 0.8
    tc = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=3, eval_batches=1,
                     save_every=3, progress=False, ema=decay)
    model, cfg = _model()
    avg = _params(model)  # the average starts at the initial weights

    def record(step, rec):  # after each optimizer step: e_k = d e_{k-1} + (1 - d) w_k, by hand
        for k, w in _params(model).items():
            avg[k] = decay * avg[k] + (1 - decay) * w

    train(model, ReverseTask(), tc, tmp_path / "a", {"model": cfg.to_dict()}, TOK, {"domain": "test"}, callback=record)
    a = load_file(str(tmp_path / "a" / "last" / "ema.safetensors"))
    for k, v in a.items():
        assert torch.allclose(v.double(), avg[k], atol=1e-6), k
    assert read_checkpoint(tmp_path / "a").domain["ema_sha256"]  # the best weights carry their average too

    class Stop(Exception):
        pass

    def stop_at_4(step, rec):
        if step == 4:
            raise Stop

    model, cfg = _model()
    with pytest.raises(Stop):
        train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"}, callback=stop_at_4)
    model, cfg = _model()
    train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"})  # resumes at 3
    b = load_file(str(tmp_path / "b" / "last" / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    ck = read_checkpoint(tmp_path / "b" / "last")
    assert check_weights(ck)["ema"]
    loaded, _ = _model()
    load_weights(ck, loaded, ema=True)
    assert torch.equal(loaded.trunk.wte.weight, b["head.weight"] if "head.weight" in b else b["trunk.wte.weight"])
    assert loaded.head.weight is loaded.trunk.wte.weight  # still tied


def test_a_corrupt_or_absent_ema_file_is_refused(tmp_path):
    model, cfg = _model()
    tc = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_batches=0, save_every=2, progress=False, ema=0.5)
    train(model, ReverseTask(), tc, tmp_path / "a", {"model": cfg.to_dict()}, TOK, {"domain": "test"})
    path = tmp_path / "a" / "ema.safetensors"
    # a diverged average whose checksum matches: check_weights finds the NaN
    ck = read_checkpoint(tmp_path / "a")
    tensors = load_file(str(path))
    next(iter(tensors.values()))[0] = float("nan")
    save_file(tensors, str(path))
    ck.domain["ema_sha256"] = sha256_file(path)
    with pytest.raises(CheckpointError, match="EMA tensors hold NaN"):
        check_weights(ck)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted EMA"):
        read_checkpoint(tmp_path / "a")
    path.unlink()
    with pytest.raises(CheckpointError, match="missing ema.safetensors"):
        read_checkpoint(tmp_path / "a")

    model, cfg = _model()
    train(model, ReverseTask(), TrainConfig(max_steps=1, batch_size=2, warmup_steps=1, eval_batches=0, progress=False),
          tmp_path / "plain", {"model": cfg.to_dict()}, TOK, {"domain": "test"})
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_weights(read_checkpoint(tmp_path / "plain"), model, ema=True)
    with pytest.raises(SciarError, match="ema"):
        TrainConfig(ema=1.0)
    with pytest.raises(SciarError, match="decay"):
        EMA(model, 0.0)

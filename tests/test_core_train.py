import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core_tasks import TOK, MaskedFiller, MaskedSource, ReverseTask, SegmentForecaster, SinusoidSource, sinusoid_batch
from sciar.checkpoint import load_language_model, read_checkpoint
from sciar.errors import DataError
from sciar.model import LanguageModel, ModelConfig
from sciar.decode.tokens import generate
from sciar.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def reverse_model(dropout=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, block_size=20, n_layer=2, n_head=4, n_embd=64, dropout=dropout)
    return LanguageModel(cfg), cfg


def test_learns_reversal_to_near_zero_loss(tmp_path):
    model, cfg = reverse_model()
    tc = TrainConfig(max_steps=800, batch_size=32, lr=3e-3, min_lr=1e-4, warmup_steps=30, weight_decay=0.0,
                     eval_every=200, eval_batches=4, save_every=300, progress=False)
    summary = train(model, ReverseTask(), tc, tmp_path, {"model": cfg.to_dict()}, TOK, {"domain": "test"})
    assert summary["best_val"] < 0.05, summary
    lm, tok, ck = load_language_model(tmp_path, domain="test")
    assert (tmp_path / "train_log.csv").is_file() and (tmp_path / "loss.png").is_file()
    words = ["fedcba", "abcabc", "ddeeff", "cafe", "bead", "abc"]
    gens = generate(lm, [tok.encode(w + "|") for w in words], max_new_tokens=10, top_k=1, stop=[tok.encode("\n")])
    assert [tok.decode(g.tokens) for g in gens] == [w[::-1] + "\n" for w in words]


def test_continuous_next_segment_beats_persistence(tmp_path):
    torch.manual_seed(0)
    model = SegmentForecaster()
    tc = TrainConfig(max_steps=300, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.0,
                     eval_batches=0, save_every=300, progress=False)
    train(model, SinusoidSource(), tc, tmp_path, {"model": model.cfg.to_dict()}, None, {"domain": "test"})
    g = torch.Generator().manual_seed(123)
    x = sinusoid_batch(256, 8, 16, g)
    with torch.no_grad():
        mse = torch.mean((model.predict(x[:, :-1]) - x[:, 1:]) ** 2).item()
    persistence = torch.mean((x[:, :-1] - x[:, 1:]) ** 2).item()
    assert mse < 0.25 * persistence, (mse, persistence)


def test_bidirectional_masked_fill(tmp_path):
    torch.manual_seed(0)
    model = MaskedFiller()
    tc = TrainConfig(max_steps=300, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.0,
                     eval_batches=0, save_every=300, progress=False)
    train(model, MaskedSource(), tc, tmp_path, {"model": model.cfg.to_dict()}, None, {"domain": "test"})
    batch = MaskedSource().get_batch("val", 256, torch.Generator().manual_seed(9))
    with torch.no_grad():
        pred = model.predict(batch["x"], batch["known"])
    miss = ~batch["known"]
    mse = torch.mean((pred[miss] - batch["x"][miss]) ** 2).item()
    variance = batch["x"][miss].var().item()  # what predicting the mean would score
    assert mse < 0.2 * variance, (mse, variance)


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_gives_the_same_weights(tmp_path):
    tc = TrainConfig(max_steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=10, eval_batches=2,
                     save_every=10, progress=False)
    model, cfg = reverse_model(dropout=0.1)  # dropout: the RNG state must be restored too
    train(model, ReverseTask(), tc, tmp_path / "a", {"model": cfg.to_dict()}, TOK, {"domain": "test"})

    def stop_at_15(step, rec):
        if step == 15:
            raise Interrupt

    model, cfg = reverse_model(dropout=0.1)
    try:
        train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"}, callback=stop_at_15)
    except Interrupt:
        pass
    assert read_checkpoint(tmp_path / "b" / "last").domain["step"] == 10
    model, cfg = reverse_model(dropout=0.1)
    summary = train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"})
    assert summary["steps"] == 30
    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ctrl_c_saves_the_step_it_stopped_at_and_resume_matches(tmp_path):
    tc = TrainConfig(max_steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=10, eval_batches=2,
                     save_every=10, progress=False)
    model, cfg = reverse_model(dropout=0.1)
    train(model, ReverseTask(), tc, tmp_path / "a", {"model": cfg.to_dict()}, TOK, {"domain": "test"})

    def ctrl_c_at_13(step, rec):
        if step == 13:
            os.kill(os.getpid(), signal.SIGINT)

    model, cfg = reverse_model(dropout=0.1)
    with pytest.raises(KeyboardInterrupt):
        train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"},
              callback=ctrl_c_at_13)
    assert read_checkpoint(tmp_path / "b" / "last").domain["step"] == 13  # not 10: nothing since the save is lost
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    model, cfg = reverse_model(dropout=0.1)
    assert train(model, ReverseTask(), tc, tmp_path / "b", {"model": cfg.to_dict()}, TOK, {"domain": "test"})["steps"] == 30
    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path):
    tc = TrainConfig(max_steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_batches=0, save_every=10,
                     progress=False)
    model, cfg = reverse_model()

    def poison_at_12(step, rec):
        if step == 12:  # the next step's loss is NaN
            with torch.no_grad():
                model.trunk.ln_f.weight.fill_(float("nan"))

    with pytest.raises(DataError, match="loss became nan at step 12"):
        train(model, ReverseTask(), tc, tmp_path, {"model": cfg.to_dict()}, TOK, {"domain": "test"}, callback=poison_at_12)
    last = read_checkpoint(tmp_path / "last")
    assert last.domain["step"] == 10
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "last" / "model.safetensors")).values())


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(worker), str(tmp_path / "single"), "2"], check=True, env=env, timeout=300)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         str(worker), str(tmp_path / "ddp"), "2"],
        check=True, env=env, timeout=300,
    )
    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    # and training moved the weights
    model, _ = reverse_model()
    assert not torch.allclose(model.trunk.blocks[0].attn.qkv.weight, a["trunk.blocks.0.attn.qkv.weight"])

"""The segment forecaster: loss, normalisation, rolling forecasts, adapter-only training, checkpoints."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sciar.errors import CheckpointError, DataError, SciarError
from sciar.model import ModelConfig
from domains.timeseries.data import CALENDAR_SIZES, Part, calendar, read_csv
from domains.timeseries.model import HeadConfig, SegmentForecaster, build_model
from domains.timeseries.pipeline import (corpus_parts, fit_window, evaluate_model, fit, load_forecaster, model_configs, prepare,
                                         train_config)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "timeseries"


def tiny(segment=24, context=3, time=True, embed="mlp"):
    torch.manual_seed(0)
    mcfg = ModelConfig(vocab_size=0, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    return SegmentForecaster(mcfg, HeadConfig(segment=segment, context=context, embed=embed, hidden=32, dropout=0.0,
                                              time=time))


def test_loss_and_gradients_reach_every_part():
    m = tiny()
    x = torch.randn(4, 96)
    marks = torch.zeros(4, 4, 10, dtype=torch.long)
    loss = m(x, marks)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("embed", "proj", "time", "trunk", "mix"):
        grads = [p.grad for n, p in m.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
    with pytest.raises(SciarError, match="whole segments"):
        m(torch.randn(2, 30))


def test_forecast_is_affine_equivariant_and_rolls_any_horizon():
    """Per-window normalisation: scaling and shifting the lookback scales and shifts the forecast."""
    m = tiny(time=False).eval()
    ctx = torch.randn(3, 72)
    y = m.forecast(ctx, None, 50)
    assert y.shape == (3, 50)
    y2 = m.forecast(ctx * 7.0 + 3.0, None, 50)
    assert torch.allclose(y2, y * 7.0 + 3.0, atol=1e-3)
    # rolling: the first segment of a longer forecast equals the one-segment forecast
    assert torch.allclose(m.forecast(ctx, None, 24), y[:, :24], atol=1e-5)
    long = m.forecast(ctx, None, 24 * 20)  # beyond block_size: the oldest segments are dropped
    assert long.shape == (3, 480) and torch.isfinite(long).all()
    with pytest.raises(SciarError, match="multiple"):
        m.forecast(torch.randn(1, 50), None, 10)


def test_in_context_prompt_and_samples():
    m = tiny(time=False).eval()
    ctx = torch.randn(2, 72)
    prompt = torch.randn(2, 48)
    a = m.forecast(ctx, None, 24)
    b = m.forecast(ctx, None, 24, prompt=prompt)
    assert b.shape == a.shape and not torch.allclose(a, b)  # the prompt is read
    s = m.sample(ctx, None, 48, n=16, residual_std=0.5, seed=1)
    assert s.shape == (2, 16, 48)
    spread = s.std(dim=1)
    assert (spread[:, 24:].mean() > spread[:, :24].mean())  # uncertainty grows as errors compound
    s0 = m.sample(ctx, None, 48, n=4, residual_std=0.0)
    assert torch.allclose(s0[:, 0], m.forecast(ctx, None, 48), atol=1e-5)


def test_calendar_marks_change_the_forecast():
    m = tiny(time=True).eval()
    with torch.no_grad():
        for t in m.time.tables:
            t.weight.normal_(0, 1.0)
    ctx = torch.randn(1, 72)
    mk = torch.zeros(1, 4, 10, dtype=torch.long)
    mk2 = mk.clone()
    mk2[..., 0] = 5
    assert not torch.allclose(m.forecast(ctx, mk, 24), m.forecast(ctx, mk2, 24))


def _etth1_slice(rows=3000):
    s = read_csv(SHARED / "ETTh1.csv")
    s.values, s.timestamps, s.name = s.values[:rows], s.timestamps[:rows], "hourly_slice"
    return s


def test_train_checkpoint_reload_and_adapter_only(tmp_path):
    s = _etth1_slice()
    prep = prepare(s, 72)
    m = tiny()
    fit_window(m, prep.train, prep.val)  # the validation split (372 rows) holds 15 segments of 24, not 16
    assert m.head.window == 15
    tc = train_config("tiny", max_steps=30, progress=False, eval_every=15, save_every=15, device="cpu", batch_size=16)
    summ = fit(m, [prep.train], [prep.val], tmp_path / "ck", tc)
    assert summ["steps"] == 30 and np.isfinite(summ["best_val"])
    loaded, ck = load_forecaster(tmp_path / "ck")
    assert ck.domain["domain"] == "timeseries" and ck.tokenizer is None
    assert ck.config["head"]["segment"] == 24 and ck.config["head"]["window"] == 15
    before = evaluate_model(loaded, prep, 72, [24, 48])
    assert before["48"]["mse"] > 0 and before["windows"] > 100

    # adapter-only: the frozen trunk does not move, the adapter does
    trunk0 = {k: v.clone() for k, v in loaded.trunk.state_dict().items()}
    emb0 = loaded.embed[0].weight.detach().clone()
    loaded.head.context = 3
    fit(loaded, [prep.train], [prep.val], tmp_path / "adapter", tc, adapter_only=True)
    a, ck2 = load_forecaster(tmp_path / "adapter")
    assert ck2.domain["adapter_only"] and ck2.domain["trainable_params"] < ck2.domain["params"] / 2
    for k, v in a.trunk.state_dict().items():
        assert torch.equal(v, trunk0[k]), k
    assert not torch.equal(a.embed[0].weight, emb0)

    with pytest.raises(CheckpointError):
        build_model({"model": {"n_layer": "x"}, "head": {}})


def test_training_learns_a_clean_seasonal_signal(tmp_path):
    """A real check of learning: on a noisy daily cycle the trained model beats the untrained one by far."""
    t = np.arange(4000)
    rng = np.random.default_rng(0)
    v = (np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=t.size)).astype(np.float32)[:, None]
    cal = calendar(pd.date_range("2020", periods=4000, freq="h"), 4000, pd.Timedelta("1h"))
    m = tiny()
    parts = [Part(v[:3000], cal[:3000])]
    test_ctx = torch.from_numpy(np.stack([v[s : s + 72, 0] for s in range(3000, 3800, 37)]))
    truth = np.stack([v[s + 72 : s + 120, 0] for s in range(3000, 3800, 37)])
    m.eval()
    err0 = float(np.mean((m.forecast(test_ctx, None, 48).numpy() - truth) ** 2))
    m.train()
    tc = train_config("tiny", max_steps=150, progress=False, eval_every=150, device="cpu", lr=3e-3, batch_size=32)
    fit(m, parts, None, tmp_path / "sine", tc)
    m.eval()
    err = float(np.mean((m.forecast(test_ctx, None, 48).numpy() - truth) ** 2))
    assert err < 0.1 and err < err0 / 3


def test_corpus_parts_split_each_series_in_time():
    s = _etth1_slice(2000)
    tr, va = corpus_parts([s], lookback=96)
    assert tr[0].values.shape[0] == 1800 and va[0].values.shape[0] == 296
    assert abs(float(tr[0].values.mean())) < 1e-3  # standardised by its own training part


def test_presets_are_valid():
    for p in ("tiny", "small", "default", "base"):
        mcfg, head = model_configs(p)
        assert mcfg.vocab_size == 0 and head.segment == 96 and mcfg.block_size >= head.context + 1
    with pytest.raises(SciarError, match="preset"):
        model_configs("huge")


def test_finetuning_keeps_the_backbone_when_validation_says_so(tmp_path):
    from domains.timeseries.pipeline import train_on_series

    s = _etth1_slice(2400)
    # a learning rate this large wrecks the backbone: the validation split must keep the starting weights
    summ = train_on_series(None, tmp_path / "ft", init="timeseries-pretrained", series=s, lookback=672, max_steps=4,
                           lr=0.5, batch_size=8, progress=False, device="cpu")
    assert summ["kept_start"] and summ["start_val"] < summ["best_val"]
    ft, ck = load_forecaster(tmp_path / "ft")
    base, _ = load_forecaster("timeseries-pretrained")
    assert ck.domain["kept_start"] and ck.domain["stage"] == "finetune" and not ck.domain["adapter_only"]
    assert ck.domain["val_horizons"] == [96, 192] and ft.stats is None  # cut to what the small windows hold
    for (k, v), (_, w) in zip(ft.state_dict().items(), base.state_dict().items()):
        assert torch.equal(v, w), k


def test_skip_path_starts_as_the_least_squares_linear_forecaster():
    from domains.timeseries.pipeline import init_skip

    t = np.arange(3000)
    rng = np.random.default_rng(1)
    v = (np.sin(2 * np.pi * t / 24) + 0.05 * rng.normal(size=t.size)).astype(np.float32)[:, None]
    torch.manual_seed(0)
    mcfg = ModelConfig(vocab_size=0, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    m = SegmentForecaster(mcfg, HeadConfig(segment=24, context=3, hidden=32, dropout=0.0, time=False, skip=3))
    init_skip(m, [Part(v[:2500], np.zeros((2500, 5), dtype=np.int64))])
    m.eval()
    ctx = torch.from_numpy(np.stack([v[s : s + 72, 0] for s in range(2500, 2900, 17)]))
    truth = np.stack([v[s + 72 : s + 96, 0] for s in range(2500, 2900, 17)])
    pred = m.forecast(ctx, None, 24).numpy()
    # the projection starts at zero: the forecast is the linear map alone, and it already fits the cycle
    xn = (ctx - ctx.mean(1, keepdim=True)) / torch.sqrt(ctx.var(1, keepdim=True, unbiased=False) + 1e-5)
    lin = (xn @ m.skip.weight.T) * torch.sqrt(ctx.var(1, keepdim=True, unbiased=False) + 1e-5) + ctx.mean(1, keepdim=True)
    assert np.allclose(pred, lin.detach().numpy(), atol=1e-4)
    assert float(np.mean((pred - truth) ** 2)) < 0.01


def test_flat_windows_do_not_blow_up():
    """A window that is flat but for a tiny blip (no rain for days) stays on the scale of the data."""
    m = tiny(time=False).eval()
    ctx = torch.zeros(2, 72)
    ctx[:, 40] = 1e-4
    y = m.forecast(ctx, None, 48)
    assert torch.isfinite(y).all() and y.abs().max() < 0.5
    x = torch.zeros(2, 96)
    x[:, 10] = 1e-4
    x[:, 80] = 5.0  # a jump right after a flat lookback: the loss stays bounded
    with torch.no_grad():
        assert float(m(x)) < 1e6


def test_rolled_validation_scores_the_rolled_forecast(tmp_path):
    """Validation by rolling: the loss on a val batch is the benchmark's figure (MSE of the rolled forecast,
    averaged over horizons, in standardised units), and training selects checkpoints by it."""
    from domains.timeseries.data import SegmentWindows
    from domains.timeseries.pipeline import rolled_horizons, val_loss

    m = tiny().eval()
    x = torch.randn(3, 24 * 6) * 2 + 1
    marks = torch.randint(0, 4, (3, 6, 10))
    pred = m.forecast(x[:, :72], marks, 60)
    want = np.mean([float(((pred[:, :h] - x[:, 72 : 72 + h]) ** 2).mean()) for h in (24, 60)])
    with torch.no_grad():
        got = float(m(x, marks, horizons=torch.tensor([24, 60])))
        nxt = float(m(x, marks))
    assert abs(got - want) < 1e-5
    assert abs(got - nxt) > 1e-3  # not the next-segment loss
    with pytest.raises(SciarError, match="cannot score"):
        m(x, marks, horizons=torch.tensor([96]))

    m.head.window = 5  # 5 segments of 24 after a lookback of 72 leave 48 steps to score
    assert rolled_horizons(m.head, [24, 96, 720]) == [24, 48] and rolled_horizons(m.head, None) is None
    s = _etth1_slice()
    prep = prepare(s, 72)
    src = SegmentWindows([prep.train], [prep.val], 24, 4, val_horizons=[24, 48])
    g = torch.Generator().manual_seed(0)
    assert "horizons" not in src.get_batch("train", 4, g) and src.get_batch("val", 4, g)["horizons"].tolist() == [24, 48]
    tc = train_config("tiny", max_steps=20, progress=False, eval_every=10, save_every=10, device="cpu", batch_size=8)
    summ = fit(m.train(), [prep.train], [prep.val], tmp_path / "rv", tc, val_horizons=[24, 96])
    assert summ["val_horizons"] == [24, 48]
    best, ck = load_forecaster(tmp_path / "rv")
    assert ck.domain["val_horizons"] == [24, 48]
    # the kept checkpoint's validation loss is the rolled figure train() recorded as the best
    assert abs(val_loss(best, src, tc) - summ["best_val"]) < 1e-4


def test_stats_embedding_starts_silent_then_reads_the_level(tmp_path):
    """The window-statistics embedding: a backbone given it forecasts as before; once trained it sees the
    level the normalisation removed (no longer shift-equivariant); checkpoints keep it."""
    m = tiny(time=False).eval()
    ctx = torch.randn(3, 72)
    before = m.forecast(ctx, None, 48)
    m.add_stats()
    assert m.head.stats and torch.allclose(m.forecast(ctx, None, 48), before)
    with torch.no_grad():
        m.stats.weight.normal_(0, 1.0)
    after = m.forecast(ctx, None, 48)
    assert not torch.allclose(after, before, atol=1e-3)
    shifted = m.forecast(ctx + 3.0, None, 48)
    assert not torch.allclose(shifted, after + 3.0, atol=1e-3)  # the level now matters
    assert any(p is m.stats.weight for p in m.adapter_parameters())
    assert any(p is m.stats.weight for p in m.adapter_parameters())


def test_cached_roll_equals_the_uncached_loop_of_82c2686(benchmark_module):
    """The forecasts on the cached loop against the loop that re-ran the trunk over the whole window per segment
    (benchmarks/timeseries_recipes.py): past the window (the slide), with calendar marks, a prompt, the linear
    skip path and the statistics inputs."""
    uncached_roll = benchmark_module("timeseries_recipes").uncached_roll
    m = tiny().eval()
    m.add_skip(2)
    m.add_stats()
    with torch.no_grad():
        for p in (m.skip.weight, m.stats.weight, m.stats_out.weight):
            p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(0)
    ctx, prompt = torch.randn(3, 72, generator=g), torch.randn(3, 24, generator=g)
    H = 24 * 20  # 3 + 20 segments: past the trained window (15) and the model's context (16)
    marks = torch.randint(0, 3, (3, 3 + 20, 10), generator=g)
    pm = torch.randint(0, 3, (3, 1, 10), generator=g)
    with torch.no_grad():
        for kw in ({}, {"prompt": prompt, "prompt_marks": pm}):
            want = uncached_roll(m, ctx, marks, H, **kw)
            torch.testing.assert_close(m.forecast(ctx, marks, H, **kw), want, rtol=1e-5, atol=1e-5)


def test_rolled_training_recipe_trains_through_the_roll(benchmark_module):
    """benchmarks/timeseries_recipes.py: next-segment loss plus the rolled forecast's error, gradients to both."""
    recipes = benchmark_module("timeseries_recipes")
    m = tiny(time=False)
    m.add_stats()
    r = recipes.RecipeForecaster.of(m, rolled=48).train()
    x = torch.randn(4, 24 * 6)
    loss = r(x)
    with torch.no_grad():
        r.eval()
        want = r.next_loss(x) + r.rolled_loss(x, None, [48])
    r.train()
    assert abs(loss.item() - want.item()) < 1e-4  # dropout is 0 in tiny()
    loss.backward()
    assert r.stats.weight.grad.abs().sum() > 0


def test_stats_checkpoint_roundtrip(tmp_path):
    from sciar.checkpoint import save_checkpoint

    m = tiny(time=False)
    m.add_stats()
    with torch.no_grad():
        m.stats.bias.fill_(0.5)
    save_checkpoint(tmp_path / "ck", m, {"model": m.cfg.to_dict(), "head": m.head.to_dict()}, None,
                    {"domain": "timeseries"})
    back, _ = load_forecaster(tmp_path / "ck")
    assert back.stats is not None and torch.equal(back.stats.bias, m.stats.bias)
    ctx = torch.randn(2, 72)
    assert torch.allclose(back.forecast(ctx, None, 30), m.eval().forecast(ctx, None, 30))


def test_forecast_uses_the_training_scaler_only_where_the_level_matters():
    from domains.timeseries.forecast import forecast_channel

    s = _etth1_slice(600)
    m = tiny(time=False).eval()
    a = forecast_channel(m, s, "OT", 30, 72, ensemble=False)["mean"]  # the model alone
    b = forecast_channel(m, s, "OT", 30, 72, scaler=(5.0, 2.0), ensemble=False)["mean"]
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4)  # per-window normalisation: the scaler cancels out
    m.add_stats()
    with torch.no_grad():
        m.stats_out.weight.normal_(0, 1.0)
    a = forecast_channel(m, s, "OT", 30, 72, ensemble=False)["mean"]
    b = forecast_channel(m, s, "OT", 30, 72, scaler=(5.0, 2.0), ensemble=False)["mean"]
    assert not np.allclose(a, b, atol=1e-3)  # the level, in training units, now shapes the forecast


def test_benchmark_passes_the_training_recipe_through(tmp_path):
    """The benchmark's `sciar` from a backbone is trained as asked (here adapter-only with the window
    statistics, the recipe that wins on ETTh1's validation split), selected on the rolled validation figure."""
    from domains.timeseries.bench import run_benchmark

    csv = tmp_path / "hourly.csv"
    pd.read_csv(SHARED / "ETTh1.csv").iloc[:2400].to_csv(csv, index=False)
    res = run_benchmark(csv, 672, [96], tmp_path / "b.json", init="timeseries-pretrained", max_steps=2, ets=False,
                        max_windows=10, out=tmp_path / "run", progress=False, device="cpu", log=lambda *_: None,
                        adapter_only=True, stats=True, score_split="val")
    assert res["scored_split"] == "val"
    m = res["methods"]["sciar"]
    assert m["adapter_only"] is True and m["stats"] is True and m["start_val"] > 0
    _, ck = load_forecaster(tmp_path / "run" / "sciar")
    assert ck.config["head"]["stats"] and ck.domain["val_horizons"] and ck.domain["trainable_params"] < ck.domain["params"]


def test_last_value_anchor_centres_windows_on_the_lookback_end():
    m = tiny(time=False)
    m.head.anchor = "last"
    x = torch.randn(3, 96).cumsum(1)  # random walks: their last value is far from their mean
    xn, centre, _ = m.normalise(x, 72)
    assert torch.allclose(centre[:, 0], x[:, 71]) and torch.allclose(xn[:, 71], torch.zeros(3), atol=1e-6)
    # a forecast shifts with the series (the anchor is undone after prediction)
    with torch.no_grad():
        a = m.eval().forecast(x[:, :72], None, 24)
        b = m.forecast(x[:, :72] + 5.0, None, 24)
    assert torch.allclose(b, a + 5.0, atol=1e-4)
    with pytest.raises(SciarError, match="anchor"):
        HeadConfig(anchor="median")
    assert HeadConfig.from_dict({"segment": 96}).anchor == "mean"  # checkpoints written before the field


def test_forecast_adds_the_linear_maps_only_with_enough_history():
    from domains.timeseries.forecast import ensemble_rows, forecast_channel

    m = tiny(time=False).eval()
    need = ensemble_rows(72, 30)
    s = _etth1_slice(need)
    assert forecast_channel(m, s, "OT", 30, 72)["ensemble"] is True
    short = _etth1_slice(need - 1)
    assert forecast_channel(m, short, "OT", 30, 72)["ensemble"] is False
    with pytest.raises(DataError, match="--no-ensemble"):
        forecast_channel(m, short, "OT", 30, 72, ensemble=True)


def test_untimed_stage_moves_only_the_unknown_calendar_entries(tmp_path):
    from domains.timeseries.data import segment_marks
    from domains.timeseries.pipeline import fit_untimed

    s = _etth1_slice(1500)
    prep = prepare(s, 72)
    tc = train_config("tiny", max_steps=10, progress=False, eval_every=10, save_every=10, device="cpu", batch_size=16)
    fit(tiny(), [prep.train], [prep.val], tmp_path / "ck", tc)
    m0, _ = load_forecaster(tmp_path / "ck")
    summ = fit_untimed(tmp_path / "ck", [prep.train], train_config("tiny", max_steps=20, progress=False, device="cpu",
                                                                  batch_size=16, lr=1e-2))
    assert summ["steps"] == 20 and not (tmp_path / "ck" / "untimed").exists()
    m1, ck = load_forecaster(tmp_path / "ck")
    assert ck.domain["untimed"]["steps"] == 20
    moved = {}
    for (k, a), (_, b) in zip(m0.state_dict().items(), m1.state_dict().items()):
        if not torch.equal(a, b):
            moved[k] = (a - b).abs().reshape(len(a), -1).amax(1).nonzero().flatten().tolist()
    unknown = {i: n - 1 for i, n in enumerate(CALENDAR_SIZES)}
    # every table but the hour ones (0 and 5) moved, each in its "unknown" row only
    assert moved == {f"time.tables.{i}.weight": [unknown[i % 5]] for i in range(10) if i % 5}
    ctx = torch.from_numpy(prep.test.values[:72, :1].T.copy())
    timed = torch.from_numpy(segment_marks(prep.test.cal[:96 * 2], 24))[None, :6]
    untimed = torch.from_numpy(segment_marks(calendar(None, 144, None), 24))[None]
    with torch.no_grad():
        assert torch.equal(m0.forecast(ctx, timed, 48), m1.forecast(ctx, timed, 48))
        assert not torch.allclose(m0.forecast(ctx, untimed, 48), m1.forecast(ctx, untimed, 48))
    assert fit_untimed(tmp_path / "ck", [prep.train], tc) is None  # done once

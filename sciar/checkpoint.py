"""Self-describing checkpoint directories.

A checkpoint is a directory::

    config.json        {"format": "sciar-checkpoint", "model": {...ModelConfig}, "head": {...adapter's}}
    tokenizer.json     the tokenizer (``{"kind": "none"}`` for continuous domains)
    domain.json        domain name, sciar version, the command and data fingerprint that trained it,
                       and the sha256 of the weights (and of the EMA weights, when there are some)
    model.safetensors  the weights
    ema.safetensors    optional: the exponential moving average of the weights (same tensor names)

Weights are only ever read with safetensors: no pickle is loaded. Every file is
checked on load, and any problem is a one-line :class:`CheckpointError`.

Adapters register how a checkpoint of their domain becomes a model (:func:`register_model`);
:func:`load_model` then loads a checkpoint of any registered domain into the right model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

import sciar
from sciar.errors import CheckpointError, SciarError, one_line
from sciar.io import sha256_file, umask
from sciar.registry import Registry
from sciar.tokenizer import tokenizer_from_dict

# torch and safetensors are imported inside the functions that use them: adapters register their model
# builders here when ``domains`` is imported, and ``sciar --help`` must not pay for torch

FORMAT = "sciar-checkpoint"
FILES = ("config.json", "tokenizer.json", "domain.json", "model.safetensors")


@dataclass
class Checkpoint:
    path: Path
    config: dict
    tokenizer: object | None
    domain: dict

    @property
    def domain_name(self) -> str:
        return self.domain["domain"]


def command_line(argv: list[str] | None = None, cwd: str | Path | None = None) -> str:
    """The command that is running, for the record in domain.json, written so that a user can rerun it from the
    project's root: paths inside the project relative to it, paths in the shared data beside it as
    ``../shared/...``, other paths as given; the CLI as ``sciar``, a script as ``python <its path>``."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    cwd = Path(cwd or os.getcwd())
    root = Path(__file__).resolve().parent.parent

    def rerunnable(arg: str) -> str:
        if arg.startswith("-") and "=" in arg:
            opt, _, value = arg.partition("=")
            return f"{opt}={rerunnable(value)}"
        if arg.startswith("-") or not arg or "\n" in arg:
            return arg
        p = Path(arg).expanduser()
        if not p.is_absolute():
            p = cwd / p
            if not (p.exists() or ("/" in arg and p.parent.exists())):
                return arg  # not a path (a composition, a space group such as P2_1/c, a number, a name)
        p = Path(os.path.normpath(p))
        for base, prefix in ((root, ""), (root.parent / "shared", "../shared/")):
            try:
                return prefix + p.relative_to(base).as_posix()
            except ValueError:
                continue
        return arg

    prog = Path(argv[0]).name
    if prog in ("cli.py", "__main__.py", "sciar"):
        head = ["sciar"]
    elif prog.endswith(".py"):
        head = ["python", rerunnable(argv[0])]
    else:
        head = [prog]
    return " ".join(shlex.quote(a) for a in head + [rerunnable(a) for a in argv[1:]])


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, config: dict, tokenizer, domain: dict,
    extra: Callable[[Path], None] | None = None, ema: torch.nn.Module | None = None,
) -> Path:
    """Write a checkpoint into directory ``path`` (other files there are left alone).

    ``config`` must hold ``model`` (a ModelConfig dict); ``domain`` must hold ``domain``
    and should hold ``data_fingerprint``. ``extra(tmpdir)`` may add files (training state).
    ``ema``: a copy of the model holding the moving average of its weights (:class:`sciar.ema.EMA`).
    Every file is written beside its final name and renamed into place, the weights
    first and ``domain.json`` (with the weights' checksum) last, so a crash leaves
    either the old checkpoint or one whose checksum check fails, never a silent mix.
    """
    from safetensors.torch import save_model

    path = Path(path)
    if "model" not in config or "domain" not in domain:
        raise SciarError("a checkpoint needs config['model'] and domain['domain']")
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=path))
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        if ema is not None:
            save_model(ema, str(tmp / "ema.safetensors"), metadata={"format": FORMAT})
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **config}, indent=1))
        tok = tokenizer.to_dict() if tokenizer is not None else {"kind": "none"}
        (tmp / "tokenizer.json").write_text(json.dumps(tok, indent=1))
        meta = {  # what this write records wins over the same keys in ``domain`` (a re-saved checkpoint's)
            **domain,
            "sciar_version": sciar.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(),
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
        }
        meta.pop("ema_sha256", None)
        if ema is not None:
            meta["ema_sha256"] = sha256_file(tmp / "ema.safetensors")
        (tmp / "domain.json").write_text(json.dumps(meta, indent=1, default=str))
        if extra is not None:
            extra(tmp)
        names = [n for n in os.listdir(tmp) if n not in FILES] + list(FILES)
        names.remove("domain.json")
        for name in [*names, "domain.json"]:
            if (tmp / name).is_file():  # safetensors writes its file 0600: make it readable as the rest
                os.chmod(tmp / name, 0o666 & ~umask())
            os.replace(tmp / name, path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: missing {path.name}; not a sciar checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return d


def read_checkpoint(path: str | Path, domain: str | None = None) -> Checkpoint:
    """Read and check a checkpoint's description (not its weights)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} not found (expected a directory)")
    config = _read_json(path / "config.json")
    if config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: config.json is not a sciar checkpoint config")
    meta = _read_json(path / "domain.json")
    if "domain" not in meta or "weights_sha256" not in meta:
        raise CheckpointError(f"{path}: domain.json lacks the domain name or weights checksum")
    if domain is not None and meta["domain"] != domain:
        raise CheckpointError(f"{path} is a {meta['domain']!r} checkpoint, not {domain!r}")
    tok_dict = _read_json(path / "tokenizer.json")
    try:
        tokenizer = None if tok_dict.get("kind") == "none" else tokenizer_from_dict(tok_dict)
    except SciarError as e:
        raise CheckpointError(f"{path}: bad tokenizer.json ({e})") from None
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing model.safetensors")
    if sha256_file(weights) != meta["weights_sha256"]:
        raise CheckpointError(f"{weights}: checksum mismatch (truncated or corrupted weights)")
    if "ema_sha256" in meta:
        ema = path / "ema.safetensors"
        if not ema.is_file():
            raise CheckpointError(f"{path}: missing ema.safetensors (domain.json records EMA weights)")
        if sha256_file(ema) != meta["ema_sha256"]:
            raise CheckpointError(f"{ema}: checksum mismatch (truncated or corrupted EMA weights)")
    return Checkpoint(path, config, tokenizer, meta)


def load_weights(ck: Checkpoint, model: torch.nn.Module, device: str | torch.device = "cpu",
                 ema: bool = False) -> torch.nn.Module:
    """Fill ``model`` (built from ``ck.config``) with the checkpoint's weights, strictly.

    ``ema=True`` loads the moving average of the weights instead (a checkpoint trained with ``ema > 0``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors

    name = "ema.safetensors" if ema else "model.safetensors"
    if ema and "ema_sha256" not in ck.domain:
        raise CheckpointError(f"{ck.path} holds no EMA weights (it was trained without an EMA)")
    try:
        missing, unexpected = load_safetensors(model, str(ck.path / name), strict=False, device=str(device))
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{ck.path}: weights do not fit the model ({one_line(e)})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{ck.path}: weights do not fit the model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return model.to(device)


def check_weights(ck: Checkpoint) -> dict:
    """Check the weights against the config without building the adapter's model: the trunk's tensors
    (``trunk.*``, as every adapter names its :class:`sciar.model.Transformer`) must have the shapes the
    config implies, and every tensor must be finite. Returns tensor and parameter counts."""
    import torch
    from safetensors import safe_open

    from sciar.model import ModelConfig, Transformer

    try:
        cfg = ModelConfig.from_dict(ck.config["model"])
        with torch.device("meta"):
            want = {f"trunk.{k}": tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    except (SciarError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ck.path}: bad model config ({e})") from None
    n_params, n_tensors, bad = 0, 0, []
    with safe_open(str(ck.path / "model.safetensors"), "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        have = dict(stored)
        if ck.config.get("tied", True) and "head.weight" in have:  # safetensors keeps one name of a shared tensor
            have.setdefault("trunk.wte.weight", have["head.weight"])
        wrong = [k for k in want if have.get(k) != want[k]]
        if wrong:
            k = wrong[0]
            got = f"shape {list(have[k])}" if k in have else "missing"
            raise CheckpointError(f"{ck.path}: config.json does not describe the weights ({len(wrong)} of {len(want)} trunk tensors "
                                  f"differ; {k}: {got}, the config implies {list(want[k])})")
        for k in f.keys():
            t = f.get_tensor(k)
            n_params, n_tensors = n_params + t.numel(), n_tensors + 1
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad.append(k)
    if bad:
        raise CheckpointError(f"{ck.path}: {len(bad)} weight tensors hold NaN or infinity (first {bad[0]}): "
                              "did the training run diverge?")
    ema = "ema_sha256" in ck.domain
    if ema:  # the moving average: the same tensors as the weights, all finite
        with safe_open(str(ck.path / "ema.safetensors"), "pt") as f:
            if {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} != stored:
                raise CheckpointError(f"{ck.path}: ema.safetensors does not hold the same tensors as model.safetensors")
            bad = [k for k in f.keys() if f.get_tensor(k).is_floating_point() and not torch.isfinite(f.get_tensor(k)).all()]
        if bad:
            raise CheckpointError(f"{ck.path}: {len(bad)} EMA tensors hold NaN or infinity (first {bad[0]})")
    return {"tensors": n_tensors, "parameters": n_params, "ema": ema}


MODELS = Registry("checkpoint domain", CheckpointError)
"""Domain names (``domain.json``'s ``domain``) to model builders: what :func:`load_model` builds."""
_TOKENIZER_KIND: dict[str, str | None] = {}  # domain -> the tokenizer kind its checkpoints carry


def register_model(domain: str, builder, tokenizer: str | None = None) -> None:
    """Say how checkpoints of ``domain`` become a model: ``builder(ck: Checkpoint) -> torch.nn.Module`` (or its
    import path ``"module:function"``) builds the untrained model that ``ck.config`` describes;
    ``tokenizer`` is the tokenizer kind those checkpoints carry (``None``: a continuous domain, without one)."""
    MODELS.register(domain, builder)
    _TOKENIZER_KIND[domain] = tokenizer


# ModelConfig options that change what a model computes (README "core options"): a checkpoint combines only
# with the values it was trained with
OPTIONS = ("mlp", "qkv_conv", "meap", "mtp_heads", "mtp_kind")


def refuse_other_options(ck: Checkpoint, options: dict | None):
    """A one-line CheckpointError naming the checkpoint and the option when ``options`` (ModelConfig fields)
    ask for something the checkpoint was not trained with (a convolution its weights lack, heads it has not)."""
    from sciar.model import ModelConfig

    stored = ck.config.get("model", {})
    for k in OPTIONS:
        if options is None or k not in options:
            continue
        have = stored.get(k, getattr(ModelConfig, k))
        if options[k] != have:
            raise CheckpointError(f"{ck.path.name} was trained with {k}={have!r}: the option {k}={options[k]!r} "
                                  "does not combine with it (train a model with it, or leave the option out)")


def load_model(path: str | Path, domain: str | None = None, device: str | torch.device = "cpu",
               ema: bool | None = False, options: dict | None = None):
    """Any registered domain's checkpoint (a directory or a shipped name): returns (model in eval mode, Checkpoint).

    The builder registered for the checkpoint's domain makes the model and the weights fill it strictly;
    ``domain``, when given, refuses a checkpoint of another domain. ``ema``: load the moving average of the
    weights instead (``None``: the average where the checkpoint has one). ``options``: ModelConfig options the
    caller needs (``{"mtp_heads": 3}`` for self-speculative decoding); a checkpoint trained otherwise is refused.
    Every problem is a one-line CheckpointError.
    """
    from sciar.paths import find_checkpoint

    ck = read_checkpoint(find_checkpoint(path), domain)
    refuse_other_options(ck, options)
    builder, kind = MODELS.get(ck.domain_name), _TOKENIZER_KIND.get(ck.domain_name)
    have = getattr(ck.tokenizer, "kind", None)
    if have != kind:
        raise CheckpointError(f"{ck.path}: a {ck.domain_name!r} checkpoint carries tokenizer kind {kind or 'none'!r}, "
                              f"this one {have or 'none'!r}")
    try:
        model = builder(ck)
    except CheckpointError:
        raise
    except (SciarError, TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{ck.path}: bad model config ({one_line(e)})") from None
    load_weights(ck, model, device, ema="ema_sha256" in ck.domain if ema is None else ema)
    return model.eval(), ck


def build_language_model(ck: Checkpoint):
    """The builder of token domains whose model is a plain :class:`sciar.model.LanguageModel`."""
    from sciar.model import LanguageModel, ModelConfig

    if ck.tokenizer is None:
        raise CheckpointError(f"{ck.path} has no tokenizer; it is not a token-domain checkpoint")
    try:
        cfg = ModelConfig.from_dict(ck.config["model"])
    except (SciarError, TypeError) as e:
        raise CheckpointError(f"{ck.path}: bad model config ({e})") from None
    if cfg.vocab_size != ck.tokenizer.vocab_size:
        raise CheckpointError(f"{ck.path}: model vocabulary ({cfg.vocab_size}) and tokenizer ({ck.tokenizer.vocab_size}) differ")
    return LanguageModel(cfg, tied=ck.config.get("tied", True))


def load_language_model(path: str | Path, domain: str | None = None, device: str | torch.device = "cpu"):
    """Load a token-domain checkpoint of any domain, registered or not, as a plain LanguageModel:
    returns (LanguageModel in eval mode, tokenizer, Checkpoint)."""
    ck = read_checkpoint(path, domain)
    model = load_weights(ck, build_language_model(ck), device)
    return model.eval(), ck.tokenizer, ck

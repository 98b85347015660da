"""The adapter contract (domains.Adapter), run over every registered adapter."""

import json

import pytest
import torch
import typer
from safetensors import safe_open
from typer.main import get_command

import domains
from sciar.checkpoint import MODELS
from sciar.paths import data_dir, find_checkpoint

ADAPTERS = domains.adapters()


def test_every_listed_adapter_is_installed_and_registered():
    assert set(ADAPTERS) == set(domains.DOMAINS)
    for name in ADAPTERS:
        assert name in MODELS


def _commands(cmd, path=()):
    yield path, cmd
    for sub_name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, sub_name))


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_app_has_help_on_every_command_and_option(name):
    app = ADAPTERS[name].typer_app()
    assert isinstance(app, typer.Typer)
    group = get_command(app)
    assert (group.help or "").strip(), f"{name}: the group has no help text"
    cmds = list(_commands(group))
    assert len(cmds) > 1, f"{name}: no commands"
    for path, cmd in cmds:
        assert (cmd.help or cmd.short_help or "").strip(), f"{name} {' '.join(path)}: no help text"
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert (p.help or "").strip(), f"{name} {' '.join(path)} {p.opts[0]}: no help text"


def _shipped_domains() -> dict[str, str]:
    folder = data_dir() / "checkpoints"
    return {d.name: json.loads((d / "domain.json").read_text())["domain"] for d in sorted(folder.iterdir())
            if (d / "domain.json").is_file()}


def test_every_shipped_checkpoint_belongs_to_an_adapter_that_lists_it():
    for ck_name, domain in _shipped_domains().items():
        assert domain in ADAPTERS, f"{ck_name}: no adapter for domain {domain!r}"
        assert ck_name in ADAPTERS[domain].checkpoints, f"{ck_name} is not in {domain}'s checkpoints"


@pytest.mark.parametrize("name,ck_name", [(n, c) for n, a in sorted(ADAPTERS.items()) for c in a.checkpoints])
def test_builder_makes_a_model_that_loads_the_shipped_checkpoint(name, ck_name):
    adapter = ADAPTERS[name]
    path = find_checkpoint(ck_name)
    kind = json.loads((path / "tokenizer.json").read_text())["kind"]
    assert kind == (adapter.tokenizer_kind or "none")
    model, ck = adapter.load(ck_name)
    assert ck.domain_name == name and not model.training
    state = model.state_dict()
    with safe_open(str(path / "model.safetensors"), "pt") as f:  # every stored tensor, read independently
        keys = list(f.keys())
        assert keys and set(keys) <= set(state)
        for k in keys:
            assert torch.equal(f.get_tensor(k), state[k]), k

"""The core's glue helpers: one-line errors, atomic PNGs, threads, parameter counts, presets, tables, registries."""

import json
import shutil

import pandas as pd
import pytest
import torch

from cli import main
from sciar.checkpoint import load_model, read_checkpoint, register_model, save_checkpoint
from sciar.errors import CheckpointError, DataError, SciarError, describe, one_line
from sciar.io import pyplot, save_figure
from sciar.model import LanguageModel, ModelConfig
from sciar.presets import choose, override, train_budget
from sciar.registry import Registry
from sciar.runtime import count_parameters, set_threads
from sciar.tables import read_table
from sciar.tokenizer import CharTokenizer, register_tokenizer, tokenizer_from_dict


def test_one_line_and_describe():
    assert one_line(ValueError("\n  \nfirst line  \nsecond line")) == "first line"
    assert one_line(KeyError()) == "KeyError"  # no message: the type names it
    assert one_line(RuntimeError("x" * 50), limit=20) == "x" * 17 + "..."
    assert describe(DataError("bad row\ntraceback-ish detail")) == "bad row"
    assert describe(ValueError("math domain error\n")) == "ValueError: math domain error"
    assert describe(ZeroDivisionError()) == "ZeroDivisionError"


def test_save_figure_is_atomic(tmp_path):
    plt = pyplot()
    path = tmp_path / "plot.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, path)
    first = path.read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and not plt.fignum_exists(fig.number)

    fig2, _ = plt.subplots()

    def half_written(fname, **kw):  # a draw that dies after writing part of the file
        open(fname, "wb").write(b"\x89PNG partial")
        raise RuntimeError("renderer died")

    fig2.savefig = half_written
    with pytest.raises(RuntimeError, match="renderer died"):
        save_figure(fig2, path)
    assert path.read_bytes() == first  # the old PNG stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # no temporary left behind
    assert not plt.fignum_exists(fig2.number)
    with pytest.raises(RuntimeError):
        fig3, _ = plt.subplots()
        fig3.savefig = half_written
        save_figure(fig3, tmp_path / "new.png")
    assert not (tmp_path / "new.png").exists()


def test_set_threads_and_count_parameters():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)  # left as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    lin = torch.nn.Linear(3, 4)  # 3*4 weights + 4 biases
    assert count_parameters(lin) == 16
    tied = torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Linear(2, 5, bias=False))
    tied[1].weight = tied[0].weight  # shared: counts once
    assert count_parameters(tied) == 10
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12


def test_presets():
    table = {"tiny": {"model": {"n_layer": 1}, "train": {"max_steps": 300, "eval_every": 100, "save_every": 50,
                                                          "warmup_steps": 30, "lr": 1e-3, "min_lr": 1e-4, "batch_size": 8}}}
    with pytest.raises(SciarError, match=r"unknown preset 'huge' \(one of tiny\)"):
        choose(table, "huge")
    p = choose(table, "tiny")
    p["model"]["n_layer"] = 9
    assert table["tiny"]["model"]["n_layer"] == 1  # a copy
    assert train_budget(table["tiny"]["train"], steps=20, lr=5e-3) == {
        "max_steps": 20, "eval_every": 20, "save_every": 20, "warmup_steps": 2, "lr": 5e-3, "min_lr": 5e-4, "batch_size": 8}
    assert train_budget(table["tiny"]["train"]) == table["tiny"]["train"]
    assert override({"a": 1, "b": 2}, a=None, b=3) == {"a": 1, "b": 3}


def test_read_table_formats(tmp_path):
    df = pd.DataFrame({"id": ["NA", "b"], "x": [1.5, 2.0]})
    (tmp_path / "t.json").write_text(json.dumps(df.to_dict("records")))
    df.to_parquet(tmp_path / "t.pq")
    (tmp_path / "t.csv").write_text("id;x\nNA;1,5\nb;2,0\n")
    for name in ("t.json", "t.pq", "t.csv"):
        got = read_table(tmp_path / name, text_columns=("id",))
        assert got["id"].tolist() == ["NA", "b"] and got["x"].tolist() == [1.5, 2.0], name
    (tmp_path / "bad.parquet").write_text("not parquet\nat all\n")
    with pytest.raises(DataError) as e:
        read_table(tmp_path / "bad.parquet")
    assert "\n" not in str(e.value) and str(e.value).startswith("cannot read table")


def test_registry_imports_paths_and_refuses_unknown_names():
    r = Registry("widget")
    r.register("path", "sciar.errors:one_line")
    assert r.get("path") is one_line
    r.register("broken", "sciar.errors:no_such_thing")
    with pytest.raises(SciarError, match="cannot be imported"):
        r.get("broken")
    with pytest.raises(SciarError, match=r"unknown widget 'nope' \(known: broken, path\)"):
        r.get("nope")


def _toy_checkpoint(path, domain="glue-toy", tokenizer=None):
    tok = tokenizer or CharTokenizer("ab\n")
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    torch.manual_seed(0)
    model = LanguageModel(cfg)
    save_checkpoint(path, model, {"model": cfg.to_dict()}, tok, {"domain": domain})
    return model


@pytest.fixture(autouse=True)
def _registries_restored(monkeypatch):
    """Registrations made by a test end with it."""
    from sciar.checkpoint import _TOKENIZER_KIND, MODELS
    from sciar.tokenizer import TOKENIZERS

    for reg in (MODELS, TOKENIZERS):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    monkeypatch.setattr("sciar.checkpoint._TOKENIZER_KIND", dict(_TOKENIZER_KIND))


def test_unknown_tokenizer_kind_is_a_one_line_checkpoint_error(tmp_path):
    _toy_checkpoint(tmp_path / "ck")
    d = json.loads((tmp_path / "ck" / "tokenizer.json").read_text())
    (tmp_path / "ck" / "tokenizer.json").write_text(json.dumps({**d, "kind": "made-up"}))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "ck")
    assert "unknown tokenizer kind 'made-up'" in str(e.value) and "\n" not in str(e.value)

    class Upper(CharTokenizer):  # an adapter's own kind, registered: the same file now reads
        kind = "made-up"

    register_tokenizer("made-up", Upper)
    assert isinstance(read_checkpoint(tmp_path / "ck").tokenizer, Upper)
    assert tokenizer_from_dict({"kind": "char", "alphabet": "xy"}).vocab == ["x", "y"]


def test_load_model_goes_through_the_registry(tmp_path):
    model = _toy_checkpoint(tmp_path / "ck", domain="glue-unregistered")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "ck")
    assert "unknown checkpoint domain 'glue-unregistered'" in str(e.value) and "crystal" in str(e.value)
    assert "\n" not in str(e.value)

    built = []

    def build(ck):
        built.append(ck.domain_name)
        return LanguageModel(ModelConfig.from_dict(ck.config["model"]))

    register_model("glue-unregistered", build, tokenizer="char")
    got, ck = load_model(tmp_path / "ck")
    assert built == ["glue-unregistered"] and not got.training
    for (k, a), b in zip(model.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k
    register_model("glue-unregistered", build, tokenizer=None)  # the domain says: no tokenizer
    with pytest.raises(CheckpointError, match="carries tokenizer kind 'none', this one 'char'"):
        load_model(tmp_path / "ck")


def test_corrupt_shipped_checkpoint_exits_2_through_the_cli(tmp_path, capsys):
    from sciar.paths import find_checkpoint

    bad = tmp_path / "crystal-small"
    shutil.copytree(find_checkpoint("crystal-small"), bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    code = main(["crystal", "sample", "-c", "NaCl", "-n", "1", "--checkpoint", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "checksum" in err

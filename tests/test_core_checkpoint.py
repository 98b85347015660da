import json
from pathlib import Path

import pytest
import torch

from cli import main
from sciar.checkpoint import check_weights, load_language_model, read_checkpoint, save_checkpoint
from sciar.errors import CheckpointError
from sciar.model import LanguageModel, ModelConfig
from sciar.tokenizer import CharTokenizer

TOK = CharTokenizer("abc\n")


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    m = LanguageModel(cfg)
    save_checkpoint(tmp_path / "ck", m, {"model": cfg.to_dict()}, TOK, {"domain": "toy", "data_fingerprint": "abc"})
    return tmp_path / "ck", m


def test_round_trip(ckpt):
    path, m = ckpt
    lm, tok, ck = load_language_model(path, domain="toy")
    assert tok.vocab == TOK.vocab and ck.domain["data_fingerprint"] == "abc" and "command" in ck.domain
    for (k, a), (_, b) in zip(m.state_dict().items(), lm.state_dict().items()):
        assert torch.equal(a, b), k
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "domain.json", "model.safetensors", "tokenizer.json"]


def test_written_files_are_readable_as_the_umask_allows(ckpt, tmp_path):
    from sciar.io import umask, write_text_atomic

    path, _ = ckpt
    want = 0o666 & ~umask()
    write_text_atomic(tmp_path / "out.txt", "x")
    for p in [tmp_path / "out.txt", *path.iterdir()]:
        assert p.stat().st_mode & 0o777 == want, p.name  # mkstemp and safetensors write 0600


def test_missing_truncated_mismatched_and_foreign(ckpt, tmp_path):
    path, _ = ckpt
    with pytest.raises(CheckpointError, match="'toy' checkpoint, not 'crystal'"):
        read_checkpoint(path, domain="crystal")
    w = path / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(path)
    w.write_bytes(data)
    (path / "config.json").write_text('{"format": "sciar-checkpoint", "model": ')
    with pytest.raises(CheckpointError, match="truncated JSON"):
        read_checkpoint(path)
    (path / "config.json").write_text(json.dumps({"format": "sciar-checkpoint", "model": {"n_layer": 3}}))
    with pytest.raises(CheckpointError):
        load_language_model(path)
    (path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nowhere")


def test_weights_that_do_not_fit(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["n_embd"] = 32  # config no longer matches the stored tensors
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_language_model(path)


def test_cli_inspect(ckpt, capsys, tmp_path):
    path, _ = ckpt
    assert main(["inspect", str(path)]) == 0
    assert "toy" in capsys.readouterr().out
    (path / "domain.json").write_text("garbage")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_inspect_checks_shapes_and_values(ckpt, capsys):
    path, m = ckpt
    assert check_weights(read_checkpoint(path))["parameters"] == sum(p.numel() for p in m.parameters())
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["n_layer"] = 2  # an edited config that no longer describes the stored weights
    (path / "config.json").write_text(json.dumps(cfg))
    assert main(["inspect", str(path)]) == 2
    assert "does not describe the weights" in capsys.readouterr().err
    cfg["model"]["n_layer"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with torch.no_grad():
        m.trunk.blocks[0].mlp.fc.weight[0, 0] = float("nan")
    save_checkpoint(path, m, {"model": cfg["model"]}, TOK, {"domain": "toy"})  # a valid checksum of NaN weights
    assert main(["inspect", str(path)]) == 2
    assert "NaN or infinity" in capsys.readouterr().err


def test_recorded_command_can_be_rerun_from_the_project(tmp_path):
    """Paths inside the project become relative to its root, shared data '../shared/...', whatever the
    folder the command ran in; words that are not paths stay as they are."""
    from sciar.checkpoint import command_line

    root = Path(__file__).resolve().parents[1]
    shared = root.parent / "shared" / "data" / "crystals" / "mp_20" / "train.csv.gz"
    argv = [str(root / "cli.py"), "crystal", "train", "--data", str(root / "data" / "crystals" / "default.parquet"),
            "--data", str(shared), "--preset", "small", "--steps", "6000", f"--out={root / 'build' / 'run1'}",
            "--composition", "NaCl", str(tmp_path / "elsewhere.csv")]
    got = command_line(argv, cwd=tmp_path).split()
    assert got[:3] == ["sciar", "crystal", "train"]
    assert got[4] == "data/crystals/default.parquet" and got[6] == "../shared/data/crystals/mp_20/train.csv.gz"
    assert got[7:11] == ["--preset", "small", "--steps", "6000"] and got[11] == "--out=build/run1"
    assert got[12:14] == ["--composition", "NaCl"] and got[14] == str(tmp_path / "elsewhere.csv")
    # relative paths are read against the folder the command ran in
    script = command_line(["gpu_train.py", "run", "../data/x"], cwd=root / "benchmarks").split()
    assert script == ["python", "benchmarks/gpu_train.py", "run", "data/x"]


def test_shipped_checkpoints_record_commands_a_user_can_rerun():
    """Every domain.json under data/checkpoints names its command with paths relative to the project (or
    ../shared), never the scratch paths of the machine that ran it."""
    import shlex

    root = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
    found = 0
    for p in sorted(root.rglob("domain.json")):
        cmd = json.loads(p.read_text()).get("command")
        assert cmd, f"{p} records no command"
        for tok in shlex.split(cmd):
            value = tok.partition("=")[2] if tok.startswith("-") else tok
            assert not value.startswith(("/", "~")), f"{p}: {tok}"
        found += 1
    assert found >= 6

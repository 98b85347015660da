import subprocess
import sys
from pathlib import Path

from cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_help_info(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sciar ")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "crystal" in out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for lib in ("torch", "pymatgen", "ase", "trimesh", "device", "checkpoints"):
        assert lib in out


def test_bad_options_exit_2_without_traceback():
    for args in (["--bogus"], ["info", "extra"], ["inspect"], ["inspect", "/no/such/checkpoint"],
                 ["crystal", "sample", "-c", "NaCl", "-n", "abc", "--out", "x"],
                 ["timeseries", "forecast", "--horizon", "0", "--out", "x.csv"]):
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        # one line naming the problem, not a usage box
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), (args, r.stderr)


def test_out_of_range_numbers_are_option_errors(capsys, tmp_path):
    """Each of these once reached library code and ended in an internal error or a silent no-op."""
    csv = str(tmp_path / "s.csv")  # never read: the option is refused first
    for args, option in [
        (["crystal", "sample", "-c", "NaCl", "--top-k", "-3", "--out", "x"], "--top-k"),
        (["crystal", "sample", "-c", "NaCl", "--threads", "0", "--out", "x"], "--threads"),
        (["crystal", "train", "--data", csv, "--out", "x", "--block-size", "10"], "--block-size"),
        (["timeseries", "train", "--csv", csv, "--out", "x", "--max-steps", "0"], "--max-steps"),
        (["timeseries", "train", "--csv", csv, "--out", "x", "--batch-size", "0"], "--batch-size"),
        (["timeseries", "train", "--csv", csv, "--out", "x", "--segment", "0"], "--segment"),
        (["timeseries", "train", "--csv", csv, "--out", "x", "--threads", "-2"], "--threads"),
        (["timeseries", "forecast", "--csv", csv, "--samples", "-3", "--out", "x.csv"], "--samples"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert option in err and err.count("\n") == 1, (args, err)


def test_outputs_that_cannot_be_written_are_refused_before_the_work(capsys, tmp_path):
    """A search or a training run once ran to its end and then failed to make its output folder."""
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    a_dir = tmp_path / "folder"
    a_dir.mkdir()
    csv = str(tmp_path / "never_read.csv")  # nor the checkpoint: the output is refused first
    ck = ["--checkpoint", str(tmp_path / "no_such_checkpoint")]
    for args, says in [
        (["crystal", "search", "--composition", "Na4Cl4", *ck, "--out", str(a_file)], "exists and is not a folder"),
        (["crystal", "train", "--data", csv, "--out", str(a_file / "run")], "is a file, so"),
        (["crystal", "sample", "-c", "NaCl", *ck, "--out", str(a_file)], "exists and is not a folder"),
        (["crystal", "batch", "--input", csv, "--output", str(a_dir)], "is a folder, not a file"),
        (["timeseries", "train", "--csv", csv, "--out", str(a_file)], "exists and is not a folder"),
        (["timeseries", "forecast", "--csv", csv, "--out", str(a_dir)], "is a folder, not a file"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (args, err)
    assert a_file.read_text() == "not a folder" and not any(a_dir.iterdir())

"""Oracle datasets (seeded, fixed held-out set, tasks that parse), CPShub curves against the raw files,
users' task tables, metrics and inverse baselines, and the CLI's answers and errors."""

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from domains.mechanics.baselines import OracleBudget, knn_success, least_squares_search, random_search
from domains.mechanics.datasets import (CURVE_STRETCHES, cpshub_tasks, is_held_out, oracle_dataset, read_cpshub,
                                        read_task_table)
from domains.mechanics.grammar import LOAD_CASES, fmt, parse_answer, parse_prompt
from domains.mechanics.metrics import design_meets, mare, r2_log
from domains.mechanics.properties import simulate
from sciar.errors import DataError


@pytest.fixture(scope="module")
def small():
    return oracle_dataset(["honeycomb", "kagome"], 12, seed=3, progress=False)


def test_oracle_dataset_is_seeded_and_its_tasks_parse(small):
    again = oracle_dataset(["honeycomb", "kagome"], 12, seed=3, progress=False)
    pd.testing.assert_frame_equal(small, again)
    assert len(small) == 24 and small["error"].isna().all()
    for r in small.to_dict("records"):
        params = {k: r[k] for k in ("theta", "h", "t") if k in r and not pd.isna(r[k])}
        assert r["split"] == ("test" if is_held_out(r["family"], params) else "train")
        p = parse_prompt(r["prompt"])
        a = parse_answer(r["answer"], p).values()
        truth = simulate(r["family"], params)  # the answer holds the oracle's values to three digits
        for k in ("E1", "E2", "G12", "rho"):
            assert a[k] == float(fmt(getattr(truth, k)))
        req = parse_prompt(r["design_prompt"])
        assert parse_answer(r["design_answer"], req).values() == pytest.approx(params)
        assert design_meets(req, truth.to_dict())  # rounded targets stay well inside 5%


def test_held_out_set_does_not_depend_on_seed_or_size():
    a = oracle_dataset(["square"], 40, seed=0, progress=False)
    b = oracle_dataset(["square"], 80, seed=1, progress=False)
    held = set(a.loc[a.split == "test", "t"]) | set(b.loc[b.split == "test", "t"])
    trained = set(a.loc[a.split == "train", "t"]) | set(b.loc[b.split == "train", "t"])
    assert held and not held & trained
    assert 0.02 < (pd.concat([a, b]).split == "test").mean() < 0.25


@pytest.fixture(scope="module")
def shared_data_path():
    from conftest import SHARED

    return SHARED


@pytest.fixture(scope="module")
def cpshub(shared_data_path):
    return read_cpshub(shared_data_path / "mechanics" / "cpshub_sim_data.tar.xz")


def test_cpshub_curves_match_the_raw_files(cpshub, shared_data_path):
    assert len(cpshub) == 107 * 16 and cpshub["run"].nunique() == 107
    # independent read of two files: lambda = -0.12 and 0.30 are rows of the 0.004-step files
    with tarfile.open(shared_data_path / "mechanics" / "cpshub_sim_data.tar.xz") as tf:
        meta = raw = shear = None
        for m in tf:
            if m.name.endswith("parametric_beam_lattice_metamaterials/data/meta_all.json"):
                meta = json.load(tf.extractfile(m))
            elif m.name.endswith("20201130_121222/1uniaxial_compression.dat"):
                raw = np.loadtxt(io.TextIOWrapper(tf.extractfile(m)), skiprows=1)
            elif m.name.endswith("20201130_121222/4shear_tension.dat"):
                shear = np.loadtxt(io.TextIOWrapper(tf.extractfile(m)), skiprows=1)
    row = cpshub[(cpshub.run == "20201130_121222") & (cpshub.case == "uniaxial_compression")].iloc[0]
    assert [row.t1, row.t2, row.t3] == meta["20201130_121222"]["t"]
    i = np.argmin(np.abs(raw[:, 0] + 0.12))
    assert raw[i, 0] == pytest.approx(-0.12) and row.s2 == pytest.approx(raw[i, 11])  # column 11: P11
    s = cpshub[(cpshub.run == "20201130_121222") & (cpshub.case == "shear_tension")].iloc[0]
    assert s.component == "P12" and s.s5 == pytest.approx(shear[np.argmin(np.abs(shear[:, 0] - 0.3)), 12])
    assert CURVE_STRETCHES[-1] == 0.3


def test_cpshub_tasks_parse(cpshub):
    tasks = cpshub_tasks(cpshub[cpshub.run.isin(sorted(cpshub.run.unique())[:3])])
    assert (tasks.task == "Thickness").sum() == 3 and (tasks.task == "StressCurve").sum() == 48
    for p, a in zip(tasks.prompt, tasks.answer):
        prompt = parse_prompt(p)
        parse_answer(a, prompt)
    thick = parse_prompt(tasks[tasks.task == "Thickness"].prompt.iloc[0])
    assert [n for n, _, _ in thick.items] == list(LOAD_CASES)


def test_users_task_table(tmp_path):
    good = tmp_path / "tasks.csv"
    pd.DataFrame({"prompt": ["Strength<foam; rho=0.1>", "NA"], "answer": ["[1.2 MPa]", "[none]"]}).to_csv(good, index=False)
    assert read_task_table(good)["prompt"].tolist() == ["Strength<foam; rho=0.1>", "NA"]
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["a"], "reply": ["b"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="missing answer"):
        read_task_table(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,answer\nStiffness<square; t=0.1>,\n")
    with pytest.raises(DataError, match="row 1: empty answer"):
        read_task_table(empty)
    odd = tmp_path / "odd.csv"
    odd.write_text("prompt,answer\nStiffness<square; t=0.1>,[E=1 \u00b5Pa]\n")
    with pytest.raises(DataError, match="outside the vocabulary"):
        read_task_table(odd)


def test_metrics_by_hand():
    assert mare([1.0, 2.0], [1.1, 1.0]) == pytest.approx((0.1 + 0.5) / 2)
    assert r2_log([1e-3, 1e-2, 1e-1], [1e-3, 1e-2, 1e-1]) == 1.0
    assert r2_log([1e-3, 1e-2, 1e-1], [1e-2, 1e-2, 1e-2]) == pytest.approx(0.0)


def test_inverse_baselines(small):
    train = small[small.family == "honeycomb"]
    target = train.iloc[0]
    req = parse_prompt(f"Design<honeycomb; E1={fmt(target.E1)}; E2={fmt(target.E2)}>")
    assert knn_success(req, train, 1)  # the request's own design is in the lookup table
    bound = parse_prompt(f"Design<honeycomb; E1={fmt(target.E1)}; E2={fmt(target.E2)}; rho<={fmt(target.rho * 0.5)}>")
    assert not knn_success(bound, train, 20) or (train.rho <= target.rho * 0.5).any()
    far = parse_prompt("Design<honeycomb; E1=1.00e-9; E2=1.00e-9>")  # below every design of the box
    r = random_search(far, 7, np.random.default_rng(0))
    assert r.calls == 7 and not r.success
    # least squares from a neighbour reaches a nearby design, within 20 oracle calls
    p = simulate("honeycomb", dict(theta=35, h=1.2, t=0.03))
    near = parse_prompt(f"Design<honeycomb; E1={fmt(p.E1)}; E2={fmt(p.E2)}>")
    others = train[(train.theta - 35).abs() > 2]
    o = least_squares_search(near, others, 20)
    assert o.calls <= 20
    budget = OracleBudget(near, 1)
    budget(dict(theta=35, h=1.2, t=0.03))
    assert budget.success
    with pytest.raises(OracleBudget.Spent):
        budget(dict(theta=35, h=1.2, t=0.03))


runner = CliRunner()


def _cli(*args):
    from domains.mechanics.cli import app

    return runner.invoke(app, list(args))


def test_cli_simulate_json_and_png(tmp_path):
    r = _cli("simulate", "--family", "honeycomb", "--set", "theta=30,t=0.05", "--json", str(tmp_path / "a.json"),
             "--png", str(tmp_path / "a.png"))
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "a.json").read_text())
    assert {"E1", "E2", "G12", "nu12", "nu21", "rho", "C"} <= set(d) and np.array(d["C"]).shape == (3, 3)
    assert d["E1"] == pytest.approx(2.8652618818e-4, rel=1e-6)  # Gibson-Ashby with the axial correction
    assert (tmp_path / "a.png").stat().st_size > 10_000


def test_cli_errors_are_one_line(capsys):
    from cli import main

    for args in (["mechanics", "simulate", "--family", "honeycomb", "--set", "theta=30,t=0.5"],
                 ["mechanics", "simulate", "--family", "honeycomb", "--set", "theta"],
                 ["mechanics", "simulate", "--family", "mesh", "--set", "t=0.1"],
                 ["mechanics", "tokenize", "Bend<honeycomb; t=0.1>"]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:"), err


def test_cli_dataset(tmp_path):
    r = _cli("dataset", "--family", "square,triangular", "-n", "5", "--seed", "1", "--out", str(tmp_path / "d.parquet"))
    assert r.exit_code == 0, r.output
    d = pd.read_parquet(tmp_path / "d.parquet")
    assert len(d) == 10 and {"prompt", "answer", "design_prompt", "design_answer", "split"} <= set(d.columns)



def test_benchmark_fits_baselines_on_the_given_tables(tmp_path, capsys):
    """``benchmark --data``: the baselines fit exactly the given tables' training rows of the chosen families
    (counted here from the tables themselves); a table that is no oracle dataset is one line, exit 2."""
    from cli import main

    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for path, seed in ((a, 1), (b, 2)):
        assert _cli("dataset", "--family", "square,kagome", "-n", "40", "--seed", str(seed), "--out", str(path)).exit_code == 0
    both = pd.concat([pd.read_parquet(a), pd.read_parquet(b)])
    square = both[both.family == "square"]
    r = _cli("benchmark", "--data", str(a), "--data", str(b), "--families", "square", "--skip-cpshub", "--quick",
             "--requests", "2", "--budget", "2", "--json", str(tmp_path / "m.json"))
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "m.json").read_text())["settings"]
    assert s["train"] == int((square.split == "train").sum()) and s["held_out"] == int((square.split == "test").sum())
    users = tmp_path / "users.csv"
    pd.DataFrame({"prompt": ["Stiffness<square; t=5.00e-2>"], "answer": ["[E1=2.50e-2]"]}).to_csv(users, index=False)
    assert main(["mechanics", "benchmark", "--data", str(users), "--skip-cpshub", "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an oracle dataset" in err, err

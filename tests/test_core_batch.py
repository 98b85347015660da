import pandas as pd
import pytest

from sciar.batch import run_batch
from sciar.errors import DataError, SciarError


def square(row):
    if row["x"] < 0:
        raise SciarError(f"negative input {row['x']}")
    if row["x"] == 13:
        raise ZeroDivisionError("unlucky")
    return [{"y": row["x"] ** 2, "k": k} for k in range(2)]


def test_rows_errors_and_columns(tmp_path):
    df = pd.DataFrame({"x": [1, -2, 3, 13]})
    out = run_batch(df, square, tmp_path / "out.parquet", chunk_size=2, progress=False)
    assert len(out) == 2 + 1 + 2 + 1
    ok = out[out.status == "ok"]
    assert sorted(ok.y.tolist()) == [1, 1, 9, 9]
    errs = out[out.status == "error"].set_index("x")["error"]
    assert errs[-2] == "negative input -2" and errs[13] == "ZeroDivisionError: unlucky"
    assert pd.read_parquet(tmp_path / "out.parquet").shape == out.shape


class Boom(Exception):
    pass


def test_resume_after_a_killed_job(tmp_path):
    df = pd.DataFrame({"x": range(10)})
    calls = []

    def dies_at_7(row):
        if row["x"] == 7:
            raise KeyboardInterrupt  # a killed job, not a row error
        calls.append(row["x"])
        return [{"y": row["x"] + 1}]

    with pytest.raises(KeyboardInterrupt):
        run_batch(df, dies_at_7, tmp_path / "out.csv", chunk_size=3, progress=False)
    partial = pd.read_csv(tmp_path / "out.csv")
    assert sorted(partial.x) == [0, 1, 2, 3, 4, 5, 6]  # two whole chunks and the row finished before the interrupt
    calls.clear()
    out = run_batch(df, lambda r: [{"y": r["x"] + 1}] if not calls.append(r["x"]) else [], tmp_path / "out.csv",
                    chunk_size=3, progress=False)
    assert calls == [7, 8, 9]
    assert sorted(out.x) == list(range(10)) and (out.y == out.x + 1).all()


def test_bad_tables(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        run_batch(pd.DataFrame({"x": []}), square, progress=False)
    with pytest.raises(DataError, match="not found"):
        run_batch(tmp_path / "missing.csv", square, progress=False)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read"):
        run_batch(tmp_path / "bad.parquet", square, progress=False)
    with pytest.raises(SciarError, match=".csv or .parquet"):
        run_batch(pd.DataFrame({"x": [1]}), square, tmp_path / "out.txt", progress=False)


def test_batch_under_torchrun_equals_one_process(tmp_path):
    """Two gloo processes each take every other row and write a part; process 0 merges the parts in input
    order: the same table as one process on the same seed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    worker = Path(__file__).with_name("batch_worker.py")
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{root / 'tests'}", OMP_NUM_THREADS="1")
    from batch_worker import ROWS, row_fn

    run_batch(ROWS, row_fn(5), output=tmp_path / "one.csv", chunk_size=3, progress=False)
    # a part left by an interrupted run is resumed, not redone: its row is kept as it is
    (tmp_path / "two.part-1-of-2.csv").write_text("row_id,x,name,draw,k,status,error\n1,1,r1,-1.0,0,ok,\n1,1,r1,-1.0,1,ok,\n")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                    str(worker), str(tmp_path / "two.csv"), "5"], check=True, env=env, timeout=300)
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert not list(tmp_path.glob("two.part-*"))  # merged and removed
    assert two["row_id"].tolist() == one["row_id"].tolist() == sorted(one["row_id"].tolist())
    assert (two["draw"] == -1.0).sum() == 2  # the resumed part's row
    same = two["row_id"] != 1
    pd.testing.assert_frame_equal(one[same].reset_index(drop=True), two[same].reset_index(drop=True))
    assert one.loc[one["row_id"] == 3, "error"].item() == "ValueError: row three is bad"

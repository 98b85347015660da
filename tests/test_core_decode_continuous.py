"""The cached continuous decoding loop against the trunk re-run on the explicit sequence at every step."""

import pytest
import torch

from sciar.decode.continuous import Step, decode_continuous, randn_rows
from sciar.errors import SciarError
from sciar.model import ModelConfig, Transformer


def _trunk(pos="rope", block=12):
    torch.manual_seed(0)
    return Transformer(ModelConfig(block_size=block, n_layer=2, n_head=2, n_embd=16, pos=pos)).eval()


def _head():
    g = torch.Generator().manual_seed(1)
    out, back = torch.randn(16, 3, generator=g), torch.randn(3, 16, generator=g)
    # a continuous token of 3 values and its embedding (nonlinear, so errors in h would compound)
    return (lambda h: torch.tanh(h @ out)), (lambda v: torch.sin(v @ back))


def _reference(trunk, prefix, steps, window, keep, sink, kw=None):
    """Every step reads the explicit window (sink + the newest positions, slid as the loop documents)."""
    value, embed = _head()
    win, hs, vals = list(prefix.unbind(1)), [], []
    if len(win) > window:
        win = win[:sink] + win[len(win) - (keep - sink):]
    for i in range(steps):
        h = trunk(embeds=torch.stack(win, 1), **(kw or {}))[:, -1]  # positions 0..len-1, as the trunk was trained
        v = value(h)
        hs.append(h)
        vals.append(v)
        win.append(embed(v))
        if len(win) > window:
            win = win[:sink] + win[len(win) - (keep - sink):]
    return torch.stack(hs, 1), torch.stack(vals, 1)


@pytest.mark.parametrize("pos", ["rope", "learned"])
@pytest.mark.parametrize("window,keep,sink,P", [(12, 12, 0, 5), (8, 8, 0, 3), (8, 8, 2, 4), (8, 5, 2, 4), (6, 6, 0, 9)])
def test_cached_loop_equals_the_trunk_on_the_explicit_window(pos, window, keep, sink, P):
    trunk = _trunk(pos)
    value, embed = _head()
    prefix = torch.randn(3, P, 16, generator=torch.Generator().manual_seed(2))
    hs = []

    def step(h, i, rows):
        hs.append(h)
        v = value(h)
        return Step(v, embed(v))

    steps = 10
    out = decode_continuous(trunk, prefix, step, steps, window=window, keep=keep, sink=sink)
    ref_h, ref_v = _reference(trunk, prefix, steps, window, keep, sink)
    assert out.values.shape == (3, steps, 3) and out.lengths.tolist() == [steps] * 3
    torch.testing.assert_close(torch.stack(hs, 1), ref_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.values, ref_v, rtol=1e-5, atol=1e-5)
    slid = P + steps - 1 > window  # the sequence outgrew the window: the cache was refilled
    assert (out.refills > 0) == slid


def test_rows_that_ended_stop_running_and_keep_their_last_value():
    """Rows 0, 1, 2 end at steps 2, 4, 1 (by hand: the running rows per step are 012, 012, 01, 1, 1; a row's value
    is the step index until it ends, then stays)."""
    trunk = _trunk()
    ends = torch.tensor([2, 4, 1])
    ran = []

    def step(h, i, rows):
        ran.append(rows.tolist())
        assert h.shape == (len(rows), 16)
        return Step(torch.full((len(rows),), float(i)), h, done=ends[rows] == i)

    out = decode_continuous(trunk, torch.randn(3, 2, 16), step, 50)
    assert ran == [[0, 1, 2], [0, 1, 2], [0, 1], [1], [1]]
    assert out.lengths.tolist() == [3, 5, 2]
    assert out.values.tolist() == [[0, 1, 2, 2, 2], [0, 1, 2, 3, 4], [0, 1, 1, 1, 1]]


@pytest.mark.parametrize("cross", [False, True])
def test_rows_that_stay_decode_as_the_explicit_trunk_after_others_left(cross):
    """Rows leave at different steps while the window slides (sink 2, keep 5, window 8); the survivors' hidden
    states and values are the explicit trunk's (their cache rows, window and condition were kept aright)."""
    torch.manual_seed(0)
    trunk = Transformer(ModelConfig(block_size=12, n_layer=2, n_head=2, n_embd=16, cross_dim=6 if cross else 0)).eval()
    value, embed = _head()
    prefix = torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(2))
    ctx = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(3)) if cross else None
    kw = {"context": trunk.encode_context(ctx)} if cross else {}
    ends = torch.tensor([3, 100, 0, 6])  # row 1 never ends
    hs = {}

    def step(h, i, rows):
        for r, hr in zip(rows.tolist(), h):
            hs[r, i] = hr
        v = value(h)
        return Step(v, embed(v), done=ends[rows] == i)

    steps = 10
    out = decode_continuous(trunk, prefix, step, steps, window=8, keep=5, sink=2, trunk_kwargs=kw)
    assert out.refills > 0 and out.lengths.tolist() == [4, 10, 1, 7]
    for r in range(4):
        ref_h, ref_v = _reference(trunk, prefix[r : r + 1], steps, 8, 5, 2, {"context": ctx[r : r + 1]} if cross else {})
        n = int(out.lengths[r])
        assert sorted(i for rr, i in hs if rr == r) == list(range(n))  # run up to its end, never after
        # (float rounding of batches of other sizes compounds over the steps: a wrong row would be off by O(1))
        torch.testing.assert_close(torch.stack([hs[r, i] for i in range(n)]), ref_h[0, :n], rtol=1e-4, atol=5e-5)
        torch.testing.assert_close(out.values[r, :n], ref_v[0, :n], rtol=1e-4, atol=5e-5)
        assert (out.values[r, n:] == out.values[r, n - 1]).all()  # and its value stays


def test_per_row_noise_does_not_depend_on_the_batch():
    g = lambda s: torch.Generator().manual_seed(s)
    both = randn_rows([g(1), g(2)], (4,))
    assert torch.equal(both[1], randn_rows([g(2)], (4,))[0]) and not torch.equal(both[0], both[1])


def test_bad_requests_are_one_line_errors():
    trunk = _trunk(block=8)
    step = lambda h, i, rows: Step(h, h)
    x = torch.randn(1, 3, 16)
    with pytest.raises(SciarError, match="exceeds the model's context"):
        decode_continuous(trunk, x, step, 2, window=9)
    with pytest.raises(SciarError, match="sink"):
        decode_continuous(trunk, x, step, 2, sink=4)
    with pytest.raises(SciarError, match="at least one step"):
        decode_continuous(trunk, x, step, 0)

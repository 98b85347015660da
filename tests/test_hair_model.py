"""The hair model: its loss against hand-assembled cross-entropies, well-formed sampling, cached against full
decoding, the CLI's train/generate paths and their bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cli import main
from domains.hair import tokens as T
from domains.hair.head import load_head
from domains.hair.model import TOKEN_FIELDS, HairModel

TINY = {"model": dict(block_size=64, n_layer=2, n_head=2, n_embd=32, pos="rope"),
        "encoder": dict(groups=8, group_size=8, width=32)}


@pytest.fixture(scope="module")
def head():
    return load_head()


@pytest.fixture(scope="module")
def hairstyle(head):
    from domains.hair.baselines import condition_points
    from domains.hair.model import points_tensor
    from domains.hair.procedural import hairstyle

    cards = hairstyle(0, 0, head)[2]
    return cards, points_tensor(condition_points(cards, head, seed=0, n=256), head, 256)


def model(seed=0):
    torch.manual_seed(seed)
    return HairModel.from_preset(TINY)


def test_loss_is_the_mean_of_the_fields_cross_entropies(hairstyle, head):
    cards, pts = hairstyle
    toks = torch.from_numpy(T.encode(cards[:3], head))
    batch = torch.full((2, len(toks), 6), T.PAD)
    batch[0], batch[1, : len(toks) - 4] = toks, toks[: len(toks) - 4]  # row 1 shorter: padded with -1 rows
    m = model().eval()
    points = torch.stack([pts, pts.flip(0)])
    with torch.no_grad():
        loss = m(batch, points)
        h = m.hidden(batch[:, :-1], points)
        total, count = 0.0, 0
        tgt = batch[:, 1:]
        for b in range(2):
            for t in range(tgt.shape[1]):
                z = h[b, t]
                for j in range(6):  # field j reads h plus embeddings of the true earlier fields
                    if tgt[b, t, j] >= 0:
                        total += F.cross_entropy(m.head.outs[j](z)[None], tgt[b, t, j][None]).item()
                        count += 1
                    if j < 5:
                        v = int(tgt[b, t, j])
                        z = z + m.head.chosen[j].weight[v if v >= 0 else TOKEN_FIELDS[j]]
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_overfitting_one_hairstyle_lowers_the_loss(hairstyle, head):
    cards, pts = hairstyle
    toks = torch.from_numpy(T.encode(cards[:2], head))[None]
    m = model(1)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = m(toks, pts[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _check_sequence(s, max_len, head):
    assert 4 <= len(s) <= max_len and s[0, 0] == T.START and s[-1, 0] == T.END
    cards = T.decode(s, head)  # raises on a malformed sequence
    assert all(len(c) >= 2 for c in cards)
    pts = s[s[:, 0] == T.POINT, 1:]
    assert (pts >= 0).all() and (pts < np.asarray(T.FIELD_SIZES)).all()
    assert (s[s[:, 0] != T.POINT, 1:] == T.PAD).all()
    return cards


@pytest.mark.parametrize("max_len", [4, 9, 40])
def test_untrained_samples_always_parse_into_valid_cards(hairstyle, head, max_len):
    m = model(2).eval()
    _, pts = hairstyle
    for top_k in (None, 5):
        seqs = m.generate(pts[None].expand(4, -1, -1), max_len, 1.0, top_k, torch.Generator().manual_seed(3))
        for s in seqs:
            _check_sequence(s, max_len, head)


def test_cached_greedy_decoding_equals_full_reforward(hairstyle, head):
    """Greedy decoding through the cache against a loop that re-runs the whole sequence every step and applies the
    well-formedness rules written out per row."""
    m = model(4).eval()
    with torch.no_grad():  # a sharper head, so that the untrained model writes several cards before END
        m.head.outs[0][-1].bias.copy_(torch.tensor([2.0, -9, 3.0, 0.0]))
    _, pts = hairstyle
    max_len = 30
    got = m.generate(pts[None], max_len, top_k=1)[0]

    seq = [[T.START] + [T.PAD] * 5]
    ctx = m.trunk.encode_context(m.encoder(pts[None]))
    with torch.no_grad():
        while seq[-1][0] != T.END:
            h = m.trunk(embeds=m.embed(torch.tensor([seq])), context=ctx)[0, -1]
            in_card = 0
            for row in seq[::-1]:
                if row[0] != T.POINT:
                    break
                in_card += 1
            room = max_len - len(seq)
            ok = {T.POINT: room - 1 >= max(0, 1 - in_card) + 1, T.SEP: in_card >= 2 and room >= 4, T.END: in_card >= 2}
            logits = m.head.outs[0](h)
            flag = max((f for f in ok if ok[f]), key=lambda f: logits[f].item())
            row, z = [flag], h
            for j in range(1, 6):
                z = z + m.head.chosen[j - 1].weight[row[-1] if row[-1] >= 0 else TOKEN_FIELDS[j - 1]]
                row.append(int(m.head.outs[j](z).argmax()) if flag == T.POINT else T.PAD)
            seq.append(row)
    want = np.asarray(seq)
    assert len(T.decode(want, head)) >= 2
    np.testing.assert_array_equal(got, want)


def test_cli_generate_from_a_checkpoint_and_bad_input(hairstyle, head, tmp_path, capsys):
    from domains.hair.files import read_cards_csv
    from sciar.checkpoint import save_checkpoint

    m = model(5)
    save_checkpoint(tmp_path / "ck", m, {"model": m.cfg.to_dict(), "encoder": TINY["encoder"]}, None, {"domain": "hair"})
    cards, pts = hairstyle
    cloud = pts.numpy() * head.scale + head.origin
    np.savetxt(tmp_path / "cond.xyz", cloud)
    assert main(["hair", "generate", "--points", str(tmp_path / "cond.xyz"), "--checkpoint", str(tmp_path / "ck"),
                 "--out", str(tmp_path / "gen"), "--max-len", "24"]) == 0
    for name in ("cards.csv", "cards.obj", "cards.glb", "preview.png"):
        assert (tmp_path / "gen" / name).stat().st_size > 0
    (tmp_path / "garbage.ply").write_text("ply\nnot really\n")
    pd.DataFrame({"points": [str(tmp_path / "cond.xyz"), str(tmp_path / "garbage.ply"), str(tmp_path / "cond.xyz")]}).to_csv(
        tmp_path / "prompts.csv", index=False)
    assert main(["hair", "batch", "--input", str(tmp_path / "prompts.csv"), "--output", str(tmp_path / "res.parquet"),
                 "--checkpoint", str(tmp_path / "ck"), "--max-len", "16"]) == 0
    res = pd.read_parquet(tmp_path / "res.parquet")
    assert res["status"].tolist() == ["ok", "error", "ok"] and "garbage.ply" in res["error"][1]
    assert res["n_cards"][0] == len(read_cards_csv(res["cards"][0])) >= 1
    capsys.readouterr()
    (tmp_path / "garbage.ply").write_text("ply\nnot really\n")
    (tmp_path / "empty_ck").mkdir()
    runs = [
        ["hair", "generate", "--points", str(tmp_path / "cond.xyz"), "--checkpoint", "no-such-hair-model", "--out", str(tmp_path / "g1")],
        ["hair", "generate", "--points", str(tmp_path / "garbage.ply"), "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "g2")],
        ["hair", "generate", "--points", str(tmp_path / "cond.xyz"), "--checkpoint", str(tmp_path / "empty_ck"), "--out", str(tmp_path / "g3")],
        ["hair", "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")],
        ["hair", "train", "--data", str(tmp_path), "--preset", "huge", "--out", str(tmp_path / "t")],
    ]
    for argv in runs:
        assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(runs)
    assert "no-such-hair-model not found" in err[0] and "garbage.ply" in err[1] and "empty_ck" in err[2]
    assert "not a hairstyle set" in err[3]


def test_preview_samples_a_degenerate_card_set():
    """Greedy decoding of an undertrained model can write cards whose points coincide: the preview still draws."""
    from domains.hair.gallery import _surface_points

    v = np.array([[0.1, 0.2, 0.3]] * 3)
    p, n, _ = _surface_points(v, np.array([[0, 1, 2]]), np.ones(3), 5, np.random.default_rng(0))
    np.testing.assert_allclose(p, np.repeat(v[:1], 5, 0))
    assert np.isfinite(n).all()


def test_a_card_of_coincident_points_meshes_without_nan(head):
    from domains.hair.mesh import to_mesh

    card = np.tile([[0.0, 0.45, 0.05, 0.02, 0.003]], (3, 1))
    v = np.asarray(to_mesh([card, T.quantised([card], head)[0]], head).vertices)
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v[1] - v[0]), 0.02, rtol=1e-6)  # a section's corners: the card's width


def test_benchmark_scores_a_model_function_as_compare_does(hairstyle, head):
    """The model entries of the benchmark: a stand-in model that answers the quantised target scores exactly as
    the metrics compare that answer with the target; the baselines' entries stay null when not asked for."""
    from domains.hair.benchmark import run_benchmark
    from domains.hair.metrics import compare

    target = hairstyle[0][:12]
    r = run_benchmark([], {"test": [target]}, None, head, model=lambda cond, seed: T.quantised(target, head), baselines=False)
    want = compare(T.quantised(target, head), target, head, 0)
    for k in ("chamfer", "emd", "hausdorff", "iou"):
        assert r["procedural"]["model"][k] == pytest.approx(want[k])
    assert r["procedural"]["retrieval"] is None and r["inside_head_share"]["model"] == 0.0
    assert "representation" not in r and r["seconds_per_hairstyle"]["model"] >= 0


def test_the_shipped_checkpoint_writes_valid_cards_for_a_held_out_condition(head):
    """The shipped model (data/checkpoints/hair-tiny) loads by name and, for the condition cloud of a procedural
    hairstyle it never trained on, greedily writes cards that pass every check and lie on the hair region."""
    from scipy.spatial import cKDTree

    from domains.hair.baselines import condition_points
    from domains.hair.procedural import hairstyle
    from domains.hair.training import generate_cards, load_hair_model
    from domains.hair.validity import check_cards

    params, split, target = hairstyle(0, 73, head)  # a short spiky hairstyle of the held-out random draws
    assert split == "test" and params.style == "spiky"
    cond = condition_points(target, head, seed=0)
    cards = generate_cards(cond, load_hair_model("hair-tiny"), head, top_k=1, seed=0, max_len=400)[0]
    r = check_cards(cards, head)
    assert r["valid"] and r["short_cards"] == 0 and r["inside_share"] <= 0.01 and r["root_to_scalp_max_mm"] <= 30
    assert sum(len(c) + 1 for c in cards) + 1 <= 400  # START, the points, a SEP between cards, END
    assert np.median(cKDTree(cond).query(np.concatenate(cards)[:, :3])[0]) < 0.03

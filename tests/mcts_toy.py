"""A toy token task for the tree search: a tiny language model of ``x=DD;y=DD`` lines.

The punctuation is deterministic (forced tokens), the four digits are uniform, so
the model is a good prior and the search has a real space to explore. The toy
score is the distance of the digits to a target (lower is better); a last digit
0 makes a line invalid, like a failed validity check.
"""

import torch

from mcts import Evaluation
from sciar.model import LanguageModel, ModelConfig
from sciar.tokenizer import CharTokenizer

TOK = CharTokenizer("0123456789xy=;\n", special_tokens=["<s>"])
BOS = TOK.token_id("<s>")
NL = TOK.encode("\n")
TARGET = "7328"


def line(g: torch.Generator) -> str:
    d = "".join(str(int(i)) for i in torch.randint(10, (4,), generator=g))
    return f"x={d[:2]};y={d[2:]}\n"


def train_toy(steps: int = 150, seed: int = 0, make_line=line, **options) -> LanguageModel:
    """A tiny model of the toy lines; ``options``: ModelConfig options (Primer's ``qkv_conv``, ...)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **options)
    model = LanguageModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.tensor([[BOS] + TOK.encode(make_line(g)) for _ in range(32)])
        loss = model(x[:, :-1], targets=x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def digits(text: str) -> str | None:
    if len(text) != 10 or not (text.startswith("x=") and text[4:7] == ";y=" and text.endswith("\n")):
        return None
    d = text[2:4] + text[7:9]
    return d if d.isdigit() else None


def toy_score(text: str) -> float:
    d = digits(text)
    return float(sum(abs(int(a) - int(b)) for a, b in zip(d, TARGET)))


def toy_evaluate(seqs):
    out = []
    for s in seqs:
        text = TOK.decode(s[1:])
        d = digits(text)
        if d is None:
            out.append(Evaluation(False, error="malformed line"))
        elif d[-1] == "0":
            out.append(Evaluation(False, invalid_reward=-0.5, error="last digit 0", info={"digits": d}))
        else:
            out.append(Evaluation(True, toy_score(text), info={"digits": d}))
    return out

"""Extending a crystal model's context: next-token loss on long windows before any fine-tune.

    python benchmarks/crystals_context.py --checkpoints crystal-small crystal-medium --cifs 60 --block 2048

The windows: the first ``--cifs`` MP-20 validation CIFs, canonicalised and concatenated (separated by a blank line,
as training windows are), cut to ``--block`` + 1 tokens. For each checkpoint, the loss of its own context on the
first half, then of the model extended to ``--block`` tokens by each method of :func:`sciar.model.with_context`
("ntk", "linear") and by plain extrapolation (the old angles past the trained length), on the first half and on the
whole window. A method that keeps the loss near the original's needs only a short fine-tune. A checkpoint already
trained at ``--block`` tokens (the fine-tune, ``sciar crystal train --init CK --block-size 2048``) is scored as it is
on the same two spans.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", default=["crystal-small", "crystal-medium"])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "crystals" / "mp_20" / "val.csv.gz"))
    ap.add_argument("--cifs", type=int, default=60)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from domains.crystals.canonical import canonicalize
    from domains.crystals.tokenizer import cif_tokenizer
    from sciar.checkpoint import load_language_model
    from sciar.errors import SciarError
    from sciar.model import LanguageModel, ModelConfig, with_context
    from sciar.paths import find_checkpoint
    from sciar.runtime import set_threads

    warnings.simplefilter("ignore")
    set_threads(1)
    tok = cif_tokenizer()
    ids = []
    for cif in pd.read_csv(args.data, nrows=args.cifs)["cif"]:
        try:
            ids += tok.encode(canonicalize(cif).cif + "\n\n")
        except SciarError:
            continue
    if len(ids) < args.block + 1:
        sys.exit(f"error: {args.cifs} CIFs give {len(ids)} tokens, fewer than --block {args.block} + 1; give more --cifs")
    x = torch.tensor(ids[: args.block + 1])[None]
    out = {}
    with torch.no_grad():
        for name in args.checkpoints:
            model, _, _ = load_language_model(find_checkpoint(name))
            cfg, half = model.cfg, model.cfg.block_size

            def loss(m, n):
                return round(float(m.eval()(x[:, :n], targets=x[:, 1 : n + 1])), 4)

            if half >= args.block:  # a model already trained at this context (a fine-tune): as it is
                out[name] = {"as trained": {"first": loss(model, args.block // 2), "whole": loss(model, args.block)}}
                r = out[name]["as trained"]
                print(f"{name:<16} as trained   loss on the first {args.block // 2} tokens {r['first']:.4f}, "
                      f"on all {args.block} {r['whole']:.4f}", flush=True)
                continue

            extrapolate = LanguageModel(ModelConfig(**{**cfg.to_dict(), "block_size": args.block}), tied=model.head.tied)
            extrapolate.load_state_dict(model.state_dict())
            rows = {"original": {"first": loss(model, half)}}
            for method, m in (("ntk", with_context(model, args.block, "ntk")),
                              ("linear", with_context(model, args.block, "linear")), ("extrapolate", extrapolate)):
                rows[method] = {"first": loss(m, half), "whole": loss(m, args.block)}
            out[name] = rows
            for k, r in rows.items():
                print(f"{name:<16} {k:<12} loss on the first {half} tokens {r['first']:.4f}"
                      + (f", on all {args.block} {r['whole']:.4f}" if "whole" in r else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

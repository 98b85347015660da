"""Decoding loops, in one place.

- ``tokens``: cached token decoding (temperature, top-k/p, stop sequences, per-row generators,
  a constraint object per row) and the ``Decoder`` that tree search forks;
- ``constraints``: the constraint protocol (allowed tokens for a row; copy; rewind);
- ``continuous``: cached decoding of continuous and multi-field tokens (each step feeds back an
  embedding of what the head produced), with a cache refill when the window slides past the context;
- ``masked``: masked iterative decoding in a random order (MAR), with classifier-free guidance;
- ``speculative``: speculative decoding (drafts from multi-token heads or a smaller model, verified by
  rejection sampling, so the distribution stays the model's).
"""

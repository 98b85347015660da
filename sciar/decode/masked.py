"""Masked iterative decoding in a random order (MAR) of a :class:`sciar.masked.MaskedModel`.

Every row starts fully masked and draws its own random order of the L positions. Step
``k`` of ``K`` re-reads the whole sequence (one bidirectional stack with mask tokens), and
the diffusion head samples the tokens of the next positions in the order, so that after
the step ``floor(L * cos(pi/2 * (k+1)/K))`` positions stay masked (at least one token per
step, none after the last). Classifier-free guidance runs a conditioned and an
unconditioned copy of the batch through the trunk and mixes the head's two noise
predictions with a scale that ramps with the share of unmasked tokens,
``1 + (cfg - 1) * unmasked / L`` (unmasked: known after the step, as in MAR). The
unconditioned copy loses the conditions ``guide`` names (all by default), keeping the
others: guidance towards a class given a point cloud, say.
The conditions' cross-attention keys and values are computed once per generation.

Each row has its own ``torch.Generator`` (its order and its head noise), so a row's
output does not depend on the batch it was decoded in.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from sciar.errors import SciarError
from sciar.masked import CONDITIONS, MaskedModel


def cosine_schedule(L: int, K: int) -> list[int]:
    """How many tokens each of the ``K`` steps reveals (they sum to ``L``).

    After step ``k`` ``floor(L * cos(pi/2 * (k+1)/K))`` tokens stay masked, held between one and
    one fewer than before so that every step reveals at least one token; the last step reveals the rest.
    """
    if not 1 <= K <= L:
        raise SciarError(f"masked decoding needs between 1 and {L} steps (one per token at most), got {K}")
    counts, left = [], L
    for k in range(K):
        stay = 0 if k == K - 1 else max(1, min(math.floor(L * math.cos(math.pi / 2 * (k + 1) / K)), left - 1))
        counts.append(left - stay)
        left = stay
    return counts


def guidance_scale(cfg: float, unmasked: int, L: int) -> float:
    """Guidance at a step with ``unmasked`` of ``L`` tokens known: ``1 + (cfg - 1) * unmasked / L``."""
    return 1.0 + (cfg - 1.0) * unmasked / L


def row_generators(seed: int, n: int, device=None) -> list[torch.Generator]:
    """One generator per row, row ``i`` seeded ``seed + i``."""
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


@torch.no_grad()
def generate(
    model: MaskedModel,
    n: int | None = None,
    *,
    labels: torch.Tensor | list[int] | None = None,
    prefix: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    steps: int = 16,
    cfg: float = 1.0,
    guide: tuple[str, ...] | list[str] | None = None,
    temperature: float = 1.0,
    head_steps: int | None = None,
    seed: int = 0,
    generators: list[torch.Generator] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample ``[n, seq_len, token_dim]`` tokens by ``steps`` rounds of masked decoding.

    ``labels [n]``, ``prefix [n, prefix_len, prefix_dim]``, ``context [n, S, cross_dim]``: the
    conditions (None: the null condition). ``cfg``: classifier-free guidance scale (1: none).
    ``guide``: the conditions guidance acts on, of ``"class"``, ``"prefix"``, ``"context"`` (default:
    every condition the model has); the others condition both copies alike.
    ``temperature``: of the head's noise. ``head_steps``: the head's respaced diffusion steps
    (default its ``head_sample_steps``). ``generators``: one per row (default ``seed + row``).
    """
    if not isinstance(model, MaskedModel) or model.cfg.attention != "bidirectional":
        raise SciarError("masked decoding needs a masked (bidirectional) model; this one is causal: "
                         "decode it token by token")
    if not cfg >= 1.0:
        raise SciarError(f"guidance scale cfg={cfg} is below 1 (1 = no guidance)")
    if not temperature > 0:
        raise SciarError(f"temperature must be positive, got {temperature}")
    L, D = model.mcfg.seq_len, model.mcfg.token_dim
    counts = cosine_schedule(L, steps)
    guided = cfg > 1.0
    if guided and not model.conditioned:
        raise SciarError("guidance needs a condition, and this model was trained without one (use cfg=1)")
    guide = model.condition_names if guide is None else tuple(guide)
    if guided and (not guide or not set(guide) <= set(model.condition_names)):
        raise SciarError(f"guidance acts on some of this model's conditions ({', '.join(model.condition_names) or 'none'}), "
                         f"not on {list(guide)} (of {', '.join(CONDITIONS)})")
    B = _batch_size(n, labels, prefix, context)
    device = model.mask_token.device
    gens = generators if generators is not None else row_generators(seed, B, device)
    if len(gens) != B:
        raise SciarError(f"{len(gens)} generators for {B} rows")

    if guided:  # conditioned rows first, the same rows with null conditions second
        second = torch.arange(2 * B, device=device) >= B
        c = model.conditions(2 * B, _twice(labels), _twice(prefix), _twice(context),
                             drop={name: second for name in guide})
    else:
        c = model.conditions(B, labels, prefix, context)
    orders = torch.stack([torch.randperm(L, generator=g, device=device) for g in gens])
    tokens = torch.zeros(B, L, D, device=device)
    masked = torch.ones(B, L, dtype=torch.bool, device=device)
    done = 0
    for k in tqdm(range(steps), desc="masked decoding", disable=not progress):
        t_in, m_in = (tokens.repeat(2, 1, 1), masked.repeat(2, 1)) if guided else (tokens, masked)
        h = model.hidden(t_in, m_in, c)
        pos = orders[:, done : done + counts[k]]  # [B, n_k]: this step's positions, per row
        done += counts[k]
        scale = guidance_scale(cfg, done, L) if guided else 1.0
        idx = pos[..., None].expand(-1, -1, h.shape[-1])
        hk = h[:B].gather(1, idx)
        hu = h[B:].gather(1, idx) if guided else None
        n_k = pos.shape[1]
        cond = hk.reshape(B * n_k, -1) if hu is None else torch.cat([hk.reshape(B * n_k, -1), hu.reshape(B * n_k, -1)])
        # one head call for the batch; each row's tokens take their noise from the row's own generator
        new = model.head.sample(cond, temperature=temperature, cfg=scale, steps=head_steps, generator=gens).view(B, n_k, D)
        tokens.scatter_(1, pos[..., None].expand(-1, -1, D), new.to(tokens.dtype))
        masked.scatter_(1, pos, False)
    return tokens


def _twice(x):
    if x is None:
        return None
    x = torch.as_tensor(x)
    return torch.cat([x, x])


def _batch_size(n, labels, prefix, context) -> int:
    sizes = {len(x) for x in (labels, prefix, context) if x is not None}
    if n is not None:
        sizes.add(n)
    if len(sizes) > 1:
        raise SciarError(f"the number of rows and the conditions disagree (sizes {sorted(sizes)})")
    if not sizes:
        raise SciarError("say how many objects to generate (n) or give a condition per row")
    B = sizes.pop()
    if B < 1:
        raise SciarError("nothing to generate (n < 1)")
    return B

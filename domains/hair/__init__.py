"""Hair cards after CHARM: an anime hairstyle as 25 to 130 cards of control points (x, y, z, width, thickness).

Modules: ``head`` (the shipped head mesh and the token frame), ``tokens`` (card order and the piecewise
quantised multi-field tokens), ``mesh`` (cards to meshes and back), ``validity``, ``procedural`` (the
synthetic hairstyle generator), ``strands`` (USC-HairSalon strands to cards), ``metrics``, ``baselines``,
``benchmark``, ``gallery`` and the typer app in ``cli``.

A hairstyle is a plain ``list`` of ``(n_i, 5)`` float arrays in metres, in the head mesh's frame.
"""

"""Crystals: a CrystaLLM-style language model over canonical (symmetrized) CIF text.

Modules: ``cif`` (reading and canonicalising CIFs), ``tokenizer`` (the CIF
vocabulary), ``corpus`` (the shipped default corpus), ``lm`` (training presets and
data), ``generate`` (prompts, constrained sampling), ``validity`` (CrystaLLM's
checks), ``retrieval`` (template retrieval), ``benchmark`` (crystal structure
prediction), ``cli`` (``sciar crystal ...``).
"""

DOMAIN = "crystal"
DEFAULT_CHECKPOINT = "crystal-medium"  # the shipped model used when no --checkpoint is given

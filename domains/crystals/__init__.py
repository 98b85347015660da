"""Crystals: a CrystaLLM-style language model over canonical (symmetrized) CIF text.

Modules: ``composition`` (user compositions), ``cif`` (fields of CIF text), ``symmetry`` (space groups and
their operations), ``readers`` (CIF files, folders and tables; text to structures), ``canonical``
(CrystaLLM's canonical CIF), ``canon_cache`` (many inputs at once, cached, deduplicated), ``tokenizer``
(the CIF vocabulary), ``corpus`` (the shipped default corpus), ``lm`` (training presets and data),
``generate`` (prompts, constrained sampling), ``validity`` (CrystaLLM's checks), ``matching`` (the
structure matcher), ``retrieval`` (template retrieval), ``benchmark`` (crystal structure prediction),
``search`` (MCTS toward low formation energy), ``energy`` (formation-energy scorers), ``adapter`` (what
the CLI and the checkpoint loader see), ``cli`` (``sciar crystal ...``).
"""

import warnings

# pymatgen sorts formulas by electronegativity and warns for the noble gases, which have none
warnings.filterwarnings("ignore", message="No Pauling electronegativity")

DOMAIN = "crystal"
DEFAULT_CHECKPOINT = "crystal-medium"  # the shipped model used when no --checkpoint is given

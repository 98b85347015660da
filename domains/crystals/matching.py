"""Matching crystal structures: the benchmark's StructureMatcher, bounded so that absurd cells cannot exhaust memory.

Structure prediction's match rate, the retrieval index's votes and the ranking of samples all compare
structures with :func:`matcher`.
"""

from __future__ import annotations

import numpy as np

MAX_SPHERE_POINTS = 1e6  # the most lattice points the matcher may enumerate for one pair of structures
MAX_MAPPING_PAIRS = 1e8  # the most lattice-vector pairs it may compare


def matcher(stol: float = 0.5, angle_tol: float = 10, ltol: float = 0.3):
    """The benchmark's ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` (or other tolerances), safe on
    absurd cells."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    class BoundedMatcher(StructureMatcher):
        """A StructureMatcher that calls a pair with an absurd cell different instead of trying.

        To map one lattice onto another pymatgen collects the lattice vectors as long as each of the
        other's (within ``ltol``, both scaled to the same volume per site) and compares them pairwise:
        a 552 x 552 x 0.07 A cell from an undertrained model asked for 27 GiB and the machine killed
        the process. The estimate counts lattice points in that sphere and those shells with one
        site's volume as the cell's (an upper bound); on MP-20, carbon-24 and perov-5 test structures
        it stays below 2e4 points and 1e7 pairs.
        """

        def _affordable(self, s1, s2) -> bool:
            # each onto itself too: the Niggli reduction maps the reduced lattice onto the original
            for a, b in ((s1, s1), (s2, s2), (s1, s2), (s2, s1)):
                site_volume = a.volume / len(a)
                lengths = np.array(b.lattice.abc) * (site_volume / (b.volume / len(b))) ** (1 / 3)
                reach = lengths * (1 + self.ltol)
                if 4 / 3 * np.pi * reach.max() ** 3 / site_volume > MAX_SPHERE_POINTS:
                    return False
                shell = np.maximum(1, 4 / 3 * np.pi * (reach ** 3 - (lengths / (1 + self.ltol)) ** 3) / site_volume)
                if max(shell[0] * shell[1], shell[0] * shell[2], shell[1] * shell[2]) > MAX_MAPPING_PAIRS:
                    return False
            return True

        def fit(self, struct1, struct2, *args, **kwargs):
            return self._affordable(struct1, struct2) and super().fit(struct1, struct2, *args, **kwargs)

        def get_rms_dist(self, struct1, struct2):
            return super().get_rms_dist(struct1, struct2) if self._affordable(struct1, struct2) else None

    return BoundedMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)

"""Seeds: the scenario's one seed, and the generator seeds derived from it.

A scenario's ``seed`` may be any integer a TOML file holds, ``0 … 2⁶³ − 1``. Generators
for other purposes (noise, batch order, data composition) take seeds derived from it by
an affine map, reduced modulo 2⁶³ so that every derived seed fits the signed 64-bit seed a
``torch.Generator`` accepts. Wherever the map did not overflow before, the reduction
changes nothing, so runs keep their numbers.
"""

from __future__ import annotations

#: One more than the largest seed: ``torch.Generator.manual_seed`` takes a signed 64-bit int.
SEED_LIMIT = 2**63


def derived_seed(seed: int, scale: int = 1, offset: int = 0) -> int:
    """``(seed · scale + offset) mod 2⁶³``: a generator seed for one purpose of a run.

    >>> derived_seed(7, 1_000_003, 999_983)
    8000004
    >>> derived_seed(2**63 - 1, 1, 1)
    0
    """
    return (int(seed) * scale + offset) % SEED_LIMIT

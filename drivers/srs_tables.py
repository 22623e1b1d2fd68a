"""The SR830 and SR860 value tables the lock-in driver encodes settings with (manuals, ch. 5 / ch. 4).

Contract: index i of a table is the value the instrument's command takes as ``i``
(``SENS``/``SCAL`` full scale in V, ``OFLT`` time constant in s). The SR830's sensitivities
ascend (2 nV first), the SR860's descend (1 V first).
"""

from __future__ import annotations

#: SR830 full-scale sensitivities (V), index = ``SENS i`` (manual p. 5-6): 2 nV .. 1 V.
SR830_SENSITIVITIES: tuple[float, ...] = (
    2e-9,
    5e-9,
    10e-9,
    20e-9,
    50e-9,
    100e-9,
    200e-9,
    500e-9,
    1e-6,
    2e-6,
    5e-6,
    10e-6,
    20e-6,
    50e-6,
    100e-6,
    200e-6,
    500e-6,
    1e-3,
    2e-3,
    5e-3,
    10e-3,
    20e-3,
    50e-3,
    100e-3,
    200e-3,
    500e-3,
    1.0,
)
#: SR830 time constants (s), index = ``OFLT i`` (manual p. 5-6): 10 us .. 30 ks.
SR830_TIME_CONSTANTS: tuple[float, ...] = (
    10e-6,
    30e-6,
    100e-6,
    300e-6,
    1e-3,
    3e-3,
    10e-3,
    30e-3,
    100e-3,
    300e-3,
    1.0,
    3.0,
    10.0,
    30.0,
    100.0,
    300.0,
    1e3,
    3e3,
    10e3,
    30e3,
)
#: SR860 full-scale sensitivities (V), index = ``SCAL i``: 1 V first, 1 nV last.
SR860_SENSITIVITIES: tuple[float, ...] = (
    1.0,
    500e-3,
    200e-3,
    100e-3,
    50e-3,
    20e-3,
    10e-3,
    5e-3,
    2e-3,
    1e-3,
    500e-6,
    200e-6,
    100e-6,
    50e-6,
    20e-6,
    10e-6,
    5e-6,
    2e-6,
    1e-6,
    500e-9,
    200e-9,
    100e-9,
    50e-9,
    20e-9,
    10e-9,
    5e-9,
    2e-9,
    1e-9,
)
#: SR860 time constants (s), index = ``OFLT i``: 1 us .. 30 ks.
SR860_TIME_CONSTANTS: tuple[float, ...] = (1e-06, 3e-06, *SR830_TIME_CONSTANTS)

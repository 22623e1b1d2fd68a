"""Safety limits of the STM controller: what a run may never send (bias, sweep limits, set-point).

Contract: :class:`SafetyLimits` is read from ``[instruments.nanonis.limits]``; its checks raise
:class:`~stslive.drivers.errors.SafetyLimitError` before anything is sent. The preflight uses the
same checks on a whole run config before any instrument is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from stslive.drivers.errors import ConfigError, SafetyLimitError
from stslive.drivers.tomlfile import check_keys

INSTRUMENT = "nanonis"


@dataclass(frozen=True)
class SafetyLimits:
    """Bounds a lab sets so that a wrong config cannot crash the tip.

    Parameters
    ----------
    bias_min_V, bias_max_V
        Allowed bias (V), also for both sweep limits.
    setpoint_min_A, setpoint_max_A
        Allowed set-point magnitude ``|I_set|`` (A).
    sweep_margin
        The Start timeout is ``timeout_s + sweep_margin * nominal sweep time``.
    """

    bias_min_V: float = -1.0
    bias_max_V: float = 1.0
    setpoint_min_A: float = 1e-12
    setpoint_max_A: float = 5e-9
    sweep_margin: float = 2.0

    def __post_init__(self) -> None:
        if not self.bias_min_V < self.bias_max_V:
            raise ConfigError(f"limits: bias_min_V ({self.bias_min_V}) must be < bias_max_V ({self.bias_max_V})")
        if not 0 <= self.setpoint_min_A < self.setpoint_max_A:
            raise ConfigError("limits: need 0 <= setpoint_min_A < setpoint_max_A")
        if not self.sweep_margin >= 1:
            raise ConfigError(f"limits: sweep_margin ({self.sweep_margin}) must be >= 1")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> SafetyLimits:
        """From a config table (V, A); unknown keys and values that are not numbers raise ConfigError naming them."""
        check_keys(table, (f.name for f in fields(cls)), what="limits")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"limits: {key} = {value!r} must be a number")
        return cls(**{k: float(v) for k, v in table.items()})

    def check_bias(self, volts: float, *, what: str = "bias") -> None:
        """SafetyLimitError unless ``bias_min_V <= volts <= bias_max_V``."""
        if not (math.isfinite(volts) and self.bias_min_V <= volts <= self.bias_max_V):
            raise SafetyLimitError(
                INSTRUMENT,
                f"{what} {volts!r} V outside the safety limits [{self.bias_min_V}, {self.bias_max_V}] V; "
                "nothing was sent (change [limits] in the config if this is intended)",
            )

    def check_setpoint(self, amperes: float) -> None:
        """SafetyLimitError unless ``setpoint_min_A <= |amperes| <= setpoint_max_A``."""
        if not (math.isfinite(amperes) and self.setpoint_min_A <= abs(amperes) <= self.setpoint_max_A):
            raise SafetyLimitError(
                INSTRUMENT,
                f"set-point {amperes!r} A outside the safety limits |I| in [{self.setpoint_min_A}, "
                f"{self.setpoint_max_A}] A; nothing was sent",
            )

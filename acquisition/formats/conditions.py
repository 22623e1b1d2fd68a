"""What broadens a recording's spectra besides the sample: temperature, lock-in modulation, bias wiring.

Contract: every reader of recordings (run archive, Nanonis ``.3ds`` grid, Nanonis ``.dat`` point
spectra) answers ``recording.conditions(amplitude_convention=...)`` with one
:class:`RecordingConditions`; a value the file does not record is None (never a default), and
``sources`` names where each known value was read. :func:`conditions_from_header` reads them
from a Nanonis header (``.3ds`` and ``.dat`` share the module keys, e.g. ``Lock-in>Amplitude``).

Nanonis writes ``Lock-in>Amplitude`` without saying whether it is rms or zero-to-peak, and no
document we could read settles it (``docs/formats.md``): the amplitude is kept as written and
its rms value is known only when the caller states the convention (``"peak"``: rms = A / sqrt 2;
``"rms"``: rms = A).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, get_args

import numpy as np

from stslive.drivers.errors import ConfigError

__all__ = [
    "AMPLITUDE_CONVENTIONS",
    "AmplitudeConvention",
    "RecordingConditions",
    "check_convention",
    "conditions_from_header",
    "header_number",
    "median_finite",
]

AmplitudeConvention: TypeAlias = Literal["peak", "rms"]
AMPLITUDE_CONVENTIONS: tuple[str, ...] = get_args(AmplitudeConvention)
#: Where a ``.3ds`` exported by stslive states its convention (``nanonis3ds_write`` writes it).
AMPLITUDE_CONVENTION_KEY = "stslive>Lock-in amplitude convention"
_TEMPERATURE_KEY = re.compile(r"^Temperature \d+>.*\(K\)\s*$", re.IGNORECASE)
_TEMPERATURE_PARAMETER = re.compile(r"temperature.*\(K\)\s*$", re.IGNORECASE)
_FIELD_KEY = re.compile(r"(magnet|field).*\(T\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RecordingConditions:
    """Measurement conditions of a recording (SI units; None: the file does not say).

    Attributes
    ----------
    temperature_K : float or None
        Sample temperature, K.
    modulation_Vrms : float or None
        Lock-in bias modulation at the junction, V rms; 0.0 when the modulation was off during
        the sweeps. None when unknown, including a Nanonis amplitude of unknown convention.
    modulation_Vrms_by_set : mapping of int to float or None
        Per set-point set (archives; one entry ``0`` for Nanonis files). ``modulation_Vrms`` is
        None when the sets differ.
    lockin_amplitude_V : float or None
        The modulation amplitude as the file writes it (V; rms or peak, see ``amplitude_convention``).
    amplitude_convention : {"rms", "peak"} or None
        How ``lockin_amplitude_V`` is meant: stslive archives store rms; for Nanonis files only
        what the caller stated, else None.
    lockin_frequency_Hz : float or None
    lockin_harmonic : int or None
        Harmonic of the first demodulator (1: dI/dV, 2: d2I/dV2).
    lockin_sensitivity_V : float or None
        External lock-in full scale (archives); None for the controller's own demodulator.
    bias_calibration_V_per_V : float or None
        Nanonis ``Bias>Calibration (V/V)``: volts at the output per volt of bias set.
    bias_divider : float or None
        Junction bias per applied volt of a divider between lock-in/controller and junction
        (archive start document ``metadata.conditions.bias_divider``).
    dynes_width_eV : float or None
        Dynes broadening Gamma, eV, when the recording knows it (simulated films).
    magnetic_field_T : float or None
    sources : mapping of str to str
        Field name -> where its value was read (header key, document key, pixel readings).
    """

    temperature_K: float | None = None
    modulation_Vrms: float | None = None
    modulation_Vrms_by_set: Mapping[int, float | None] = field(default_factory=dict)
    lockin_amplitude_V: float | None = None
    amplitude_convention: AmplitudeConvention | None = None
    lockin_frequency_Hz: float | None = None
    lockin_harmonic: int | None = None
    lockin_sensitivity_V: float | None = None
    bias_calibration_V_per_V: float | None = None
    bias_divider: float | None = None
    dynes_width_eV: float | None = None
    magnetic_field_T: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain dict (JSON-ready; the per-set map keyed by str)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["modulation_Vrms_by_set"] = {str(k): v for k, v in self.modulation_Vrms_by_set.items()}
        out["sources"] = dict(self.sources)
        return out


def check_convention(value: str | None) -> AmplitudeConvention | None:
    """``value`` as an :data:`AmplitudeConvention` (or None); ConfigError for anything else."""
    if value is None or value in AMPLITUDE_CONVENTIONS:
        return value  # type: ignore[return-value]  # checked just above
    raise ConfigError(f"lock-in amplitude convention {value!r}: give one of {AMPLITUDE_CONVENTIONS}")


def header_number(header: Mapping[str, str], key: str) -> float | None:
    """The finite number under ``key``, None when absent, empty, ``N/A`` or not a finite number."""
    raw = header.get(key)
    if raw is None:
        return None
    try:
        value = float(raw.strip().strip('"'))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _flag(header: Mapping[str, str], key: str) -> bool | None:
    raw = header.get(key, "").strip().strip('"').upper()
    return {"TRUE": True, "ON": True, "FALSE": False, "OFF": False}.get(raw)


def median_finite(values: Iterable[np.ndarray]) -> float | None:
    """Median of the finite values of some arrays, None when there is none."""
    flat = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    joined = np.concatenate(flat) if flat else np.zeros(0)
    joined = joined[np.isfinite(joined)]
    return float(np.median(joined)) if joined.size else None


def conditions_from_header(
    header: Mapping[str, str],
    *,
    parameters: Mapping[str, np.ndarray] | None = None,
    amplitude_convention: AmplitudeConvention | None = None,
) -> RecordingConditions:
    """Conditions from a Nanonis header (``.3ds`` or ``.dat``) and per-point parameters.

    Rules: the temperature is the median of the finite per-point parameters named
    "Temperature ... (K)", else the first header key ``Temperature n>... (K)``; the modulation is
    active when the lock-in modulates the bias (``Lock-in>Modulated signal`` "Bias ...") and ran
    during the sweeps (``Lock-in>Lock-in status`` ON or ``Bias Spectroscopy>Lock-In run`` TRUE),
    is 0.0 when it did not run, and its rms value follows ``amplitude_convention`` (None: the
    convention a file exported by stslive states, else unknown); the field is the first key
    with "Magnet" or "Field" ending in "(T)".
    """
    sources: dict[str, str] = {}
    values: dict[str, object] = {}
    params = dict(parameters or {})
    t_names = [n for n in params if _TEMPERATURE_PARAMETER.search(n)]
    temperature = median_finite(params[n] for n in t_names)
    if temperature is not None:
        values["temperature_K"], sources["temperature_K"] = temperature, f"per-point parameters {t_names} (median)"
    else:
        for key in header:
            if _TEMPERATURE_KEY.search(key) and (number := header_number(header, key)) is not None:
                values["temperature_K"], sources["temperature_K"] = number, f"header {key}"
                break
    for key in header:
        if _FIELD_KEY.search(key) and (number := header_number(header, key)) is not None:
            values["magnetic_field_T"], sources["magnetic_field_T"] = number, f"header {key}"
            break
    for name, key in (
        ("lockin_amplitude_V", "Lock-in>Amplitude"),
        ("lockin_frequency_Hz", "Lock-in>Frequency (Hz)"),
        ("bias_calibration_V_per_V", "Bias>Calibration (V/V)"),
    ):
        if (number := header_number(header, key)) is not None:
            values[name], sources[name] = number, f"header {key}"
    harmonic = header_number(header, "Lock-in>Harmonic D1")
    harmonic_key = "Lock-in>Harmonic D1"
    if harmonic is None:
        harmonic, harmonic_key = header_number(header, "Lock-in>Harmonic"), "Lock-in>Harmonic"
    if harmonic is not None and harmonic.is_integer():
        values["lockin_harmonic"], sources["lockin_harmonic"] = int(harmonic), f"header {harmonic_key}"
    if amplitude_convention is None and (stated := header.get(AMPLITUDE_CONVENTION_KEY)) in AMPLITUDE_CONVENTIONS:
        amplitude_convention = stated  # type: ignore[assignment]  # checked just above
    modulation = _modulation(header, values.get("lockin_amplitude_V"), amplitude_convention, sources)  # type: ignore[arg-type]
    if modulation is not None:
        values["modulation_Vrms"] = modulation
    return RecordingConditions(
        **values,  # type: ignore[arg-type]  # keys are field names, values of their types
        modulation_Vrms_by_set={0: modulation},
        amplitude_convention=amplitude_convention if "lockin_amplitude_V" in values else None,
        sources=sources,
    )


def _modulation(
    header: Mapping[str, str],
    amplitude: float | None,
    convention: AmplitudeConvention | None,
    sources: dict[str, str],
) -> float | None:
    modulated = header.get("Lock-in>Modulated signal")
    status, run = _flag(header, "Lock-in>Lock-in status"), _flag(header, "Bias Spectroscopy>Lock-In run")
    if modulated is None or (status is None and run is None):
        return None  # no lock-in block, or it does not say whether the modulation ran
    if not modulated.strip().strip('"').lower().startswith("bias") or not (status or run):
        sources["modulation_Vrms"] = "header: the lock-in did not modulate the bias during the sweeps"
        return 0.0
    if amplitude is None or convention is None:
        sources["modulation_Vrms"] = (
            "unknown: header Lock-in>Amplitude without a stated convention (rms or peak)"
            if amplitude is not None
            else "unknown: no Lock-in>Amplitude in the header"
        )
        return None
    sources["modulation_Vrms"] = f"header Lock-in>Amplitude read as {convention}"
    return amplitude / math.sqrt(2.0) if convention == "peak" else amplitude

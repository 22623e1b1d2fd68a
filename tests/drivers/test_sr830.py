"""SR830/SR860 driver on recorded exchanges: tables, encodings, parsers, status decoding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from stslive.drivers.errors import ControllerError, InstrumentReplyError, LockInOverload, SafetyLimitError
from stslive.drivers.protocols import LockIn
from stslive.drivers.scpi import RecordedSession, Setting
from stslive.drivers.sr830 import (
    SR830,
    SR830_SENSITIVITIES,
    SR830_TIME_CONSTANTS,
    SR860,
    SR860_SENSITIVITIES,
    SR860_TIME_CONSTANTS,
    LockInModel,
    LockInWarning,
    SrsLockIn,
    model_from_identity,
)


@contextmanager
def lockin(exchanges: list[tuple[str, str | None]], model: LockInModel = SR830) -> Iterator[SrsLockIn]:
    """A driver on recorded exchanges; leaving the block with an exchange unused fails the test."""
    with RecordedSession(exchanges) as session:
        yield SrsLockIn(session, model)


def test_tables_are_the_manuals():
    assert len(SR830_SENSITIVITIES) == 27 and SR830_SENSITIVITIES[0] == 2e-9 and SR830_SENSITIVITIES[-1] == 1.0
    assert SR830_SENSITIVITIES[8] == 1e-6  # SENS 8 = 1 uV (manual table)
    assert len(SR830_TIME_CONSTANTS) == 20 and SR830_TIME_CONSTANTS[0] == 10e-6 and SR830_TIME_CONSTANTS[-1] == 30e3
    assert SR830_TIME_CONSTANTS[8] == 0.1  # OFLT 8 = 100 ms
    # SR860 counts the other way: SCAL 0 = 1 V ... SCAL 27 = 1 nV
    assert len(SR860_SENSITIVITIES) == 28 and SR860_SENSITIVITIES[0] == 1.0 and SR860_SENSITIVITIES[-1] == 1e-9
    assert len(SR860_TIME_CONSTANTS) == 22 and SR860_TIME_CONSTANTS[0] == 1e-6 and SR860_TIME_CONSTANTS[-1] == 30e3
    for table in (SR830_SENSITIVITIES, SR830_TIME_CONSTANTS, SR860_TIME_CONSTANTS):
        assert list(table) == sorted(table)
    assert list(SR860_SENSITIVITIES) == sorted(SR860_SENSITIVITIES, reverse=True)


def test_implements_the_lockin_protocol():
    with lockin([]) as li:
        assert isinstance(li, LockIn)


def test_sets_send_table_indices_and_verify_with_esr():
    with lockin(
        [
            ("OFLT 5", None),
            ("*ESR?", "0"),
            ("SENS 8", None),
            ("*ESR?", "0"),
            ("HARM?", "1"),  # harmonic x frequency is checked before the frequency goes out
            ("FREQ 9.730000e+02", None),
            ("*ESR?", "0"),
            ("SLVL 0.0100", None),
            ("*ESR?", "0"),
        ]
    ) as li:
        li.set_time_constant(3e-3)
        li.set_sensitivity(1e-6)
        li.set_frequency(973.0)
        li.set_amplitude(0.01)


def test_sr860_uses_scal_counted_from_one_volt():
    with lockin([("SCAL 18", None), ("*ESR?", "0"), ("SCAL?", "3"), ("OFLT?", "0")], model=SR860) as li:
        li.set_sensitivity(1e-6)
        assert li.get_sensitivity() == 100e-3
        assert li.get_time_constant() == 1e-6


def test_gets_decode_replies():
    with lockin(
        [
            ("*IDN?", "Stanford_Research_Systems,SR830,s/n86001,ver1.07"),
            ("FREQ?", "973.00"),
            ("SLVL?", "0.004"),
            ("OFLT?", "8"),
            ("SENS?", "26"),
            ("SNAP? 1,2,3,4", "1.5e-06,-2.0e-06,2.5e-06,-53.13"),
        ]
    ) as li:
        assert li.identity().startswith("Stanford_Research_Systems,SR830")
        assert li.get_frequency() == 973.0
        assert li.get_amplitude() == 0.004
        assert li.get_time_constant() == 0.1
        assert li.get_sensitivity() == 1.0
        reading = li.read()
        assert (reading.x, reading.y, reading.r, reading.theta_deg) == (1.5e-6, -2.0e-6, 2.5e-6, -53.13)


@pytest.mark.parametrize(
    "call, value",
    [
        ("set_time_constant", 2e-3),  # not a table value: no silent rounding
        ("set_sensitivity", 3e-6),
        ("set_frequency", 200e3),  # above the SR830's 102 kHz
        ("set_amplitude", 0.001),  # below the SR830's 4 mV
        ("set_amplitude", float("nan")),
    ],
)
def test_out_of_range_raises_before_sending(call, value):
    with lockin([]) as li:
        with pytest.raises(SafetyLimitError, match="nothing was sent|finite"):
            getattr(li, call)(value)


def test_explicit_rounding_helper():
    assert SR830.settings["time_constant"].nearest_at_least(2e-3) == 3e-3
    assert SR830.settings["sensitivity"].nearest_at_least(1e-6) == 1e-6
    with pytest.raises(ValueError):
        SR830.settings["sensitivity"].nearest_at_least(2.0)


@pytest.mark.parametrize(
    "query, reply",
    [
        ("FREQ?", "garbage"),
        ("FREQ?", ""),
        ("FREQ?", "nan"),
        ("FREQ?", "1.0,2.0"),
        ("OFLT?", "25"),
        ("OFLT?", "3.5"),
        ("SENS?", "-1"),
    ],
)
def test_reply_parser_refuses_garbage(query, reply):
    getter = {"FREQ?": "get_frequency", "OFLT?": "get_time_constant", "SENS?": "get_sensitivity"}[query]
    with lockin([(query, reply)]) as li:
        with pytest.raises(InstrumentReplyError):
            getattr(li, getter)()


@pytest.mark.parametrize("reply", ["1e-6,2e-6,3e-6", "1e-6,2e-6,x,4", "OVLD"])
def test_snap_parser_refuses_garbage(reply):
    with lockin([("SNAP? 1,2,3,4", reply)]) as li:
        with pytest.raises(InstrumentReplyError):
            li.read()


def test_refused_set_raises_controller_error():
    with lockin([("FREQ?", "1000.0"), ("HARM 2", None), ("*ESR?", "16")]) as li:
        with pytest.raises(ControllerError, match="execution error") as info:
            li.set("harmonic", 2)
        assert info.value.code == 16 and info.value.command == "HARM"


def test_status_decodes_overloads_and_check_raises():
    with lockin(
        [
            ("LIAS?;ERRS?;*ESR?", "5;0;0"),
            ("LIAS?;ERRS?;*ESR?", "2;0;0"),
        ]
    ) as li:
        status = li.status()
        assert status.input_overload and status.output_overload and not status.reserve_overload
        assert status.overloaded
        with pytest.raises(LockInOverload, match="reserve overload"):
            li.check()


def test_unlock_is_a_warning_and_hardware_errors_are_errors():
    with lockin(
        [
            ("LIAS?;ERRS?;*ESR?", "8;0;0"),
            ("LIAS?;ERRS?;*ESR?", "0;64;32"),
        ]
    ) as li:
        with pytest.warns(LockInWarning, match="unlocked"):
            status = li.check()
        assert status.unlocked and not status.overloaded
        with pytest.raises(ControllerError, match="DSP error.*command error"):
            li.check()


def test_sr860_status_register():
    with lockin([("CUROVLDSTAT?;*ESR?", "16;0"), ("CUROVLDSTAT?;*ESR?", "520;0")], model=SR860) as li:
        assert li.status().input_overload
        status = li.status()  # 520 = bit 3 (unlock) + bit 9 (not decoded: reported, not dropped)
        assert status.unlocked and status.errors == ("CUROVLDSTAT bit 9",)


def test_model_from_identity():
    assert model_from_identity("Stanford_Research_Systems,SR860,003,v1.47") is SR860
    with pytest.raises(ControllerError, match="not an SR830/SR860"):
        model_from_identity("LSCI,MODEL372,LSA1,1.4")


def test_recorded_session_fails_on_exit_with_exchanges_unused():
    with pytest.raises(AssertionError, match=r"1 exchange\(s\) unused: \[\('SLVL\?', '1'\)\]"):
        with lockin([("FREQ?", "1000"), ("SLVL?", "1")]) as li:
            li.get_frequency()


def test_recorded_session_does_not_hide_the_error_that_ended_the_block():
    with pytest.raises(KeyError, match="no setting"):
        with lockin([("FREQ?", "1000")]) as li:
            li.get("no setting")  # the unused FREQ? is not reported over the KeyError


def test_recorded_session_refuses_a_message_out_of_order():
    with pytest.raises(AssertionError, match=r"step 0: expected 'SLVL\?'.*got 'FREQ\?'"):
        with lockin([("SLVL?", "1")]) as li:
            li.get_frequency()


# -- every setting of both tables, its query and its set, generated from the table ---------------
def _every_setting() -> list[object]:
    return [
        pytest.param(model, setting, id=f"{model.name}-{setting.name}")
        for model in (SR830, SR860)
        for setting in model.settings.values()
    ]


def _sample(setting: Setting) -> tuple[float, float | int]:
    """A value the setting takes, and the number that stands for it on the wire.

    Index settings travel as their table position, away from both ends; numbers as themselves,
    an eighth into their range and rounded to 4 digits so that every set format prints them exactly.
    """
    if setting.kind == "index":
        i = len(setting.values) // 3
        return setting.values[i], i
    assert setting.bounds is not None
    low, high = setting.bounds
    if setting.kind == "int":
        n = int(low + (high - low) // 8)
        return float(n), n
    value = float(f"{low + (high - low) / 8:.4g}")
    return value, value


@pytest.mark.parametrize("model, setting", _every_setting())
def test_every_setting_query_decodes_the_instruments_reply(model: LockInModel, setting: Setting):
    value, wire = _sample(setting)
    reply = f"{wire:.6e}" if setting.kind == "float" else str(wire)  # as the instrument prints it
    with lockin([(setting.query, reply)], model=model) as li:
        assert li.get(setting.name) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("model, setting", _every_setting())
def test_every_setting_set_sends_the_query_header_and_checks_esr(model: LockInModel, setting: Setting):
    value, wire = _sample(setting)
    assert setting.set_format is not None
    command = setting.set_format.format(wire)
    header, _, argument = command.partition(" ")
    assert header == setting.query.removesuffix("?")  # one mnemonic for query and set (both manuals)
    assert float(argument) == wire  # the set format prints the wire value exactly
    checks = {"frequency": [("HARM?", "1")], "harmonic": [("FREQ?", "1")]}.get(setting.name, [])
    with lockin([*checks, (command, None), ("*ESR?", "0")], model=model) as li:
        li.set(setting.name, value)


def test_status_with_a_missing_answer_is_a_reply_error():
    with lockin([("LIAS?;ERRS?;*ESR?", "0;0")]) as li:
        with pytest.raises(InstrumentReplyError, match="expected 3"):
            li.status()


@pytest.mark.parametrize(
    ("model", "harmonic", "frequency"), [(SR830, "2", 60e3), (SR830, "19999", 6.0), (SR860, "5", 100.1e3)]
)
def test_harmonic_times_frequency_beyond_the_limit_is_refused_before_sending(model, harmonic, frequency):
    with lockin([("HARM?", harmonic)], model=model) as li:  # only the check's query goes out
        with pytest.raises(SafetyLimitError, match="exceeds"):
            li.set_frequency(frequency)


def test_a_harmonic_beyond_the_limit_is_refused_before_sending():
    with lockin([("FREQ?", "60000.0")]) as li:
        with pytest.raises(SafetyLimitError, match="102000 Hz"):
            li.set_harmonic(2)


def test_sr860_read_asks_two_parameters_and_computes_r_theta():
    with lockin([("SNAP? 0,1", "3e-06,-4e-06")], model=SR860) as li:
        reading = li.read()
    assert (reading.x, reading.y, reading.r) == pytest.approx((3e-6, -4e-6, 5e-6))
    assert reading.theta_deg == pytest.approx(-53.130102, rel=1e-6)

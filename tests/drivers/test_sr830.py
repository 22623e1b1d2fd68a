"""SR830/SR860 driver on recorded exchanges: tables, encodings, parsers, status decoding."""

from __future__ import annotations

import pytest

from stslive.drivers.errors import ControllerError, InstrumentReplyError, LockInOverload, SafetyLimitError
from stslive.drivers.protocols import LockIn
from stslive.drivers.scpi import RecordedSession
from stslive.drivers.sr830 import (
    SR830,
    SR830_SENSITIVITIES,
    SR830_TIME_CONSTANTS,
    SR860,
    SR860_SENSITIVITIES,
    SR860_TIME_CONSTANTS,
    LockInWarning,
    SrsLockIn,
    model_from_identity,
)


def lockin(exchanges: list[tuple[str, str | None]], model=SR830) -> tuple[SrsLockIn, RecordedSession]:
    session = RecordedSession(exchanges)
    return SrsLockIn(session, model), session


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
    li, _ = lockin([])
    assert isinstance(li, LockIn)


def test_sets_send_table_indices_and_verify_with_esr():
    li, session = lockin(
        [
            ("OFLT 5", None),
            ("*ESR?", "0"),
            ("SENS 8", None),
            ("*ESR?", "0"),
            ("FREQ 9.730000e+02", None),
            ("*ESR?", "0"),
            ("SLVL 0.0100", None),
            ("*ESR?", "0"),
        ]
    )
    li.set_time_constant(3e-3)
    li.set_sensitivity(1e-6)
    li.set_frequency(973.0)
    li.set_amplitude(0.01)
    session.assert_done()


def test_sr860_uses_scal_counted_from_one_volt():
    li, session = lockin([("SCAL 18", None), ("*ESR?", "0"), ("SCAL?", "3"), ("OFLT?", "0")], model=SR860)
    li.set_sensitivity(1e-6)
    assert li.get_sensitivity() == 100e-3
    assert li.get_time_constant() == 1e-6
    session.assert_done()


def test_gets_decode_replies():
    li, session = lockin(
        [
            ("*IDN?", "Stanford_Research_Systems,SR830,s/n86001,ver1.07"),
            ("FREQ?", "973.00"),
            ("SLVL?", "0.004"),
            ("OFLT?", "8"),
            ("SENS?", "26"),
            ("SNAP? 1,2,3,4", "1.5e-06,-2.0e-06,2.5e-06,-53.13"),
        ]
    )
    assert li.identity().startswith("Stanford_Research_Systems,SR830")
    assert li.get_frequency() == 973.0
    assert li.get_amplitude() == 0.004
    assert li.get_time_constant() == 0.1
    assert li.get_sensitivity() == 1.0
    reading = li.read()
    assert (reading.x, reading.y, reading.r, reading.theta_deg) == (1.5e-6, -2.0e-6, 2.5e-6, -53.13)
    session.assert_done()


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
    li, session = lockin([])
    with pytest.raises(SafetyLimitError, match="nothing was sent|finite"):
        getattr(li, call)(value)
    session.assert_done()


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
    li, session = lockin([(query, reply)])
    with pytest.raises(InstrumentReplyError):
        getattr(li, getter)()
    session.assert_done()


@pytest.mark.parametrize("reply", ["1e-6,2e-6,3e-6", "1e-6,2e-6,x,4", "OVLD"])
def test_snap_parser_refuses_garbage(reply):
    li, session = lockin([("SNAP? 1,2,3,4", reply)])
    with pytest.raises(InstrumentReplyError):
        li.read()
    session.assert_done()


def test_refused_set_raises_controller_error():
    li, session = lockin([("HARM 2", None), ("*ESR?", "16")])
    with pytest.raises(ControllerError, match="execution error") as info:
        li.set("harmonic", 2)
    assert info.value.code == 16 and info.value.command == "HARM"
    session.assert_done()


def test_status_decodes_overloads_and_check_raises():
    li, session = lockin(
        [
            ("LIAS?;ERRS?;*ESR?", "5;0;0"),
            ("LIAS?;ERRS?;*ESR?", "2;0;0"),
        ]
    )
    status = li.status()
    assert status.input_overload and status.output_overload and not status.reserve_overload
    assert status.overloaded
    with pytest.raises(LockInOverload, match="reserve overload"):
        li.check()
    session.assert_done()


def test_unlock_is_a_warning_and_hardware_errors_are_errors():
    li, session = lockin(
        [
            ("LIAS?;ERRS?;*ESR?", "8;0;0"),
            ("LIAS?;ERRS?;*ESR?", "0;64;32"),
        ]
    )
    with pytest.warns(LockInWarning, match="unlocked"):
        status = li.check()
    assert status.unlocked and not status.overloaded
    with pytest.raises(ControllerError, match="DSP error.*command error"):
        li.check()
    session.assert_done()


def test_sr860_status_register():
    li, session = lockin([("CUROVLDSTAT?;*ESR?", "16;0"), ("CUROVLDSTAT?;*ESR?", "520;0")], model=SR860)
    assert li.status().input_overload
    status = li.status()  # 520 = bit 3 (unlock) + bit 9 (not decoded: reported, not dropped)
    assert status.unlocked and status.errors == ("CUROVLDSTAT bit 9",)
    session.assert_done()


def test_model_from_identity():
    assert model_from_identity("Stanford_Research_Systems,SR860,003,v1.47") is SR860
    with pytest.raises(ControllerError, match="not an SR830/SR860"):
        model_from_identity("LSCI,MODEL372,LSA1,1.4")


def test_recorded_session_reports_unused_exchanges():
    li, session = lockin([("FREQ?", "1000"), ("SLVL?", "1")])
    li.get_frequency()
    with pytest.raises(AssertionError, match="unused"):
        session.assert_done()


def test_status_with_a_missing_answer_is_a_reply_error():
    li, session = lockin([("LIAS?;ERRS?;*ESR?", "0;0")])
    with pytest.raises(InstrumentReplyError, match="expected 3"):
        li.status()
    session.assert_done()

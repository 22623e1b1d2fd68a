"""Fault plans: parsing, when each fault acts, the fired record, thread safety."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stslive.drivers.errors import ConfigError
from stslive.mocks.faults import Fault, FaultKind, FaultPlan


def test_toml_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "faults.toml"
    path.write_text(
        """
[[fault]]
kind = "no_reply"
instrument = "nanonis"
command = "BiasSpectr.Start"
at_call = 2

[[fault]]
kind = "temperature_excursion"
from_spectrum = 3
to_spectrum = 5
params = { kelvin = 1 }
""",
        encoding="utf-8",
    )
    plan = FaultPlan.from_toml(path)
    assert [f.kind for f in plan.faults] == [FaultKind.NO_REPLY, FaultKind.TEMPERATURE_EXCURSION]
    assert plan.faults[1].instrument == "ls372"  # default instrument of the kind
    assert plan.faults[1].params["kelvin"] == 1.0 and isinstance(plan.faults[1].params["kelvin"], float)


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"kind": "nope", "instrument": "nanonis", "at_call": 1}, "'kind'"),
        ({"kind": "delay", "instrument": "nanonis", "at_call": 1}, "'delay_s'"),
        ({"kind": "delay", "instrument": "nanonis", "at_call": 1, "params": {"delay_s": "2"}}, "'delay_s'"),
        ({"kind": "no_reply", "instrument": "nanonis"}, "'at_call'"),
        ({"kind": "no_reply", "instrument": "scope", "at_call": 1}, "'instrument'"),
        ({"kind": "no_reply", "instrument": "nanonis", "at_call": 0}, "at_call"),
        ({"kind": "tip_change", "from_spectrum": 4, "to_spectrum": 4}, "'to_spectrum'"),
        ({"kind": "tip_change"}, "'from_spectrum'"),
        ({"kind": "tip_change", "from_spectrum": 1, "colour": "red"}, r"fault\[0\]: unknown key\(s\) \['colour'\]"),
        (
            {"kind": "tip_change", "from_spectrum": 1, "params": {"facter": 2.0}},
            r"fault tip_change params: unknown key\(s\) \['facter'\]; known keys: \['extra_slope_per_eV', 'factor'\]",
        ),
    ],
)
def test_bad_entries_name_the_key(entry: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        FaultPlan.from_list([entry])


def test_bad_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[fault]]\nkind = "delay"\ninstrument = "sr830"\nat_call = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml.*delay_s"):
        FaultPlan.from_toml(path)
    path.write_text('[[faults]]\nkind = "delay"\n', encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"bad\.toml \(one \[\[fault\]\] table per fault\): unknown key\(s\) \['faults'\]"
    ):
        FaultPlan.from_toml(path)
    path.write_text("[[fault]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        FaultPlan.from_toml(path)
    with pytest.raises(ConfigError, match="not found"):
        FaultPlan.from_toml(tmp_path / "missing.toml")


def test_at_call_acts_once_on_that_call() -> None:
    plan = FaultPlan.from_list([{"kind": "error_reply", "instrument": "sr830", "command": "OUTP", "at_call": 3}])
    got = [plan.on_command("sr830", "OUTP") for _ in range(5)]
    assert [g is not None for g in got] == [False, False, True, False, False]
    assert plan.on_command("sr830", "SLVL") is None
    assert plan.calls("sr830", "OUTP") == 5
    assert [(f.kind, f.spectrum) for f in plan.fired] == [(FaultKind.ERROR_REPLY, 0)]


def test_window_transport_fault_acts_once_per_spectrum_unless_every_call() -> None:
    plan = FaultPlan.from_list(
        [
            {"kind": "no_reply", "instrument": "nanonis", "command": "Bias.Set", "from_spectrum": 1, "to_spectrum": 3},
            {
                "kind": "delay",
                "instrument": "nanonis",
                "command": "Current.Get",
                "from_spectrum": 0,
                "params": {"delay_s": 0.01, "every_call": True},
            },
        ]
    )
    acted = []
    for _spectrum in range(4):
        acted.append(sum(plan.on_command("nanonis", "Bias.Set") is not None for _ in range(3)))
        assert all(plan.on_command("nanonis", "Current.Get") is not None for _ in range(2))
        plan.begin_spectrum()
        plan.end_spectrum()
    assert acted == [0, 1, 1, 0]
    assert plan.fired_spectra(FaultKind.NO_REPLY) == {1, 2}
    assert plan.fired_spectra(FaultKind.DELAY) == {0, 1, 2, 3}


def test_state_faults_hold_over_their_window_and_record_each_spectrum_once() -> None:
    plan = FaultPlan.from_list(
        [{"kind": "tip_change", "from_spectrum": 2, "to_spectrum": 4, "params": {"factor": 0.5}}]
    )
    for s in range(6):
        for _ in range(3):  # queried several times per spectrum
            fault = plan.active("tip_change", spectrum=s)
            assert (fault is not None) == (2 <= s < 4)
    assert plan.fired_spectra(FaultKind.TIP_CHANGE) == {2, 3}
    assert len(plan.fired) == 2 and "factor=0.5" in plan.fired[0].detail
    assert plan.active(FaultKind.FEEDBACK_FAIL, spectrum=2) is None


def test_spectrum_counter_begin_end() -> None:
    plan = FaultPlan()
    assert plan.begin_spectrum() == 0 and plan.spectrum == 0
    assert plan.end_spectrum() == 1
    assert plan.begin_spectrum() == 1


def test_thread_safe_counting() -> None:
    plan = FaultPlan([Fault(FaultKind.NO_REPLY, "nanonis", command="Bias.Get", at_call=2500)])
    hits: list[object] = []

    def worker() -> None:
        for _ in range(1000):
            f = plan.on_command("nanonis", "Bias.Get")
            if f is not None:
                hits.append(f)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert plan.calls("nanonis", "Bias.Get") == 4000
    assert len(hits) == 1

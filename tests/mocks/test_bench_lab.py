"""``stslive bench lab``: the driver round trips against the simulated lab, beside a socket baseline."""

from __future__ import annotations

import argparse
import math

import pytest

from stslive.acquisition.cli import bench_lab as cli
from stslive.acquisition.jobs.bench_lab import Latency, format_rows, run_lab_benchmark
from stslive.drivers.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_rows_start_with_the_baseline_and_time_every_call() -> None:
    rows = run_lab_benchmark(repeats=20, sweeps=3, points=101)
    names = [r.name for r in rows]
    assert names[0] == "plain socket round trip (baseline)"
    assert any("Bias.Get" in n for n in names) and any("BiasSpectr.Start (101 x 3" in n for n in names)
    assert sum(n.startswith("sr830") for n in names) == 4
    for r in rows:
        assert math.isfinite(r.p50_s) and 0 < r.p50_s <= r.p99_s
    start = next(r for r in rows if "BiasSpectr.Start" in r.name)
    model = next(r for r in rows if "film model" in r.name)
    assert start.samples == model.samples == 3  # the server computed every timed sweep once
    assert model.p50_s < start.p50_s  # the film is a share of the whole round trip


def test_one_instrument_only_and_unknown_ones_refused() -> None:
    rows = run_lab_benchmark(instruments=("sr830",), repeats=5)
    assert len(rows) == 5 and not any("nanonis" in r.name for r in rows)
    with pytest.raises(ValueError, match="unknown instrument"):
        run_lab_benchmark(instruments=("sr860",), repeats=5)


def test_table_reads_each_p50_against_the_baseline() -> None:
    table = format_rows([Latency("base", 1e-4, 2e-4, 10), Latency("call", 5e-4, 9e-4, 10)])
    head, base, call = table.splitlines()
    assert "p50 / baseline" in head
    assert base.split()[1:] == ["0.100", "0.200", "1.0", "10"]
    assert call.split()[1:] == ["0.500", "0.900", "5.0", "10"]


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_args("--instruments", "sr830", "--repeats", "5")) == 0
    out = capsys.readouterr().out
    assert "plain socket round trip (baseline)" in out and "sr830 FREQ?" in out
    with pytest.raises(ConfigError, match="--repeats"):
        cli.run(_args("--repeats", "0"))

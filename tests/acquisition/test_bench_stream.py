"""``stslive bench stream`` runs end to end with tiny sizes and prints every figure beside its baseline."""

from __future__ import annotations

import argparse
import math

import pytest

from stslive.acquisition.cli import bench_stream as cli
from stslive.acquisition.jobs.bench_stream import run_benchmark

pytestmark = pytest.mark.timeout(120)


def test_tiny_benchmark_measures_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--events", "200", "--latency-events", "50", "--rate", "2000", "--points", "8"])
    args.formats, args.busy = "msgpack", 0.0
    assert cli.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stream benchmark: events of 3 x 8 float32")
    assert sum("stslive/raw" in line for line in lines) == 2  # PUB/SUB and PUSH/PULL bursts
    assert any("one-way latency" in line and "raw p50" in line for line in lines)


def test_results_pair_every_stslive_case_with_raw_frames() -> None:
    results = run_benchmark(
        events=100, latency_events=0, n_points=4, formats=("json",), busy_s=0.0, out=lambda line: None
    )
    assert [(r.case.sender, r.case.mode) for r in results] == [
        ("raw", "sub"),
        ("stslive", "sub"),
        ("raw", "pull"),
        ("stslive", "pull"),
    ]
    for r in results:
        assert r.received == r.case.n == 100 and r.lost == 0 and r.gaps == 0
        assert r.msg_per_s > 0 and math.isfinite(r.p50_us)

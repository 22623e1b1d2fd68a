"""``stslive bench BENCHMARK [OPTIONS]``: every benchmark behind one command.

Each benchmark is two modules: the work in ``stslive.acquisition.jobs.bench_NAME`` (no argparse)
and its command line in ``stslive.acquisition.cli.bench_NAME`` with ``add_arguments(parser)``
and ``run(args) -> int``. This dispatcher names them in :data:`BENCHMARKS` and imports only the
one asked for, after the rest of the command line is known; ``stslive bench NAME --help`` shows
that benchmark's options.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from stslive.drivers.errors import ConfigError

#: name -> one line of help; the command line of NAME is ``stslive.acquisition.cli.bench_NAME``.
BENCHMARKS: dict[str, str] = {
    "analysis": "batch kernels against a per-spectrum loop on a simulated film (spectra/s, ratio, accuracy)",
    "scan": "per-pixel scan overhead (p50/p99) against the simulated lab",
    "analyser": "live analyser throughput and publish-to-result latency on a replayed stream",
    "campaign": "a campaign of simulated maps analysed single-process vs a Dask LocalCluster",
    "viewer": "frame rate of the control-room screen fed 1,000 results/s",
    "lab": "round trips to the simulated instruments through the real VISA stack",
    "stream": "run stream throughput, latency and loss (PUB/SUB, PUSH/PULL, high-water marks)",
    "convergence": "correlation figures and their 90 % intervals while a map fills, raster vs progressive order",
}


def module_name(name: str) -> str:
    """The command-line module of benchmark ``name``."""
    return f"stslive.acquisition.cli.bench_{name}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stslive bench``: the benchmark's name, then its own options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "benchmarks:\n" + "\n".join(f"  {name:<10} {text}" for name, text in BENCHMARKS.items())
    parser.add_argument("benchmark", choices=list(BENCHMARKS), metavar="BENCHMARK", help="one of the list below")
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="the benchmark's options (stslive bench BENCHMARK --help)"
    )


def load(name: str) -> ModuleType:
    """Import the command-line module of benchmark ``name``.

    Raises
    ------
    ConfigError
        The module is not part of this installation (a dependency missing inside it is raised as
        it is: that is another fix).
    """
    module = module_name(name)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ConfigError(f"benchmark {name!r} is not available in this installation (no module {module})") from None


def run(args: argparse.Namespace) -> int:
    """Parse the benchmark's own options and run it; returns its exit status."""
    module = load(args.benchmark)
    parser = argparse.ArgumentParser(prog=f"stslive bench {args.benchmark}", description=BENCHMARKS[args.benchmark])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.options)) or 0)

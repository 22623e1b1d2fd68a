"""The live analyser's one-line status: what it analysed, what it skipped or rejected, and why.

:func:`status_text` is shown on the screen (the status message) and printed by
``stslive analyser``; it names every count that is not zero, so nothing is skipped silently.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from stslive.live.analyser.runs import RunHandler


def status_line(runs: RunHandler, *, subscriber_stats: Mapping[str, Any], missing_start: Mapping[str, str]) -> str:
    """The status line of the service.

    Parameters
    ----------
    runs
        The analysis side: pixels analysed, the current run (its template width or calibration is
        named), measurements skipped as repeated, pixels the scan reported as failed, and the
        input refused per reason.
    subscriber_stats
        :meth:`RunSubscriber.stats`: its own rejections, open seq gaps and resumed segments.
    missing_start
        Run uid -> why its start document is missing.
    """
    run, scan_failures = runs.run, runs.scan_failures
    all_rejected = collections.Counter(runs.rejected)
    all_rejected.update(subscriber_stats.get("rejected", {}))
    gaps = sum(len(g) for g in subscriber_stats.get("gaps", {}).values())
    text = f"{runs.analysed} pixels analysed"
    if run is not None:
        width = run.provisional_width_eV if run.calibrating else run.options.dynes_width_eV
        if run.calibrating:
            text += (
                "; template width provisional"
                + ("" if width is None else f" ({width * 1e3:.4f} meV)")
                + f", fixed after {run.calibration_count} of {run.options.chunk} spectra"
            )
        elif width is not None:
            text += f"; Dynes width {width * 1e3:.4f} meV"
        unjudged = run.flags.unjudged()
        if unjudged:
            text += "; flags not judged: " + ", ".join(f"{k} ({v['why']})" for k, v in unjudged.items())
        if len(run.flags.tip_events):
            text += f"; {len(run.flags.tip_events)} tip change(s)"
    if runs.duplicates:
        text += f"; {runs.duplicates} repeated measurement(s) skipped"
    segments = subscriber_stats.get("segments", {})
    if run is not None and segments.get(run.run_uid):
        text += f"; run resumed {segments[run.run_uid]} time(s)"
    if scan_failures:
        text += f"; {len(scan_failures)} pixel(s) failed in the scan"
    if all_rejected:
        text += "; rejected " + ", ".join(f"{k} {v}" for k, v in sorted(all_rejected.items()))
    for run_uid, why in missing_start.items():
        text += f"; run {run_uid} {why}"
    if gaps:
        text += f"; {gaps} open seq gap(s)"
    return text

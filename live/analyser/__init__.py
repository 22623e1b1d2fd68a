"""The live analyser service: a run stream in, per-pixel results, flags and correlation snapshots out.

:class:`AnalyserService` (:mod:`.service`) owns the stream subscription and hands batches to the
run handler (:mod:`.runs`), which analyses them through :class:`~stslive.live.run_context.RunContext`
and publishes them (:mod:`.publisher`), writes the analysis file (:mod:`.file`) and schedules the
correlation snapshots (:mod:`.snapshots`); :mod:`.status` words its status line and
:mod:`.settings` holds its tunables.
"""

from stslive.live.analyser.service import AnalyserService
from stslive.live.analyser.settings import AnalyserSettings, analysis_path_for, settle_gc

__all__ = ["AnalyserService", "AnalyserSettings", "settle_gc", "analysis_path_for"]

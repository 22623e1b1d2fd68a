"""The output folder of ``stslive analyse``: written whole or not at all, never mixing two analyses.

Contract: :class:`OutputFolder` refuses a ``--out`` folder that holds an earlier analysis (the
entries its manifest :data:`MANIFEST` lists; without one, :data:`LEGACY_OUTPUTS`) unless
``overwrite`` is given, which clears exactly those entries. Other files there (a run archive, its
logs) are never touched, and an output that would replace one is refused. Everything is written
into a staging folder beside the target (same file system) and moved into place only when the
whole analysis succeeded: an error or Ctrl-C leaves the target as it was (no new ``maps.h5``
beside an old ``report.json``, no old figures beside a new report). The manifest is written last.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from stslive.drivers.errors import ConfigError

__all__ = ["MANIFEST", "LEGACY_OUTPUTS", "OutputFolder"]

#: What an analysis wrote into its folder: ``{"written": [names]}`` (files and per-input folders).
MANIFEST = ".stslive-analyse.json"
#: An earlier analysis's files in a folder without a manifest (written before there was one).
LEGACY_OUTPUTS = ("maps.h5", "report.json", "campaign.csv", "campaign.json", "*.png")


def _written_before(out: Path) -> list[str] | None:
    """The entries an earlier ``stslive analyse`` wrote into ``out`` (None: no readable manifest)."""
    try:
        names = json.loads((out / MANIFEST).read_text())["written"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not all(
        isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in names
    ):
        return None
    return names


class OutputFolder:
    """Stage an analysis beside ``out`` and move it into ``out`` when it succeeded.

    Parameters
    ----------
    out
        The ``--out`` folder (created if missing).
    overwrite
        Clear what an earlier ``stslive analyse`` wrote there.

    Raises
    ------
    ConfigError
        ``out`` is a file, or it holds an earlier analysis and ``overwrite`` is not given.
    """

    def __init__(self, out: Path, *, overwrite: bool) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a file; give a directory (it is created if missing)")
        present = sorted(p.name for p in self.out.iterdir()) if self.out.is_dir() else []
        listed = _written_before(self.out) if present else None
        if listed is None:
            ours = [n for n in present if any(fnmatch.fnmatch(n, pattern) for pattern in LEGACY_OUTPUTS)]
        else:
            ours = [n for n in present if n in listed]
        if ours and not overwrite:
            shown = ", ".join(ours[:4]) + (", ..." if len(ours) > 4 else "")
            raise ConfigError(
                f"--out {self.out} holds an earlier analysis ({shown}); give a new folder, or --overwrite to replace it"
            )
        self._clear = ours
        self._keep = {n for n in present if n not in ours and n != MANIFEST}
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        """Create the staging folder (beside ``out``, so the final moves are renames) and return it."""
        parent = self.out.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=parent))
        return self.stage

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.stage is not None
        try:
            if exc_type is None:
                self._publish(self.stage)
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)

    def _publish(self, stage: Path) -> None:
        names = sorted(p.name for p in stage.iterdir())
        clash = sorted(self._keep & set(names))
        if clash:
            raise ConfigError(
                f"--out {self.out}: the analysis would replace {', '.join(clash)}, which it did not write; "
                "give another folder"
            )
        if not self.out.exists():
            (stage / MANIFEST).write_text(json.dumps({"written": names}) + "\n")
            os.rename(stage, self.out)  # the whole folder appears at once
            return
        manifest = self.out / MANIFEST
        manifest.unlink(missing_ok=True)  # from here until it is back the folder reads as incomplete
        for name in self._clear:
            old = self.out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        for name in names:
            os.replace(stage / name, self.out / name)
        tmp = self.out / (MANIFEST + ".part")
        tmp.write_text(json.dumps({"written": names}) + "\n")
        os.replace(tmp, manifest)

"""Outputs of one run only: a fresh folder (or --overwrite clearing what the command writes), files whole or absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.cli.common import fresh_folder
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs import simulate as simulate_job
from stslive.acquisition.jobs.demo import DemoPaths
from stslive.drivers.errors import ConfigError
from stslive.mocks.film import FilmParams, make_film


def test_a_fresh_folder_is_made_or_must_hold_none_of_the_outputs(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper"
    assert fresh_folder(out, option="--out", overwrite=False, writes=DemoPaths.OUTPUTS) == out and out.is_dir()
    (out / "notes.txt").write_text("mine")
    fresh_folder(out, option="--out", overwrite=False, writes=DemoPaths.OUTPUTS)  # not the command's: no matter
    (out / "report.json").write_text("{}")
    (out / "maps.png").write_bytes(b"old figure")
    (out / "logs").mkdir()
    (out / "logs" / "scan.log").write_text("old")
    with pytest.raises(
        ConfigError, match=r"--out .*holds the outputs of an earlier run \(logs, maps.png, report.json\)"
    ):
        fresh_folder(out, option="--out", overwrite=False, writes=DemoPaths.OUTPUTS)
    fresh_folder(out, option="--out", overwrite=True, writes=DemoPaths.OUTPUTS)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the earlier run's files, and only they, gone


def test_demo_refuses_a_folder_with_an_earlier_demo_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run.h5").write_bytes(b"an earlier run")
    assert main(["demo", "--headless", "--grid", "4x4", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stslive demo: error: --out") and "--overwrite" in err
    assert (tmp_path / "run.h5").read_bytes() == b"an earlier run" and not (tmp_path / "logs").exists()


def test_simulate_writes_the_whole_archive_or_leaves_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "film.h5"
    film = make_film(FilmParams(ny=3, nx=4, seed=1, n_points=101))
    simulate_job.write_film_archive(film, path)
    before = path.read_bytes()

    def interrupted(film: object, partial: Path, rows_per_block: object = None) -> None:
        partial.write_bytes(b"half an archive")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(simulate_job, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        simulate_job.write_film_archive(film, path, overwrite=True)
    assert path.read_bytes() == before  # the earlier archive is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.h5"]  # and no partial file is left
    monkeypatch.undo()
    other = make_film(FilmParams(ny=2, nx=5, seed=2, n_points=101))
    simulate_job.write_film_archive(other, path, overwrite=True)
    with open_archive(path) as reader:
        assert reader.shape == (2, 5)

"""The stablemtl-make-data command line."""

from datasets import load_from_disk

from stablemtl.cli.make_data import main
from stablemtl.data import load_source


def test_cli_writes_a_loadable_test_split(tmp_path, capsys):
    out = tmp_path / "street_test"
    code = main(
        ["--profile", "street", "--n", "2", "--out", str(out), "--split", "test", "--shift", "--size", "16"]
    )
    assert code == 0 and "wrote 2 rows" in capsys.readouterr().out
    assert len(load_from_disk(str(out))) == 2
    ds = load_source(out)
    assert len(ds.tasks) == 7 and ds[1]["image"].shape == (3, 16, 16)
    # Same command again: nothing to do, same rows.
    assert (
        main(
            [
                "--profile",
                "street",
                "--n",
                "2",
                "--out",
                str(out),
                "--split",
                "test",
                "--shift",
                "--size",
                "16",
            ]
        )
        == 0
    )


def test_cli_shows_a_progress_bar_that_resumes_where_the_run_stopped(tmp_path, capsys, monkeypatch):
    from stablemtl.data import generate as gen

    out = tmp_path / "flying"
    argv = ["--profile", "flying", "--n", "3", "--out", str(out), "--size", "16", "--shard-size", "1"]
    real = gen._render_shard

    def interrupted(settings, k, start, stop):
        if k == 2:
            raise KeyboardInterrupt
        return real(settings, k, start, stop)

    monkeypatch.setattr(gen, "_render_shard", interrupted)
    try:
        main(argv)
    except KeyboardInterrupt:
        pass
    err = capsys.readouterr().err
    assert "flying:" in err and "2/3" in err and "3/3" not in err
    monkeypatch.setattr(gen, "_render_shard", real)
    assert main(argv) == 0
    err = capsys.readouterr().err
    # The resumed bar starts at the 2 rows already on disk and ends at 3 of 3.
    assert "2/3" in err and "3/3" in err and "0/3" not in err
    assert load_from_disk(str(out))["index"] == [0, 1, 2]


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["--profile", "garden", "--n", "2", "--out", str(tmp_path / "g")]) == 2
    assert "profile 'garden' is unknown" in capsys.readouterr().err
    assert main(["--profile", "street", "--n", "-1", "--out", str(tmp_path / "g")]) == 2
    assert "n must be a positive number" in capsys.readouterr().err

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


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["--profile", "garden", "--n", "2", "--out", str(tmp_path / "g")]) == 2
    assert "profile 'garden' is unknown" in capsys.readouterr().err
    assert main(["--profile", "street", "--n", "-1", "--out", str(tmp_path / "g")]) == 2
    assert "n must be a positive number" in capsys.readouterr().err

import json

import pytest
import torch
from evaluation_fixtures import ConstantPredictor, OraclePredictor, make_sample

import stablemtl.cli.evaluate as cli


@pytest.fixture()
def fake_io(monkeypatch):
    """Replace model and data loading (other layers) with tiny predictors and samples."""
    samples = [make_sample(i, ("depth", "semantic")) for i in range(3)]
    loaded = {}

    def load_predictor(path, device="auto", dtype="fp32", cache_dir=None, revision=None):
        loaded[path] = device
        return OraclePredictor(samples) if "oracle" in path else ConstantPredictor(tasks=["depth"])

    monkeypatch.setattr(cli, "load_predictor", load_predictor)
    monkeypatch.setattr(cli, "load_samples", lambda paths, limit=None: samples[:limit])
    return loaded


def test_cli_evaluates_merges_and_references(tmp_path, fake_io, capsys):
    assert (
        cli.main(
            ["--model", "runs/stl_depth", "--data", "d", "--out", str(tmp_path / "ref"), "--no_progress"]
        )
        == 0
    )
    ref = str(tmp_path / "ref" / "metrics.json")
    argv = ["--model", "runs/oracle", "--name", "oracle", "--data", "d", "--limit", "2", "--batch_size", "2",
            "--flow_alignment", "none", "--reference", ref, "--out", str(tmp_path / "eval"), "--no_progress",
            "--num_grids", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    data = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    oracle = data["models"][0]
    assert oracle["name"] == "oracle" and oracle["model_path"] == "runs/oracle"
    assert oracle["tasks"]["depth"]["num_images"] == 2
    assert oracle["config"]["flow_alignment"] == "none"
    assert data["reference"]["depth"]["model"] == "stl_depth"
    assert data["delta_m"]["oracle"]["tasks"] == ["depth"]
    assert data["delta_m"]["oracle"]["delta_m"] == pytest.approx(100.0, abs=1e-3)  # abs_rel ~0 vs constant
    assert (tmp_path / "eval" / "figures" / "grid_000_synthetic.png").exists()
    assert "| oracle |" in capsys.readouterr().out
    # Merge both runs into one report without re-running anything.
    merged = tmp_path / "merged"
    assert (
        cli.main(["--merge", ref, "--merge", str(tmp_path / "eval" / "metrics.json"), "--out", str(merged)])
        == 0
    )
    models = json.loads((merged / "metrics.json").read_text())["models"]
    assert [m["name"] for m in models if not m.get("oracle")] == ["stl_depth", "oracle"]
    # Every run carries the encoding row (a perfect model after the task encoding), never a reference.
    assert sum(m["name"].startswith("encoding (perfect model") for m in models) == 2
    assert "encoding" not in str(data["reference"])
    # --compare: the Δm difference of two models of the report, with its paired interval.
    evaluated = str(tmp_path / "eval" / "metrics.json")
    compare = ["--merge", evaluated, "--reference", ref, "--compare", "oracle", "stl_depth"]
    assert cli.main([*compare, "--merge", ref, "--out", str(tmp_path / "compared")]) == 0
    (comparison,) = json.loads((tmp_path / "compared" / "metrics.json").read_text())["comparisons"]
    assert comparison["models"] == ["oracle", "stl_depth"] and comparison["tasks"] == ["depth"]
    assert comparison["difference"] == pytest.approx(100.0, abs=1e-3)
    assert "- oracle − stl_depth: +100.00 Δm points" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --reference"):
        cli.main(["--merge", evaluated, "--compare", "oracle", "oracle", "--out", str(tmp_path / "c2")])
    with pytest.raises(SystemExit, match=r"\['nobody'\]"):
        cli.main(
            [
                "--merge",
                evaluated,
                "--reference",
                ref,
                "--compare",
                "oracle",
                "nobody",
                "--out",
                str(tmp_path),
            ]
        )


def test_cli_argument_errors(tmp_path, fake_io):
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["--model", "a", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["--model", "a/x", "--model", "b/x", "--data", "d", "--out", str(tmp_path)])


def test_load_predictor_rejects_a_folder_without_model_index(tmp_path):
    with pytest.raises(ValueError, match=r"model_index\.json"):
        cli.load_predictor(str(tmp_path))


def test_cli_loads_a_saved_pipeline_and_scores_only_its_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from stablemtl import StableMTLPipeline
    from stablemtl.testing import make_tiny_sd_folder

    base = make_tiny_sd_folder(tmp_path / "sd")
    StableMTLPipeline.from_base(base, tasks=["depth", "optical_flow"]).save_pretrained(tmp_path / "s1")
    samples = [make_sample(i, ("depth", "optical_flow", "normal"), size=(32, 48)) for i in range(3)]
    monkeypatch.setattr(cli, "load_samples", lambda paths, limit=None: samples)
    argv = ["--model", str(tmp_path / "s1"), "--data", "d", "--out", str(tmp_path / "out"), "--no_progress"]
    assert "Not evaluated yet." in (tmp_path / "s1" / "README.md").read_text()
    assert cli.main([*argv, "--num_grids", "1", "--write_model_card"]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())["models"][0]
    assert report["name"] == "s1"
    assert {t: e["num_images"] for t, e in report["tasks"].items()} == {"depth": 3, "optical_flow": 3}
    abs_rel = report["tasks"]["depth"]["metrics"]["abs_rel"]
    assert 0.0 < abs_rel < 10.0
    # --write_model_card: the measured metrics reach the folder's card and its saved training_info.
    card = (tmp_path / "s1" / "README.md").read_text()
    assert f"| depth | abs_rel | {abs_rel:.4g} |" in card and "Not evaluated yet." not in card
    assert "Measured by `stablemtl-eval` on d." in card
    reloaded = StableMTLPipeline.from_pretrained(tmp_path / "s1")
    assert reloaded.config.training_info["metrics"]["depth"]["abs_rel"] == abs_rel
    reloaded.save_pretrained(tmp_path / "s1")  # a later save keeps them
    assert f"| depth | abs_rel | {abs_rel:.4g} |" in (tmp_path / "s1" / "README.md").read_text()
    with pytest.raises(SystemExit, match="local folders only"):
        cli.main(["--model", "someone/s1", "--data", "d", "--out", str(tmp_path / "o"), "--write_model_card"])


def test_load_predictor_takes_hub_ids_from_the_cache_with_dtype_and_device(tmp_path, monkeypatch):
    import shutil

    import torch

    from stablemtl import StableMTLPipeline
    from stablemtl.testing import make_tiny_sd_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableMTLPipeline.from_base(make_tiny_sd_folder(tmp_path / "sd"), tasks=["depth"])
    pipe.save_pretrained(tmp_path / "saved")
    repo, commit = tmp_path / "hub" / "models--someone--s1", "c" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tmp_path / "saved", repo / "snapshots" / commit)

    loaded = cli.load_predictor("someone/s1", dtype="bf16", cache_dir=str(tmp_path / "hub"))
    assert loaded.tasks == ["depth"] and loaded.unet.dtype == torch.bfloat16
    assert loaded.device.type == cli.resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert cli.resolve_device("auto") == expected and cli.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="neither a local model folder nor a loadable Hub id"):
        cli.load_predictor("someone/missing", cache_dir=str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="--dtype"):
        cli.load_predictor("someone/s1", dtype="fp8", cache_dir=str(tmp_path / "hub"))


@pytest.mark.parametrize(
    ("class_name", "message"),
    [
        (["pipeline_stablemtl", "StableMTLPipeline", "extra"], "must name the pipeline class"),
        ("StableDiffusionPipeline", "not a"),
    ],
)
def test_load_predictor_names_a_bad_class_in_model_index(tmp_path, class_name, message):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(ValueError, match=message):
        cli.load_predictor(str(tmp_path))


def test_stablemtl_pipelines_exports_its_classes():
    import stablemtl.pipelines as pipelines
    from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline

    assert pipelines.StableMTLPipeline is StableMTLPipeline
    assert set(pipelines.__all__) == {
        "StableMTLPipeline",
        "StableMTLOutput",
        "StableMTLImageProcessor",
        "StableMTLMultiStreamPipeline",
    }


def test_data_folders_are_read_round_robin_as_the_demo_scores_them(tmp_path):
    from stablemtl.data import make_dataset

    # Two folders of different lengths: row 0 of each, then row 1 of each, then the longer one's rest.
    short = make_dataset("street", 2, tmp_path / "a", size=16, split="test", seed=3)
    long = make_dataset("indoor", 3, tmp_path / "b", size=16, split="test", seed=3)
    samples = cli.load_samples([str(short), str(long)])
    images = [s["image"] for s in samples]
    expected = [_image_of(f, i) for f, i in ((short, 0), (long, 0), (short, 1), (long, 1), (long, 2))]
    assert len(samples) == 5 and len(images) == 5
    assert all(torch.equal(a, b) for a, b in zip(images, expected))
    limited = [s["image"] for s in cli.load_samples([str(short), str(long)], limit=1)]
    assert len(limited) == 2 and torch.equal(limited[1], expected[1])
    # make demo orders its test samples with the same function.
    import stablemtl.cli.demo as demo

    assert demo.interleaved_rows is cli.interleaved_rows


def _image_of(folder, index):
    from stablemtl.data import load_source

    return load_source(folder, augment=False)[index]["image"]

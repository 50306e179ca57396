"""The main job (``make demo``) end to end at toy scale on the embedded base: data, stage 1, stage 2,
LoRA, both baselines, references, evaluation and the report with its pictures."""

import json

from stablemtl.cli.demo import main


def test_demo_runs_end_to_end_and_writes_the_report(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = main(
        [
            "--out",
            str(tmp_path),
            "--train_rows",
            "10",
            "--test_rows",
            "2",
            "--size",
            "32",
            "--max_train_steps",
            "7",
            "--stage2_steps",
            "2",
            "--hitt_steps",
            "1",
            "--prototype_steps",
            "2",
            "--lora_rank",
            "2",
            "--lora_task_rank",
            "2",
        ]
    )
    text = report.read_text()
    assert "StableMTL-S" in text and "constant" in text and "Δm" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    names = {model["name"] for model in metrics["models"]}
    assert {"StableMTL-S", "constant", "single-task depth", "single-task semantic"} <= names
    # LoRA, stage 2 and both baselines, scored by the same evaluator
    assert {"StableMTL-S LoRA", "StableMTL", "HiTT", "task prototype"} <= names
    stage1 = next(m for m in metrics["models"] if m["name"] == "StableMTL-S")
    assert set(stage1["tasks"]) == {
        "albedo",
        "shading",
        "depth",
        "normal",
        "semantic",
        "optical_flow",
        "scene_flow",
    }
    compared = [c["models"] for c in metrics["comparisons"]]
    assert ["StableMTL", "StableMTL-S"] in compared and ["StableMTL-S", "HiTT"] in compared
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert "delta_m.png" in figures and any(name.startswith("grid_") for name in figures)
    # One budget per task: 7 stage-1 steps over 7 tasks give each reference 1 step.
    single = json.loads((tmp_path / "models" / "single_depth" / "model_index.json").read_text())
    assert single["training_info"]["max_train_steps"] == 1
    lora = tmp_path / "models" / "stablemtl_s_lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((lora / "model_index.json").read_text())["training_info"]["max_train_steps"] == 7
    # The runs trained side by side in two worker processes (the default --jobs), each logging to a file.
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert set(demo["phase_seconds"]) == {"render", "training", "evaluation"}
    assert {"StableMTL-S", "StableMTL-S LoRA", "StableMTL", "single-task depth"} <= set(demo["run_seconds"])
    assert demo["args"]["jobs"] == 2
    assert "steps" in (tmp_path / "logs" / "stablemtl_s.log").read_text()  # the run's progress bar

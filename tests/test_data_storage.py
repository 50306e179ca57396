"""make_dataset / load_source: round trips, resumable sharded generation, clear errors on bad data."""

import json

import pytest
import torch
from datasets import Dataset, load_from_disk
from PIL import Image as PILImage

from stablemtl.data import generate as gen
from stablemtl.data import load_source, make_dataset, render_sample
from stablemtl.data.storage import features_for, sample_to_row


def _rows_equal(a, b):
    assert torch.equal(a["image"], b["image"])
    assert a.keys() == b.keys() and a["labels"].keys() == b["labels"].keys()
    for task in a["labels"]:
        assert torch.equal(a["labels"][task], b["labels"][task]) and torch.equal(
            a["valid"][task], b["valid"][task]
        )


def test_round_trip_matches_the_renderer(tmp_path):
    path = make_dataset("street", 3, tmp_path / "street", size=24, split="test", seed=4)
    ds = load_source(path)
    assert len(ds) == 3 and ds.source == "street"
    assert ds.tasks == ["albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow"]
    for i in range(3):
        ref = render_sample("street", seed=4, size=24, split="test", index=i)
        got = ds[i]
        # Images are stored as 8-bit PNG; labels are stored exactly.
        assert (got["image"] - ref["image"]).abs().max() <= 0.5 / 255 + 1e-6
        assert (got["next_image"] - ref["next_image"]).abs().max() <= 0.5 / 255 + 1e-6
        for task in ref["labels"]:
            assert torch.equal(got["labels"][task], ref["labels"][task].to(got["labels"][task].dtype))
            assert torch.equal(got["valid"][task], ref["valid"][task])
        assert got["labels"]["semantic"].dtype == torch.int64
        assert torch.allclose(got["intrinsics"], ref["intrinsics"])
    raw = load_from_disk(str(path))
    assert raw.features["image"].__class__.__name__ == "Image"
    assert raw[0]["tasks"] == ds.tasks and raw["index"] == [0, 1, 2]


def test_label_columns_follow_the_task_label_dtype_and_ids_never_wrap():
    features = features_for(("semantic", "depth"), 4, 4)
    assert features["label_semantic"].dtype == "uint8" and features["label_depth"].dtype == "float32"
    sample = render_sample("street", seed=1, size=16, split="test", index=0)
    sample["labels"]["semantic"] = torch.full((1, 16, 16), 256)
    with pytest.raises(ValueError, match=r"task .semantic. holds ids 256\.\.256, outside the 0\.\.255"):
        sample_to_row(sample, 0, ("semantic",))


def test_train_split_labels_only_its_tasks_and_single_frame(tmp_path):
    ds = load_source(make_dataset("indoor", 2, tmp_path / "indoor", size=16, split="train"))
    s = ds[1]
    assert ds.tasks == ["albedo", "shading", "depth", "normal"]
    assert set(s["labels"]) == {"albedo", "shading", "depth", "normal"} and "next_image" not in s
    assert ds.rows_with_task("depth") == [0, 1] and ds.rows_with_task("semantic") == []


def test_interrupted_run_resumes_without_duplicates(tmp_path, monkeypatch):
    out = tmp_path / "flying"
    real = gen._render_shard
    calls = []

    def flaky(settings, k, start, stop):
        calls.append(k)
        if k == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during shard 2
        return real(settings, k, start, stop)

    monkeypatch.setattr(gen, "_render_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_dataset("flying", 7, out, size=16, shard_size=2, seed=1)
    assert sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith(".")) == [
        "shard-00000",
        "shard-00001",
    ]
    with pytest.raises(ValueError, match="unfinished"):
        load_source(out)
    calls.clear()
    monkeypatch.setattr(gen, "_render_shard", real)
    make_dataset("flying", 7, out, size=16, shard_size=2, seed=1)
    ds = load_source(out)
    assert load_from_disk(str(out))["index"] == list(range(7))
    fresh = load_source(make_dataset("flying", 7, tmp_path / "fresh", size=16, shard_size=3, seed=1))
    for i in range(7):
        _rows_equal(ds[i], fresh[i])
    # A finished folder returns at once; other settings are refused.
    make_dataset("flying", 7, out, size=16, shard_size=2, seed=1)
    with pytest.raises(ValueError, match="other settings"):
        make_dataset("flying", 7, out, size=16, shard_size=2, seed=2)


@pytest.mark.slow
def test_worker_processes_give_the_same_rows(tmp_path):
    a = load_source(make_dataset("indoor", 4, tmp_path / "a", size=16, workers=2, shard_size=2))
    b = load_source(make_dataset("indoor", 4, tmp_path / "b", size=16, workers=0, shard_size=4))
    for i in range(4):
        _rows_equal(a[i], b[i])


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="profile 'kitchen' is unknown"):
        make_dataset("kitchen", 1, tmp_path / "x")
    with pytest.raises(ValueError, match="split 'val'"):
        make_dataset("street", 1, tmp_path / "x", split="val")
    with pytest.raises(ValueError, match="n must be"):
        make_dataset("street", 0, tmp_path / "x")
    ds = load_source(make_dataset("flying", 1, tmp_path / "f", size=16))
    with pytest.raises(ValueError, match="task 'depht' is unknown"):
        load_source(tmp_path / "f", tasks=["depht"])
    with pytest.raises(ValueError, match="does not label tasks \\['depth'\\]"):
        load_source(tmp_path / "f", tasks=["depth"])
    assert load_source(tmp_path / "f", tasks=["scene_flow"]).tasks == ["scene_flow"]
    assert set(ds[0]["labels"]) == {"optical_flow", "scene_flow"}


def test_missing_or_corrupt_files_raise_naming_the_path(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"state\.json is missing"):
        load_source(tmp_path / "empty")
    path = make_dataset("flying", 2, tmp_path / "f", size=16)
    arrow = next(path.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])  # truncated file
    with pytest.raises(ValueError, match=str(path.name)):
        load_source(path)[0]
    state = json.loads((path / "state.json").read_text())
    assert state["_data_files"]


def _table(rows, tasks, size, path):
    Dataset.from_list(rows, features=features_for(tasks, size, size)).save_to_disk(str(path))
    return path


def test_corrupt_rows_raise_naming_the_row(tmp_path):
    tasks = ("depth", "normal")
    s = render_sample("indoor", seed=0, size=16, split="train")
    good = sample_to_row(s, 0, tasks)
    bad_image = {**sample_to_row(s, 1, tasks), "image": {"bytes": b"not a png", "path": None}}
    missing = {**sample_to_row(s, 2, tasks), "label_normal": None}
    ds = load_source(_table([good, bad_image, missing], tasks, 16, tmp_path / "t"))
    assert ds[0]["labels"]["depth"].shape == (1, 16, 16)
    with pytest.raises(ValueError, match=r"row 1 of .* cannot be read"):
        ds[1]
    with pytest.raises(ValueError, match=r"row 2 .* task 'normal' is listed but its label"):
        ds[2]
    unlisted = {**sample_to_row(s, 3, tasks), "tasks": ["depth", "semantic"]}
    with pytest.raises(ValueError, match=r"row 0 .*'semantic' is listed but its label or valid"):
        load_source(_table([unlisted], tasks, 16, tmp_path / "t2"))[0]
    resized = {**sample_to_row(s, 4, tasks), "image": PILImage.new("RGB", (20, 20))}
    with pytest.raises(ValueError, match=r"row 0 .*do not match a \(1, 20, 20\) label"):
        load_source(_table([resized], tasks, 16, tmp_path / "t3"))[0]


def test_concurrent_runs_on_one_folder_neither_duplicate_nor_lose_rows(tmp_path):
    import threading

    from filelock import FileLock

    out, errors = tmp_path / "street", []

    def run():
        try:
            make_dataset("street", 4, out, size=16, shard_size=1, seed=2)
        except BaseException as err:  # re-raised below in the test thread
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert load_from_disk(str(out))["index"] == [0, 1, 2, 3] and not (out / "shards").exists()
    ds = load_source(out)
    for i in range(4):  # each row is the renderer's row i, exactly once
        ref = render_sample("street", seed=2, size=16, split="train", index=i)
        for task, label in ds[i]["labels"].items():
            assert torch.equal(label, ref["labels"][task].to(label.dtype)), (i, task)
    # While a run holds the folder, another one waits instead of writing beside it.
    held = FileLock(str(out.parent / "held" / gen.LOCK))
    (out.parent / "held").mkdir()
    held.acquire()
    done = threading.Event()
    waiter = threading.Thread(
        target=lambda: (make_dataset("flying", 1, out.parent / "held", size=16), done.set())
    )
    waiter.start()
    assert not done.wait(0.5) and not (out.parent / "held" / gen.MANIFEST).exists()
    held.release()
    waiter.join(60)
    assert done.is_set() and len(load_from_disk(str(out.parent / "held"))) == 1


def test_in_process_rendering_keeps_the_callers_torch_threads(tmp_path):
    before = torch.get_num_threads()
    make_dataset("flying", 1, tmp_path / "f", size=16)
    assert torch.get_num_threads() == before


def test_a_damaged_shard_is_named_and_rendered_again_once_deleted(tmp_path, monkeypatch):
    import shutil

    out, real = tmp_path / "flying", gen._render_shard

    def stop_at_shard_2(settings, k, start, stop):
        if k == 2:
            raise KeyboardInterrupt
        return real(settings, k, start, stop)

    monkeypatch.setattr(gen, "_render_shard", stop_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        make_dataset("flying", 3, out, size=16, shard_size=1)
    monkeypatch.setattr(gen, "_render_shard", real)
    arrow = next((out / "shards" / "shard-00001").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:64])
    with pytest.raises(ValueError, match=r"shard .*shard-00001 is damaged.*delete that folder"):
        make_dataset("flying", 3, out, size=16, shard_size=1)
    shutil.rmtree(out / "shards" / "shard-00001")
    make_dataset("flying", 3, out, size=16, shard_size=1)
    assert load_from_disk(str(out))["index"] == [0, 1, 2]

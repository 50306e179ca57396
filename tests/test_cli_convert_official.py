"""Official checkpoint conversion: key mapping on state dicts with the official names, end to end CLI."""

import copy

import pytest
import torch
from multistream_fixtures import TASKS, randomize, samples, task_tokens, tiny_unet

from stablemtl.cli.convert_official import convert, main, split_task_attention
from stablemtl.models.attention_processors import self_attention_layers
from stablemtl.models.multistream import MultiStreamUNet
from stablemtl.models.task_attention import TaskAttention
from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline
from stablemtl.testing import make_tiny_sd_folder


def official_stage2(unet, task_attention, prefix="") -> dict[str, torch.Tensor]:
    """The official stage-2 layout: task modules as children of each block's attn1 (official key names)."""
    names = [name for name, _, _ in self_attention_layers(unet)]
    state = {prefix + k: v.clone() for k, v in unet.state_dict().items()}
    for key, value in task_attention.state_dict().items():
        _, layer, rest = key.split(".", 2)
        state[f"{prefix}{names[int(layer)]}.{rest}"] = value.clone()
    return state


@pytest.fixture(scope="module")
def official():
    stage1 = tiny_unet(seed=3)
    randomize(stage1, seed=4, scale=0.05)
    main_unet = copy.deepcopy(stage1)
    with torch.no_grad():
        for p in main_unet.parameters():
            p.add_(0.01)
    task_attention = TaskAttention.from_unet(main_unet, TASKS, query_hidden_dim=24)
    randomize(task_attention, seed=5, scale=0.2)
    return stage1, main_unet, task_attention


def test_official_key_names_are_the_spec_names(official):
    _, main_unet, task_attention = official
    state = official_stage2(main_unet, task_attention)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.task_to_q.depth.net.6.weight" in state
    assert "up_blocks.3.attentions.2.transformer_blocks.0.attn1.task_to_k.normal.fc1.bias" in state
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.to_out_task.weight" in state
    unet_part, task_part = split_task_attention(state, main_unet)
    assert set(unet_part) == set(main_unet.state_dict())
    assert "task_layers.6.to_out_task.weight" in task_part  # the mid block is block 6 in forward order


def test_convert_restores_every_weight_and_the_model(official):
    stage1, main_unet, task_attention = official
    config = dict(stage1.config)
    state1, state2 = stage1.state_dict(), official_stage2(main_unet, task_attention)
    aux, unet, converted = convert(config, state1, state2, tasks=list(TASKS))
    for a, b in ((aux, stage1), (unet, main_unet), (converted, task_attention)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert converted.config.query_hidden_dim == 24 and converted.config.query_hidden_layers == 2
    tokens, inputs = task_tokens(), samples()
    with torch.no_grad():
        got = MultiStreamUNet(unet, aux, converted)(inputs, ["depth", "semantic"], tokens).main
        want = MultiStreamUNet(copy.deepcopy(main_unet), copy.deepcopy(stage1), task_attention)(
            inputs, ["depth", "semantic"], tokens
        ).main
    for task in got:
        assert torch.equal(got[task], want[task])


def test_decoder_only_keeps_decoder_blocks_and_bad_files_raise(official):
    stage1, main_unet, task_attention = official
    state2 = official_stage2(main_unet, task_attention)
    _, _, dec = convert(dict(stage1.config), stage1.state_dict(), state2, layers="dec")
    assert dec.active_layers == list(range(7, 16))
    with pytest.raises(ValueError, match="differ"):
        convert(dict(stage1.config), stage1.state_dict(), state2, tasks=["depth", "normal"])
    broken = dict(state2)
    broken.pop("conv_out.bias")
    with pytest.raises(ValueError, match="missing"):
        convert(dict(stage1.config), stage1.state_dict(), broken)


def test_cli_writes_a_loadable_stage1_pipeline_and_stage2_components(tmp_path, official):
    stage1, main_unet, task_attention = official
    base = make_tiny_sd_folder(tmp_path / "base")
    torch.save(stage1.state_dict(), tmp_path / "single_stream_unet.pth")
    torch.save(
        official_stage2(main_unet, task_attention, "module."), tmp_path / "diffusion_pytorch_model.bin"
    )
    code = main(
        [
            "--base", str(base),
            "--stage1", str(tmp_path / "single_stream_unet.pth"),
            "--stage2", str(tmp_path / "diffusion_pytorch_model.bin"),
            "--tasks", *TASKS,
            "--output_dir", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert code == 0
    pipe = StableMTLPipeline.from_pretrained(tmp_path / "out" / "stage1")
    assert pipe.tasks == list(TASKS)
    for (_, a), (_, b) in zip(pipe.unet.state_dict().items(), stage1.state_dict().items()):
        assert torch.equal(a, b)
    loaded = TaskAttention.from_pretrained(tmp_path / "out" / "stage2" / "task_attention")
    assert torch.equal(
        loaded.task_layers["3"].task_to_v["semantic"].fc1.weight,
        task_attention.task_layers["3"].task_to_v["semantic"].fc1.weight,
    )
    assert not list((tmp_path / "out").rglob("*.bin"))
    bad = main(
        ["--base", str(base), "--stage1", str(tmp_path / "nothing.pth"), "--output_dir", str(tmp_path / "x")]
    )
    assert bad == 2

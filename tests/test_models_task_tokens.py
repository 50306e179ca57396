"""Task embeddings: unpadded encodings, persistence, and masked batching equal to per-task calls."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from stablemtl.models.task_tokens import TASK_EMBEDDINGS_NAME, TaskEmbeddings, encode_prompt
from stablemtl.testing import tiny_sd_components

PROMPTS = {"depth": "depth", "optical_flow": "optical flow", "semantic": "semantic"}


@pytest.fixture(scope="module")
def components():
    return tiny_sd_components(seed=0)


@pytest.fixture(scope="module")
def embeddings(components):
    return TaskEmbeddings.compute(components["text_encoder"], components["tokenizer"], PROMPTS)


def test_embeddings_are_unpadded_last_hidden_states(components, embeddings):
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    ids = tokenizer("optical flow", padding="do_not_pad").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 4
    assert embeddings["optical_flow"].shape == (4, text_encoder.config.hidden_size)
    assert embeddings["depth"].shape[0] == 3
    with torch.no_grad():
        expected = text_encoder(torch.tensor([ids])).last_hidden_state[0]
    torch.testing.assert_close(embeddings["optical_flow"], expected)
    # Unpadded differs from the 77-token padded encoding (the causal mask makes the prefix equal, but the
    # sequence is shorter): exactly the prefix of the padded one.
    padded = tokenizer("optical flow", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        long = text_encoder(padded).last_hidden_state[0]
    assert long.shape[0] == 77
    torch.testing.assert_close(long[:4], embeddings["optical_flow"], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_keeps_order_prompts_and_values(tmp_path, embeddings):
    path = embeddings.save(tmp_path)
    assert path == tmp_path / TASK_EMBEDDINGS_NAME
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    loaded = TaskEmbeddings.load(tmp_path)
    assert loaded.names == ["depth", "optical_flow", "semantic"]
    assert loaded.prompts == PROMPTS
    for name in PROMPTS:
        assert torch.equal(loaded[name], embeddings[name])
    assert TaskEmbeddings.load(path).names == loaded.names


def test_batch_pads_and_masks_only_when_lengths_differ(embeddings):
    stacked, mask = embeddings.batch(["depth", "semantic"])
    assert stacked.shape == (2, 3, embeddings.dim) and mask is None
    stacked, mask = embeddings.batch(["depth", "optical_flow"], dtype=torch.float64)
    assert stacked.shape == (2, 4, embeddings.dim) and stacked.dtype == torch.float64
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.all(stacked[0, 3] == 0)


def test_padded_batched_unet_call_equals_per_task_calls(components, embeddings):
    unet: UNet2DConditionModel = components["unet"]
    names = ["depth", "optical_flow", "semantic"]
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).repeat(3, 1, 1, 1)
    stacked, mask = embeddings.batch(names)
    assert mask is not None
    with torch.no_grad():
        batched = unet(sample, 999, stacked, encoder_attention_mask=mask).sample
        single = torch.cat([unet(sample[:1], 999, embeddings[n][None]).sample for n in names])
        unmasked = unet(sample, 999, stacked).sample
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    # Without the mask the zero padding leaks into the cross-attention of the shorter prompts.
    assert (unmasked[0] - single[0]).abs().max() > 1e-4


def test_add_and_errors(components, embeddings):
    extended = TaskEmbeddings({n: embeddings[n] for n in embeddings.names}, embeddings.prompts)
    extended.add(components["text_encoder"], components["tokenizer"], {"albedo": "albedo"})
    assert extended.names[-1] == "albedo" and "albedo" not in embeddings
    expected = encode_prompt(components["text_encoder"], components["tokenizer"], "albedo")
    assert torch.equal(extended["albedo"], expected)
    with pytest.raises(ValueError, match="knows: depth, optical_flow, semantic"):
        embeddings["albedo"]
    with pytest.raises(ValueError, match="width"):
        TaskEmbeddings({"a": torch.zeros(3, 8), "b": torch.zeros(3, 16)})
    with pytest.raises(ValueError, match=r"\(L, D\)"):
        TaskEmbeddings({"a": torch.zeros(8)})

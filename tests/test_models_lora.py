"""Task-adaptive LoRA on a tiny SD UNet: exact start, mixed-task batches, routing, weights, pipeline I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

from stablemtl.models.lora import TaskLoRA, TaskLoRASettings
from stablemtl.pipelines import StableMTLPipeline
from stablemtl.testing import make_tiny_sd_folder, tiny_unet_config

TASKS = ["depth", "normal", "semantic"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def _inputs(batch: int, unet: UNet2DConditionModel, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, unet.config.in_channels, 16, 16, generator=g)
    hidden = torch.randn(batch, 3, unet.config.cross_attention_dim, generator=g)
    return x, torch.full((batch,), 999), hidden


def _perturb(lora: TaskLoRA, seed: int = 1) -> None:
    """Move every adapter weight and gate away from its initialisation (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.adapter_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_step_zero_is_exactly_the_base_model_and_only_adapters_train():
    unet = _unet()
    x, t, h = _inputs(3, unet)
    with torch.no_grad():
        before = unet(x, t, h).sample
    lora = TaskLoRA.install(unet, TaskLoRASettings(rank=4, task_rank=2, tasks=TASKS))
    with torch.no_grad():
        lora.set_routing(["depth", "normal", "semantic"])
        adapted = unet(x, t, h).sample
        unet.disable_adapters()
        base = unet(x, t, h).sample
        unet.enable_adapters()
    # Bit-exact against the same UNet without adapters (a fresh run only differs by float reassociation).
    assert torch.equal(adapted, base)
    assert torch.allclose(adapted, before, atol=1e-5)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "ta_lora_gates" in n for n in trainable)
    assert {p.data_ptr() for p in lora.adapter_parameters()} == {
        p.data_ptr() for p in unet.parameters() if p.requires_grad
    }
    # Task adapters sit on the decoder only; the shared one on every attention projection.
    assert all(name.startswith("up_blocks.") for names in lora.gates.layers.values() for name in names)
    shared = [n for n, _ in unet.named_modules() if n.endswith(".to_q") and "up_blocks" not in n]
    assert shared and all("shared" in unet.get_submodule(n).lora_A for n in shared)
    assert all(g.abs().sum() == 0 for g in lora.gates.gates.values())


def test_a_zero_gate_passes_gradient_to_itself_but_not_yet_to_its_adapter():
    unet = _unet().train()
    lora = TaskLoRA.install(unet, TaskLoRASettings(rank=2, task_rank=2, tasks=["depth"], task_layers="all"))
    x, t, h = _inputs(2, unet)
    unet(x, t, h).sample.square().mean().backward()
    assert lora.gates.gates["depth"].grad.abs().sum() > 0
    name = lora.gates.layers["depth"][0]
    assert unet.get_submodule(name).lora_B["task_depth"].weight.grad.abs().sum() == 0
    assert unet.get_submodule(name).lora_A["shared"].weight.grad.abs().sum() == 0  # B = 0: no A grad
    assert unet.get_submodule(name).lora_B["shared"].weight.grad.abs().sum() > 0


def test_a_mixed_task_batch_equals_each_task_run_alone():
    unet = _unet()
    lora = TaskLoRA.install(unet, TaskLoRASettings(rank=4, task_rank=2, tasks=TASKS))
    _perturb(lora)
    per_sample = ["normal", "depth", "semantic", "depth", "normal"]
    x, t, h = _inputs(len(per_sample), unet)
    with torch.no_grad():
        lora.set_routing(per_sample)
        mixed = unet(x, t, h).sample
        alone = {}
        for task in TASKS:
            lora.set_routing(task)
            alone[task] = unet(x, t, h).sample
    expected = torch.stack([alone[task][i] for i, task in enumerate(per_sample)])
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=0)
    # The task adapters matter: depth and normal predictions of the same input differ.
    assert (alone["depth"] - alone["normal"]).abs().max() > 1e-3


def test_absent_tasks_get_no_gradient_and_bad_routing_is_refused():
    unet = _unet().train()
    lora = TaskLoRA.install(unet, TaskLoRASettings(rank=2, task_rank=2, tasks=TASKS))
    _perturb(lora)
    x, t, h = _inputs(2, unet)
    lora.set_routing("depth")
    unet(x, t, h).sample.mean().backward()
    assert lora.gates.gates["depth"].grad is not None
    assert lora.gates.gates["normal"].grad is None
    with pytest.raises(ValueError, match="tasks"):
        lora.set_routing(["albedo"])
    lora.set_routing(["depth", "normal", "normal"])
    with pytest.raises(ValueError, match="3 samples"), torch.no_grad():
        unet(x, t, h)


def test_weights_round_trip_and_settings_are_checked():
    unet = _unet()
    settings = TaskLoRASettings(rank=3, task_rank=2, tasks=TASKS, task_layers="all", targets=["to_q", "to_v"])
    lora = TaskLoRA.install(unet, settings)
    _perturb(lora)
    state = lora.state_dict()
    other = TaskLoRA.install(_unet(), TaskLoRASettings.from_dict(settings.to_dict()))
    other.load_state_dict(state)
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if "gates" not in k})
    for bad, match in (
        ({"rank": 0}, "rank"),
        ({"task_layers": "enc"}, "task_layers"),
        ({"targets": []}, "targets"),
        ({"tasks": ["depth", "depth"]}, "tasks"),
    ):
        with pytest.raises(ValueError, match=match):
            TaskLoRASettings.from_dict({**settings.to_dict(), **bad})
    with pytest.raises(ValueError, match="match no layer"):
        TaskLoRA.install(_unet(), TaskLoRASettings(rank=2, task_rank=2, tasks=TASKS, targets=["nope"]))
    with pytest.raises(ValueError, match="already carries"):
        TaskLoRA.install(unet, settings)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = make_tiny_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)
    pipe = StableMTLPipeline.from_base(folder, tasks=TASKS)
    saved = tmp_path_factory.mktemp("base") / "stablemtl-base"
    pipe.save_pretrained(saved)
    return saved


def _pipe(folder) -> StableMTLPipeline:
    pipe = StableMTLPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_pipeline_batched_tasks_save_load_fuse_and_unload(base, tmp_path):
    pipe = _pipe(base)
    plain = pipe(_image(), tasks=TASKS, output_type="pt").predictions
    lora = pipe.install_task_lora(TaskLoRASettings(rank=4, task_rank=2, tasks=TASKS))
    _perturb(lora)
    batched = pipe(_image(), tasks=TASKS, output_type="pt").predictions  # one UNet call, 3 tasks
    alone = {t: pipe(_image(), tasks=[t], output_type="pt")[t] for t in TASKS}
    # The one batched UNet call equals per-task calls to 1e-5 in latent space ...
    first = pipe.latent_step.encode(_image() * 2 - 1)
    condition, mask = pipe.task_embeddings.batch(TASKS)
    pairs = torch.zeros(len(TASKS), dtype=torch.bool)
    together = pipe.predict_latents(first, first, condition, mask, pairs, tasks=TASKS).unflatten(0, (2, 3))
    for index, task in enumerate(TASKS):
        c, m = pipe.task_embeddings.batch([task])
        own = pipe.predict_latents(first, first, c, m, pairs[:1], tasks=[task])
        torch.testing.assert_close(together[:, index], own, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="tasks="):
        pipe.predict_latents(first, first, condition, mask, pairs)
    # ... and after the VAE decode (batch-size dependent rounding) the predictions agree closely.
    for task in ("depth", "normal"):
        torch.testing.assert_close(batched[task], alone[task], atol=1e-3, rtol=0)
        assert (batched[task] - plain[task]).abs().max() > 1e-4  # the adapters changed the model
    path = pipe.save_lora_weights(tmp_path / "adapters", repo_id="someone/tiny-lora")
    assert {p.name for p in path.parent.iterdir()} == {"pytorch_lora_weights.safetensors", "README.md"}
    assert path.stat().st_size < 0.25 * sum(p.numel() * 4 for p in pipe.unet.parameters())
    with safe_open(str(path), framework="pt") as handle:
        assert "stablemtl_ta_lora" in handle.metadata()
    card = (path.parent / "README.md").read_text()
    assert str(base) in card and "someone/tiny-lora" in card

    loaded = _pipe(base)
    loaded.load_lora_weights(tmp_path / "adapters")
    again = loaded(_image(), tasks=TASKS, output_type="pt").predictions
    # Same weights bit for bit; two pipelines' CPU convolutions may round differently (buffer alignment),
    # which the normals' normalisation magnifies to ~5e-5.
    reloaded = loaded.task_lora.state_dict()
    assert all(torch.equal(v, reloaded[k]) for k, v in pipe.task_lora.state_dict().items())
    for task in ("depth", "normal"):
        torch.testing.assert_close(again[task], batched[task], atol=2e-4, rtol=0)
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    with pytest.raises(ValueError, match="already loaded"):
        loaded.load_lora_weights(tmp_path / "adapters")

    loaded.fuse_lora(task="depth")
    fused = loaded(_image(), tasks=["depth"], output_type="pt")["depth"]
    torch.testing.assert_close(fused, alone["depth"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="fused"):
        loaded(_image(), tasks=["normal"], output_type="pt")
    loaded.unload_lora_weights()  # fused weights stay, the adapters go
    assert not hasattr(loaded.unet, "ta_lora_gates") and loaded.task_lora is None
    torch.testing.assert_close(
        loaded(_image(), tasks=["depth"], output_type="pt")["depth"], fused, atol=1e-5, rtol=0
    )

    restored = _pipe(base)
    restored.load_lora_weights(tmp_path / "adapters")
    restored.unload_lora_weights()
    torch.testing.assert_close(
        restored(_image(), tasks=["depth"], output_type="pt")["depth"], plain["depth"], atol=1e-5, rtol=0
    )


def test_push_lora_to_hub_uploads_only_adapters_and_card(base, monkeypatch):
    pipe = _pipe(base)
    pipe.install_task_lora(TaskLoRASettings(rank=2, task_rank=2, tasks=["depth"]))
    uploaded = {}

    def fake_push(folder, repo_id, **kwargs):
        uploaded.update({p.name: p.stat().st_size for p in Path(folder).iterdir()}, repo=repo_id)
        return "url"

    monkeypatch.setattr("stablemtl.pipelines.lora_loading.push_folder_to_hub", fake_push)
    assert pipe.push_lora_to_hub("someone/adapters") == "url"
    assert set(uploaded) == {"pytorch_lora_weights.safetensors", "README.md", "repo"}


def test_gradient_checkpointing_recomputes_with_the_same_routing():
    grads = []
    for checkpointing in (False, True):
        unet = _unet().train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        lora = TaskLoRA.install(unet, TaskLoRASettings(rank=2, task_rank=2, tasks=TASKS))
        _perturb(lora)
        x, t, h = _inputs(3, unet)
        lora.set_routing(["depth", "normal", "depth"])
        loss = unet(x, t, h).sample.square().mean()
        loss.backward()  # the recomputation happens here, after the forward returned
        grads.append([p.grad.clone() for p in lora.adapter_parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-4)

"""Multi-stream model: zero-init equivalence, training signal, batched schedule = per-task loop, gradient
checkpointing, processor re-installation, N from the model, capture points."""

import copy

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from multistream_fixtures import TASKS, build, randomize, samples, task_tokens

from stablemtl.models.attention_processors import CAPTURE_POINTS, FeatureCapture, self_attention_layers
from stablemtl.models.multistream import MultiStreamUNet
from stablemtl.models.task_masking import TaskMasking


def single_stream(unet, inputs, tasks, tokens) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = MultiStreamUNet._unet_call(unet, inputs, tasks, tokens, 999)
    return dict(zip(tasks, out.split(next(iter(inputs.values())).shape[0])))


@pytest.mark.parametrize("fusion", ["attention", "sum"])
def test_untrained_multistream_equals_single_stream_exactly(fusion):
    model, single = build(fusion=fusion)
    tokens, inputs = task_tokens(), samples()
    tasks = ["semantic", "depth", "optical_flow"]
    with torch.no_grad():
        out = model(inputs, tasks, tokens)
    expected = single_stream(single, inputs, tasks, tokens)
    for task in tasks:
        assert torch.equal(out.main[task], expected[task]), task
    # The auxiliary outputs are the stage-1 model's predictions of the auxiliary tasks (same weights).
    assert set(out.aux) == set(TASKS)
    for task in tasks:
        torch.testing.assert_close(out.aux[task], expected[task], atol=1e-5, rtol=1e-5)


def test_untrained_equals_single_stream_with_masking_in_training_mode():
    model, single = build()
    model.train()
    tokens, inputs = task_tokens(), samples()
    masking = TaskMasking(ratio=1.0, mode="attn_prob", generator=torch.Generator().manual_seed(0))
    out = model(inputs, ["normal", "depth"], tokens, masking=masking)
    expected = single_stream(single, inputs, ["normal", "depth"], tokens)
    torch.testing.assert_close(out.main["normal"], expected["normal"], atol=1e-6, rtol=1e-6)
    assert model.state.decisions, "masking with ratio 1 should have drawn decisions"


def test_a_gradient_step_on_task_attention_changes_the_output():
    model, single = build()
    tokens, inputs = task_tokens(), samples()
    tasks = ["depth", "normal"]
    optimizer = torch.optim.Adam(model.task_attention.parameters(), lr=1e-2)
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    loss = torch.nn.functional.mse_loss(model(inputs, tasks, tokens).main["depth"], target)
    loss.backward()
    grads = {n: p.grad for n, p in model.task_attention.named_parameters() if p.grad is not None}
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "to_out_task" in n)
    assert all(p.grad is None for p in model.aux_unet.parameters())
    optimizer.step()
    with torch.no_grad():
        after = model(inputs, tasks, tokens).main
    expected = single_stream(single, inputs, tasks, tokens)
    for task in tasks:
        assert (after[task] - expected[task]).abs().max() > 1e-4, task


def per_task_loop(model: MultiStreamUNet, inputs, tasks, tokens) -> dict[str, torch.Tensor]:
    """The straightforward schedule: per image and main task, one auxiliary call per auxiliary task, then
    one main call (the official call pattern, without its re-encoding)."""
    results = {t: [] for t in tasks}
    count = next(iter(inputs.values())).shape[0]
    model.install_processors()
    for b in range(count):
        one = {t: x[b : b + 1] for t, x in inputs.items()}
        for main in tasks:
            aux = [t for t in model.aux_task_set if not (model.exclude_main_task and t == main)]
            per_layer: dict[int, list[torch.Tensor]] = {}
            for task in aux:
                model.capture.reset()
                with torch.no_grad():
                    MultiStreamUNet._unet_call(model.aux_unet, one, [task], tokens, 999)
                for layer, feature in model.capture.features().items():
                    per_layer.setdefault(layer, []).append(feature)
            features = {layer: torch.stack(v) for layer, v in per_layer.items()}  # [A,1,N,C]
            visible = torch.ones(1, len(aux), dtype=torch.bool)
            model.state.set(features, aux, [main], torch.zeros(1, dtype=torch.long), visible)
            with torch.no_grad():
                results[main].append(MultiStreamUNet._unet_call(model.unet, one, [main], tokens, 999))
    return {t: torch.cat(v) for t, v in results.items()}


@pytest.mark.parametrize(
    ("exclude", "layers", "fusion"),
    [
        (True, "all", "attention"),
        (False, "all", "attention"),
        (True, "dec", "attention"),
        (True, "all", "sum"),
    ],
)
def test_batched_schedule_equals_per_task_loop(exclude, layers, fusion):
    model, _ = build(exclude_main_task=exclude, layers=layers, fusion=fusion)
    randomize(model.task_attention)
    tokens, inputs = task_tokens(), samples(batch=2)
    tasks = ["optical_flow", "depth", "normal"]
    with torch.no_grad():
        batched = model(inputs, tasks, tokens).main
    assert sorted(model.state.aux_features) == model.task_attention.active_layers  # only what is read
    looped = per_task_loop(model, inputs, tasks, tokens)
    for task in tasks:
        torch.testing.assert_close(batched[task], looped[task], atol=1e-5, rtol=1e-5)
    single = single_stream(model.aux_unet, inputs, tasks, tokens)
    assert (batched["depth"] - single["depth"]).abs().max() > 1e-3  # the task attention does act


def test_exclude_main_task_changes_what_a_row_sees():
    model, _ = build(exclude_main_task=True)
    randomize(model.task_attention)
    other = MultiStreamUNet(model.unet, model.aux_unet, model.task_attention, exclude_main_task=False)
    tokens, inputs = task_tokens(), samples()
    with torch.no_grad():
        a = model(inputs, ["depth"], tokens)
        b = other(inputs, ["depth"], tokens)
    assert list(a.aux) == ["normal", "semantic", "optical_flow"]
    assert list(b.aux) == list(TASKS)
    assert (a.main["depth"] - b.main["depth"]).abs().max() > 1e-4


@pytest.mark.parametrize("tasks", [("depth", "normal"), ("depth", "normal", "semantic", "albedo", "shading")])
def test_two_unet_calls_whatever_the_number_of_tasks(tasks):
    model, _ = build(tasks=tasks)
    tokens, inputs = task_tokens(tasks), samples(tasks, batch=3)
    rows = {"aux": [], "main": []}
    hooks = [
        model.aux_unet.register_forward_pre_hook(lambda m, a: rows["aux"].append(a[0].shape[0])),
        model.unet.register_forward_pre_hook(lambda m, a: rows["main"].append(a[0].shape[0])),
    ]
    with torch.no_grad():
        out = model(inputs, list(tasks), tokens)
    for h in hooks:
        h.remove()
    n = len(tasks)
    assert rows == {"aux": [3 * n], "main": [3 * n]}
    assert sorted(out.main) == sorted(tasks)
    # The first layer's auxiliary features hold A = N tasks (the union over the main tasks) for 3 images.
    assert model.state.aux_features[0].shape[:2] == (n, 3)


def test_aux_task_set_option_and_input_errors():
    model, _ = build(aux_tasks=["semantic", "normal"])
    tokens, inputs = task_tokens(), samples()
    del inputs["optical_flow"]  # neither requested nor an auxiliary task: no input needed
    with torch.no_grad():
        out = model(inputs, ["depth"], tokens)
        assert list(out.aux) == ["normal", "semantic"]  # the model's task order
        assert list(model(inputs, ["normal"], tokens).aux) == ["semantic"]
    with pytest.raises(ValueError, match="optical_flow"):
        model(inputs, ["optical_flow"], tokens)
    with pytest.raises(ValueError, match="unknown"):
        model(samples(), ["albedo"], tokens)
    with pytest.raises(ValueError, match="distinct"):
        model(samples(), ["depth", "depth"], tokens)
    with pytest.raises(ValueError, match="aux_tasks"):
        build(aux_tasks=["albedo"])


def test_gradient_checkpointing_recomputes_with_the_same_masking_draws():
    grads, states = [], []
    for checkpointing in (False, True):
        model, _ = build()
        randomize(model.task_attention)
        model.train()
        if checkpointing:
            model.unet.enable_gradient_checkpointing()
        masking = TaskMasking(
            ratio=0.6, mode="attn_prob_random_k", generator=torch.Generator().manual_seed(3)
        )
        out = model(samples(), ["depth", "semantic", "normal"], task_tokens(), masking=masking)
        sum(v.square().mean() for v in out.main.values()).backward()
        grads.append({n: p.grad for n, p in model.task_attention.named_parameters() if p.grad is not None})
        states.append(masking.generator.get_state())
    assert torch.equal(states[0], states[1]), "the recomputation drew masking decisions again"
    assert grads[0].keys() == grads[1].keys() and any("task_to_q.depth" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_masking_changes_training_output_but_not_eval():
    model, _ = build()
    randomize(model.task_attention)
    tokens, inputs = task_tokens(), samples()

    def run(ratio, train):
        model.train(train)
        masking = TaskMasking(ratio=ratio, mode="random", generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return model(inputs, ["depth"], tokens, masking=masking).main["depth"]

    plain = run(0.0, True)
    assert (run(1.0, True) - plain).abs().max() > 1e-4
    torch.testing.assert_close(run(1.0, False), plain)


def test_replaced_processors_are_reinstalled():
    model, _ = build()
    randomize(model.task_attention)
    tokens, inputs = task_tokens(), samples()
    with torch.no_grad():
        before = model(inputs, ["depth", "normal"], tokens).main
        # What enable_xformers_memory_efficient_attention and set_default_attn_processor do to ours.
        model.unet.set_attn_processor(AttnProcessor2_0())
        model.aux_unet.set_attn_processor(AttnProcessor2_0())
        after = model(inputs, ["depth", "normal"], tokens).main
    for task in before:
        torch.testing.assert_close(after[task], before[task], atol=0, rtol=0)
    assert len(model.unet.attn_processors) == 32 and len(self_attention_layers(model.unet)) == 16


@pytest.mark.parametrize("point", CAPTURE_POINTS)
def test_capture_points(point):
    model, _ = build()
    unet = copy.deepcopy(model.aux_unet)
    layers = self_attention_layers(unet)
    seen: dict[str, dict[int, torch.Tensor]] = {"in": {}, "attn1": {}, "out": {}}
    blocks = [m for m in unet.modules() if any(getattr(m, "attn1", None) is a for _, a, _ in layers)]
    order = {id(a): i for i, (_, a, _) in enumerate(layers)}
    hooks = []
    for block in blocks:
        i = order[id(block.attn1)]
        hooks.append(
            block.register_forward_pre_hook(
                lambda m, a, k, i=i: seen["in"].__setitem__(i, a[0]), with_kwargs=True
            )
        )
        hooks.append(block.register_forward_hook(lambda m, a, o, i=i: seen["out"].__setitem__(i, o)))
        hooks.append(block.attn1.register_forward_hook(lambda m, a, o, i=i: seen["attn1"].__setitem__(i, o)))
    capture = FeatureCapture(point).install(unet)
    with torch.no_grad():
        MultiStreamUNet._unet_call(unet, samples(), ["depth"], task_tokens(), 999)
    features = capture.features()
    assert sorted(features) == list(range(16))
    for i in (0, 6, 15):
        assert features[i].shape == seen["in"][i].shape
    if point == "self_attn_residual":
        assert all(torch.equal(features[i], seen["attn1"][i]) for i in range(16))
    if point == "self_attn_main":
        assert all(torch.equal(features[i], seen["in"][i] + seen["attn1"][i]) for i in range(16))
    if point == "ff_main":
        assert all(torch.equal(features[i], seen["out"][i]) for i in range(16))
    with pytest.raises(ValueError, match="capture point"):
        FeatureCapture("afterSelfAttn")


def test_low_precision_auxiliary_stream_feeds_a_float32_main_stream():
    model, _ = build()
    randomize(model.task_attention)
    tokens, inputs = task_tokens(), samples()
    with torch.no_grad():
        full = model(inputs, ["depth", "normal"], tokens).main
        model.aux_unet.to(torch.bfloat16)
        mixed = model(inputs, ["depth", "normal"], tokens)
    assert mixed.main["depth"].dtype == torch.float32 and mixed.aux["semantic"].dtype == torch.bfloat16
    # bfloat16 features (8 bits of mantissa) move the result a little, not a lot.
    difference = (mixed.main["depth"] - full["depth"]).abs().max()
    assert 0 < difference < 0.05 * full["depth"].abs().max()

"""Model card text: readable training facts, metrics, citation."""

from stablemtl.hub import make_model_card


def test_training_section_is_formatted_and_records_optimisation_settings():
    info = {
        "base_model": "stabilityai/stable-diffusion-2",
        "tasks": {"names": ["depth", "normal"]},
        "train_data": {"folders": ["data/indoor", "data/street"]},
        "max_train_steps": 20000,
        "learning_rate": 3e-05,
        "mixed_precision": "bf16",
        "seed": 42,
        "gradient_checkpointing": True,
        "metrics": {"depth": {"abs_rel": 0.123456}},
    }
    text = str(make_model_card(["depth", "normal"], training_info=info))
    training = text.split("## Training")[1].split("## Metrics")[0]
    assert "{" not in training and "[" not in training and "'" not in training  # no Python reprs
    assert "- tasks: depth, normal" in training
    assert "- training data: `data/indoor`, `data/street`" in training
    assert (
        "- learning rate: 3e-05" in training and "- precision: bf16" in training and "- seed: 42" in training
    )
    assert "- gradient checkpointing: yes" in training and "metrics" not in training
    assert training.index("base model") < training.index("learning rate") < training.index("gradient")
    assert "| depth | abs_rel | 0.1235 |" in text


def test_card_cites_the_paper():
    text = str(make_model_card(["depth"]))
    assert "arxiv:2506.08013" in text  # a metadata tag: the Hub links the paper page
    assert "arXiv:2506.08013" in text.split("## Citation")[1]
    assert "author  = {Cao, Anh-Quan and Lopes, Ivan and de Charette, Raoul}" in text
    assert "Repurposing Latent Diffusion Models for Multi-Task Learning" in text

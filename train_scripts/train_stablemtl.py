"""Train a StableMTL single-stream model (stage 1).

    accelerate launch train_scripts/train_stablemtl.py --config configs/stage1.yaml \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-2 --output_dir runs/s1

Settings come from the YAML file given by ``--config``; every flag overrides it (``--help`` lists them,
named as in diffusers' training examples). Multi-process on CPU: ``torchrun --standalone
--nproc_per_node 2 train_scripts/train_stablemtl.py ...``.
"""

from stablemtl.training import main

if __name__ == "__main__":
    main()

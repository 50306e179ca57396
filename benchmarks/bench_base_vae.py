"""What a wider tiny-base VAE would cost every model trained on it: encode and decode time, size.

    .venv/bin/python benchmarks/bench_base_vae.py [--batch 16] [--size 64] [--rounds 10]

Every training step of every model encodes its images and labels with the base's VAE, and every
prediction is decoded by it, so the VAE that bounds the ceiling row (docs/base.md) is also a cost paid on
every step. This times ``encode`` (posterior mean) and ``decode`` of a batch of 64 px images for the
shipped VAE and the wider candidates of ``train_scripts/pretrain_tiny_base.py`` (``--vae_channels``,
``--vae_layers_per_block``), untrained: time and size do not depend on the weights. Variants are
interleaved round by round (the CPU is shared) and medians reported, as ratios to the shipped VAE.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import AutoencoderKL
from timing import interleaved_medians

from stablemtl.resources import embedded_base
from stablemtl.testing import tiny_vae_config

CANDIDATES = {  # name: (block_out_channels, layers_per_block)
    "(64,128,128,128) x1": ((64, 128, 128, 128), 1),
    "(32,64,128,128) x2": ((32, 64, 128, 128), 2),
    "(64,128,128,128) x2": ((64, 128, 128, 128), 2),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    shipped = AutoencoderKL.from_pretrained(embedded_base(), subfolder="vae").eval()
    shipped_name = f"shipped {tuple(shipped.config.block_out_channels)} x{shipped.config.layers_per_block}"
    vaes = {shipped_name: shipped}
    for name, (channels, layers) in CANDIDATES.items():
        vaes[name] = AutoencoderKL(**{**tiny_vae_config(channels), "layers_per_block": layers}).eval()
    images = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    with torch.no_grad():
        latents = {name: vae.encode(images).latent_dist.mode() for name, vae in vaes.items()}
        encode = interleaved_medians(
            {name: (lambda v=vae: v.encode(images).latent_dist.mode()) for name, vae in vaes.items()},
            args.rounds,
        )
        decode = interleaved_medians(
            {name: (lambda v=vae, z=latents[name]: v.decode(z)) for name, vae in vaes.items()}, args.rounds
        )
    print(f"VAE of the tiny base, batch {args.batch} at {args.size} px, {torch.get_num_threads()} threads")
    print(f"  {'VAE':24s} {'MB':>6s} {'encode ms':>10s} {'ratio':>6s} {'decode ms':>10s} {'ratio':>6s}")
    for name, vae in vaes.items():
        megabytes = sum(p.numel() * p.element_size() for p in vae.parameters()) / 2**20
        enc, dec = encode[name], decode[name]
        enc_ratio, dec_ratio = enc / encode[shipped_name], dec / decode[shipped_name]
        timings = f"{enc * 1e3:10.1f} {enc_ratio:6.2f} {dec * 1e3:10.1f} {dec_ratio:6.2f}"
        print(f"  {name:24s} {megabytes:6.1f} {timings}")


if __name__ == "__main__":
    main()

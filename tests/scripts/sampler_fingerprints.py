"""SHA-256 fingerprints of every sampler's output for fixed seeds, to show a refactor changes no output.

Builds tiny untrained models with fixed seeds (no data files), runs each latent sampling mode with each
option that takes its own code path, the MDLM decoders and AR generation, and prints one line per case:
``case  sha256(latents, token ids, NFE)``. Run it on two checkouts and diff the outputs:

    PYTHONPATH=/path/to/old python tests/scripts/sampler_fingerprints.py > old.txt
    python tests/scripts/sampler_fingerprints.py > new.txt && diff old.txt new.txt

Bit-identity holds on one machine (float reductions differ across CPUs).
"""

from __future__ import annotations

import hashlib
import sys

import torch


def digest(*tensors, nfe=None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(nfe).encode())
    return h.hexdigest()[:16]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noisy_init(den) -> None:
    for name, param in den.named_parameters():  # leave adaLN-Zero's zero init: outputs depend on inputs
        if name.startswith("out.") or ".ada." in name:
            torch.nn.init.normal_(param, std=0.1)


def latent_cases(tok):
    from diffusers import (
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
    )

    from latentlm import LatentDiffusionPipeline
    from latentlm.autoencoder import TextAutoencoder
    from latentlm.diffusion import LatentDenoiser
    from latentlm.diffusion.time_density import time_density_spec
    from latentlm.pipeline_latent_diffusion import make_scheduler

    torch.manual_seed(0)
    ae = TextAutoencoder(vocab_size=len(tok), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                         decoder_depth=1).eval()
    den = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8).eval()
    noisy_init(den)
    den_sc = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8, self_conditioning=True).eval()
    noisy_init(den_sc)
    den_2 = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8).eval()
    noisy_init(den_2)
    pipe = LatentDiffusionPipeline(tok, ae, den, make_scheduler("ddim", den))
    prompts = ["lily had", "once upon a time there was a"]
    kw = dict(max_new_tokens=12, num_inference_steps=5)

    def run(p, name, prompt=prompts, **extra):
        out = p(prompt, generator=gen(3), **{**kw, **extra})
        yield name, digest(out.latents, out.sequences, nfe=out.nfe)

    yield from run(pipe, "parallel-ddim")
    for label, sched in (("ddpm", DDPMScheduler.from_config(pipe.scheduler.config)),
                         ("dpm++", DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)),
                         ("flow-euler", FlowMatchEulerDiscreteScheduler())):
        yield from run(LatentDiffusionPipeline(tok, ae, den, sched), f"parallel-{label}")
    yield from run(pipe, "parallel-unconditional-3-samples", prompt=None, num_samples_per_prompt=3)
    yield from run(pipe, "parallel-guidance-3", guidance_scale=3.0)
    yield from run(pipe, "parallel-guidance-0.5", guidance_scale=0.5)
    yield from run(pipe, "parallel-guidance-0", guidance_scale=0.0)
    yield from run(pipe, "parallel-guidance-interval", guidance_scale=2.0, guidance_interval=(0.3, 0.8))
    ddpm = LatentDiffusionPipeline(tok, ae, den, make_scheduler("ddpm", den))
    yield from run(ddpm, "parallel-ddpm-corrector", corrector_steps=2)
    yield from run(pipe, "parallel-decoder-temperature", decoder_temperature=1.0)
    yield from run(pipe, "parallel-denoising-end", denoising_end=0.5)
    yield from run(pipe, "parallel-project-below", project_below=0.5)
    yield from run(pipe, "parallel-callback",
                   callback_on_step_end=lambda p, i, ts, d: {"latents": d["latents"] * 0.9})
    yield from run(pipe, "parallel-given-latents", prompt=["a"],
                   latents=torch.randn(1, 3, 8, generator=gen(7)))
    sc = LatentDiffusionPipeline(tok, ae, den_sc, make_scheduler("ddpm", den_sc))
    yield from run(sc, "parallel-self-conditioning", guidance_scale=2.0)
    timed = LatentDiffusionPipeline(tok, ae, den, make_scheduler("ddpm", den),
                                    training_times=time_density_spec("logit-normal", 0.0, 1.0))
    yield from run(timed, "parallel-training-spacing", step_spacing="training")
    experts = LatentDiffusionPipeline(tok, ae, den, make_scheduler("ddim", den), denoiser_2=den_2, boundary=0.5)
    yield from run(experts, "parallel-two-experts")

    torch.manual_seed(1)
    cae = TextAutoencoder(vocab_size=len(tok), max_seq_len=32, latent_dim=8, dim=32, encoder_depth=1,
                          decoder_depth=1, encoder_context="chunk").eval()
    with torch.no_grad():  # no end-of-text: generation runs to max_new_tokens
        cae.head.bias[tok.eos_token_id] = -1e4
    for sc_flag in (False, True):
        bden = LatentDenoiser(latent_dim=8, dim=32, depth=1, n_heads=4, max_latents=8, block_size=2,
                              self_conditioning=sc_flag).eval()
        noisy_init(bden)
        block = LatentDiffusionPipeline(tok, cae, bden, make_scheduler("ddpm", bden))
        tag = "-sc" if sc_flag else ""
        kw = dict(max_new_tokens=24, num_inference_steps=3)
        yield from run(block, f"block-ar{tag}", mode="block-ar")
        yield from run(block, f"staggered-2{tag}", mode="staggered", window_blocks=2)
        yield from run(block, f"staggered-3{tag}", mode="staggered", window_blocks=3, guidance_scale=2.0)
        yield from run(block, f"block-ar-guidance{tag}", mode="block-ar", guidance_scale=2.0,
                       guidance_interval=(0.2, 0.9))
        yield from run(block, f"block-ar-temperature-end{tag}", mode="block-ar", decoder_temperature=1.0,
                       denoising_end=0.5)
        yield from run(block, f"staggered-callback{tag}", mode="staggered", window_blocks=2,
                       callback_on_step_end=lambda p, i, ts, d: {"latents": d["latents"] * 0.9})
        yield from run(block, f"block-ar-unconditional{tag}", prompt=None, mode="block-ar",
                       num_samples_per_prompt=2)
        yield from run(block, f"block-ar-rolling{tag}", prompt=["lily had a red kite."], mode="block-ar",
                       max_new_tokens=200, num_inference_steps=2)
        yield from run(block, f"block-parallel{tag}", max_new_tokens=16)


def token_cases(tok):
    from latentlm.baselines.autoregressive import CausalLM
    from latentlm.baselines.autoregressive import generate as ar_generate
    from latentlm.baselines.masked_diffusion import MaskedDiffusionLM
    from latentlm.baselines.mdlm_decoders import generate as mdlm_generate

    ids = torch.tensor([tok("lily had a red", add_special_tokens=False)["input_ids"]] * 2)
    torch.manual_seed(2)
    mdlm = MaskedDiffusionLM(vocab_size=len(tok), dim=32, depth=1, n_heads=4, max_seq_len=64,
                             mask_token_id=tok.mask_token_id if tok.mask_token_id is not None else 2).eval()
    for decoder in ("ancestral", "llada", "threshold", "anchor"):
        out, nfe = mdlm_generate(mdlm, ids, 16, decoder=decoder, steps=8, generator=gen(4))
        yield f"mdlm-{decoder}", digest(out, nfe=nfe)
    torch.manual_seed(3)
    ar = CausalLM(vocab_size=len(tok), dim=32, depth=1, n_heads=4, max_seq_len=64,
                  pad_token_id=tok.pad_token_id).eval()
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9), (0.0, 1.0)):
        out, nfe = ar_generate(ar, ids, 16, temperature=temperature, top_p=top_p, generator=gen(5),
                               stop_at_eot=False)
        yield f"ar-t{temperature}-p{top_p}", digest(out, nfe=nfe)
    from latentlm.baselines.uniform_diffusion import UniformDiffusionLM, uniform_loss
    from latentlm.baselines.uniform_diffusion import generate as uniform_generate

    torch.manual_seed(6)
    duo = UniformDiffusionLM(vocab_size=len(tok), dim=32, depth=1, n_heads=4, max_seq_len=64, loss_steps=50).eval()
    for decoder, extra in (("ancestral", {}), ("psi", {"corrector": 0.5}), ("psi", {"corrector": 0.3,
                                                                                     "corrector_interval": (0.2, 0.8)})):
        out, nfe = uniform_generate(duo, ids, 16, decoder=decoder, steps=8, generator=gen(7), **extra)
        yield f"duo-{decoder}-{sorted(extra.items())}", digest(out, nfe=nfe)
    torch.manual_seed(8)
    loss = uniform_loss(duo, {"input_ids": torch.cat([ids, ids], 1)}).loss
    yield "duo-loss", digest(loss.detach().double().reshape(1))


def main() -> None:
    from latentlm.data.synthetic import generate_stories
    from latentlm.data.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    tok = train_tokenizer([s.text for s in generate_stories(400, seed=123)], vocab_size=512)
    for cases in (latent_cases(tok), token_cases(tok)):
        for name, value in cases:
            print(f"{name:40s} {value}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

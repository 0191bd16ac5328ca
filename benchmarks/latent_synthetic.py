"""Latent diffusion on synthetic stories: train (or reuse) a cpu-tiny autoencoder and denoiser,
then score continuations of held-out openings with the synthetic-story checker.

    python benchmarks/latent_synthetic.py --out runs/syn [--set model.self_conditioning=false ...]
        [--samplers ddim dpm++ ...] [--steps 8 16 32 64] [--guidance 1 2 3] [--guidance-interval 0 0.3]
        [--prompts 64] [--modes parallel block-ar staggered --window-blocks 4]   # a block-causal denoiser
        [--diagnose] [--ar-steps 1000 [--ar-set model.depth=2 ...]]
        [--stage2-set train.steps=2400 --stage2-set loss.time_mean=0.25 ...]   # a fine-tuning stage

Prints the training times and a table: sampler, sampling mode, steps, NFE, seconds per sample,
share of well-formed continuation sentences, share of consistent mentions.
Ablations: run with a different --out and --set overrides of the denoiser preset.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from latentlm.data.synthetic import NAMES, generate_stories, write_jsonl
from latentlm.data.tokenizer import train_tokenizer
from latentlm.eval.consistency import synthetic_probe
from latentlm.loading import load_pipeline
from latentlm.pipeline_latent_diffusion import make_scheduler
from latentlm.recipes import run_training as _run_training


def run_training(kind: str, *args, **kwargs):
    """The library's run_training, but an interrupted run (SIGTERM, Ctrl-C) ends the benchmark: the
    checkpoint is saved and rerunning the same command resumes it."""
    result = _run_training(kind, *args, **kwargs)
    if result.interrupted:
        raise SystemExit(f"{kind} training interrupted at step {result.step}; rerun the command to resume")
    return result


@torch.no_grad()
def one_step_diagnostic(pipe, held_out, times=(0.3, 0.5, 0.7, 0.9), n=128) -> list[dict]:
    """Denoise real held-out continuation latents in one step from time t, with the right opening,
    another story's opening, and none: x0 MSE per dimension, token accuracy of the decoded estimate,
    and accuracy on character-name tokens alone. Names are what the opening fixes, so the gap
    between "right" and "wrong" in name accuracy is how much the denoiser uses the prompt."""
    from latentlm.autoencoder.modeling_autoencoder import encode_prompts

    ae, den, tok = pipe.autoencoder, pipe.denoiser, pipe.tokenizer
    heads = [s.split()[0] for s in held_out[:n]]
    tails = [" " + s.split()[1] for s in held_out[:n]]
    k = ae.config.tokens_per_latent
    width = 64 // k * k
    x = torch.full((len(tails), width), tok.pad_token_id)
    m = torch.zeros_like(x)
    for i, t in enumerate(tails):
        ids = tok(t, add_special_tokens=False)["input_ids"][:width]
        x[i, : len(ids)], m[i, : len(ids)] = torch.tensor(ids), 1
    name_ids = {ids[0] for ids in tok([" " + w for w in NAMES], add_special_tokens=False)["input_ids"] if len(ids) == 1}
    is_name = torch.isin(x, torch.tensor(sorted(name_ids))) & m.bool()
    z0 = ae.encode(x, m).float()
    ctx, cm = encode_prompts(ae, [tok(h, add_special_tokens=False)["input_ids"] for h in heads], tok.pad_token_id, "cpu")
    perm = torch.roll(torch.arange(len(heads)), 1)
    rows = []
    for t in times:
        tt = torch.full((len(heads),), t)
        a, s = (v.float()[:, None, None] for v in den.schedule.alpha_sigma(tt))
        zt = a * z0 + s * torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        row = {"t": t}
        for name, c, mm in (("right", ctx, cm), ("wrong", ctx[perm], cm[perm]), ("none", None, None)):
            x0 = pipe.predict_x0(zt, tt, c, mm)
            hit = ae.decode_tokens(x0) == x
            row[f"{name}_mse"] = float(((x0 - z0) ** 2).mean())
            row[f"{name}_acc"] = float((hit & m.bool()).sum() / m.sum())
            row[f"{name}_names"] = float((hit & is_name).sum() / is_name.sum().clamp_min(1))
        rows.append(row)
    return rows


def score_ar(folder: Path, train_file: Path, valid_file: Path, tokenizer: Path, steps: int, prompts: list[str],
             new_tokens: int, times: dict, overrides: list[str] = ()) -> dict:
    """The calibration row: the cpu-tiny AR (with ``overrides``) trained ``steps`` steps, sampled and
    checked like the latent model."""
    from latentlm.eval.models import load_language_model

    if not (folder / "config.json").is_file():
        t0 = time.perf_counter()
        run_training("ar", [train_file], folder, preset="cpu-tiny", valid=[valid_file], tokenizer=tokenizer,
                     overrides=[f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 10)}", *overrides])
        times[f"{folder.name}_s"] = time.perf_counter() - t0
    lm = load_language_model(folder, "ar")
    t0 = time.perf_counter()
    gen = lm.generate(prompts, new_tokens, generator=torch.Generator().manual_seed(0))
    probe = synthetic_probe(prompts, gen.texts)
    wf, cons = probe.well_formed, probe.consistent
    row = {"sampler": f"AR baseline, {steps} steps" + (f" ({', '.join(overrides)})" if overrides else ""),
           "mode": "autoregressive", "steps": new_tokens, "guidance": 1.0, "nfe": new_tokens,
           "s_per_sample": (time.perf_counter() - t0) / len(prompts), "well_formed": wf, "consistent": cons}
    print(json.dumps({**row, "training_seconds": times}), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--autoencoder", help="reuse a trained autoencoder folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="denoiser preset override")
    p.add_argument("--stage2-set", dest="stage2_overrides", action="append", default=[],
                   help="fine-tune the denoiser in a second stage (--init-from the first) with these overrides "
                        "of the preset, e.g. loss.time_mean=0.25; the first stage uses --set")
    p.add_argument("--ae-set", dest="ae_overrides", action="append", default=[],
                   help="autoencoder preset override (when the autoencoder is trained here)")
    p.add_argument("--samplers", nargs="+", default=["ddim"])
    p.add_argument("--steps", type=int, nargs="+", default=[32])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="classifier-free guidance scales")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("T_LO", "T_HI"),
                   help="guide only at diffusion times in [T_LO, T_HI] (default: every step)")
    p.add_argument("--corrector-steps", type=int, default=1, help="for the predictor-corrector rows")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--modes", nargs="+", default=["parallel"], choices=["parallel", "block-ar", "staggered"],
                   help="sampling modes (block-ar and staggered need --set model.block_size=B)")
    p.add_argument("--window-blocks", type=int, default=4, help="blocks in flight in staggered mode")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--stories", type=int, default=4000)
    p.add_argument("--diagnose", action="store_true", help="also print the one-step denoising diagnostic")
    p.add_argument("--ar-steps", type=int, default=0,
                   help="also train the cpu-tiny AR baseline for this many steps on the same stories and score it")
    p.add_argument("--ar-set", dest="ar_overrides", action="append", default=[],
                   help="AR preset override for the --ar-steps row, e.g. model.depth=2")
    args = p.parse_args()
    out = Path(args.out)
    train_stories = generate_stories(args.stories, seed=0)
    held_out = generate_stories(max(args.prompts, 50), seed=1)
    train_file = write_jsonl(train_stories, out / "data" / "train.jsonl")
    valid_file = write_jsonl(held_out, out / "data" / "valid.jsonl")
    times = {}
    ae_dir = Path(args.autoencoder) if args.autoencoder else out / "autoencoder"
    if not args.autoencoder:
        tok_dir = out / "tokenizer"
        if not (tok_dir / "tokenizer.json").is_file():
            train_tokenizer([s.text for s in train_stories], 4096).save_pretrained(tok_dir)
        if not (ae_dir / "config.json").is_file():
            t0 = time.perf_counter()
            run_training("autoencoder", [train_file], ae_dir, preset="cpu-tiny", valid=[valid_file],
                         tokenizer=tok_dir, overrides=args.ae_overrides)
            times["autoencoder_s"] = time.perf_counter() - t0
    den_dir = out / "denoiser"
    stage1_dir = out / "denoiser_stage1" if args.stage2_overrides else den_dir
    if not (stage1_dir / "model_index.json").is_file():
        t0 = time.perf_counter()
        run_training("denoiser", [train_file], stage1_dir, preset="cpu-tiny", valid=[valid_file],
                     autoencoder=ae_dir, overrides=args.overrides)
        times["denoiser_s"] = time.perf_counter() - t0
    if args.stage2_overrides and not (den_dir / "model_index.json").is_file():
        t0 = time.perf_counter()
        run_training("denoiser", [train_file], den_dir, preset="cpu-tiny", valid=[valid_file],
                     autoencoder=ae_dir, overrides=args.stage2_overrides, init_from=stage1_dir)
        times["denoiser_stage2_s"] = time.perf_counter() - t0
    print(json.dumps({"training_seconds": times, "overrides": args.overrides, "ae_overrides": args.ae_overrides,
                      "stage2_overrides": args.stage2_overrides}))
    pipe = load_pipeline(den_dir)
    prompts = [s.split()[0] for s in held_out[: args.prompts]]
    rows = []
    grid = [(sampler, mode, steps, w) for sampler in args.samplers for mode in args.modes for steps in args.steps
            for w in args.guidance]
    for sampler, mode, steps, w in grid:
        pc = sampler == "pc"
        pipe.scheduler = make_scheduler("ddim" if pc else sampler, pipe.denoiser)  # set_timesteps resets it per call
        t0 = time.perf_counter()
        res = pipe(prompts, max_new_tokens=args.new_tokens, num_inference_steps=steps, guidance_scale=w,
                   guidance_interval=tuple(args.guidance_interval), corrector_steps=args.corrector_steps if pc else 0,
                   generator=torch.Generator().manual_seed(0), mode=mode, window_blocks=args.window_blocks)
        dt = time.perf_counter() - t0
        probe = synthetic_probe(prompts, res.texts)  # the checker, as `latentlm compare` runs it
        wf, cons = probe.well_formed, probe.consistent
        row = {"sampler": "pc (ddim + langevin)" if pc else sampler, "mode": mode, "steps": steps, "guidance": w,
               "guidance_interval": list(args.guidance_interval),
               "nfe": res.nfe, "s_per_sample": dt / len(prompts), "well_formed": wf, "consistent": cons}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.ar_steps:
        shape = "".join("_" + o.partition("=")[0].split(".")[-1] + o.partition("=")[2]
                        for o in args.ar_overrides)  # e.g. _depth2_dim256
        rows.append(score_ar(out / f"ar_{args.ar_steps}{shape}", train_file, valid_file, ae_dir, args.ar_steps,
                             prompts, args.new_tokens, times, args.ar_overrides))
    print("\nexample:", res.texts[0][:400])
    print("\n| sampler | mode | steps | guidance | NFE | s/sample | well-formed | consistent |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['mode']} | {r['steps']} | {r['guidance']:g} | {r['nfe']} | {r['s_per_sample']:.4f} | "
              f"{r['well_formed']:.3f} | {r['consistent']:.3f} |")
    diag = one_step_diagnostic(pipe, held_out) if args.diagnose else []
    if diag:
        print("\n| t | x0 MSE | token acc. | name acc. |  (each: right / wrong / no prompt)\n|---|---|---|---|")
        for d in diag:
            print(f"| {d['t']} | " + " | ".join(" / ".join(f"{d[f'{p}_{m}']:.3f}" for p in ("right", "wrong", "none"))
                                               for m in ("mse", "acc", "names")) + " |")
    (out / "results.json").write_text(json.dumps({"training_seconds": times, "rows": rows, "diagnostic": diag},
                                                 indent=2))


if __name__ == "__main__":
    main()

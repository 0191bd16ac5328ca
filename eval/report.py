"""report.md and PNG plots from a ``compare`` results dictionary."""

from __future__ import annotations

import math
from pathlib import Path

from latentlm.eval.speed import SpeedRow, speed_table
from latentlm.files import write_text_atomic

COLUMNS = {  # metric -> (header, format)
    "gen_ppl": ("gen. PPL (judge)", "{:.2f}"), "mauve": ("MAUVE", "{:.3f}"), "entropy": ("entropy (bits)", "{:.2f}"),
    "rep4": ("rep-4", "{:.3f}"), "distinct2": ("distinct-2", "{:.3f}"), "self_bleu": ("self-BLEU", "{:.1f}"),
    "memorised8": ("memorised 8-grams", "{:.3f}"),
}


def _fmt(v, fmt: str, ci=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    s = fmt.format(v)
    if ci:
        s += f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
    return s


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def summary_table(results: dict) -> str:
    """The short table printed at the end of a run: likelihood, main quality and consistency numbers."""
    s = results["sections"]
    q = s.get("quality", {}).get("rows", {})
    probe = s.get("consistency", {}).get("probe", {})
    ents = s.get("consistency", {}).get("entities", {})
    rows = []
    for name in q:
        lk = s.get(f"likelihood/{name}")
        nll = "-" if not lk else ("" if lk["exact"] else "<= ") + f"{lk['nats_per_token']:.3f}"
        cz = s.get(f"cloze/{name}", {})
        row = [name, nll, _fmt(q[name].get("gen_ppl"), "{:.2f}"), _fmt(q[name].get("mauve"), "{:.3f}", q[name].get("mauve_ci")),
               _fmt(q[name].get("rep4"), "{:.3f}")]
        if probe:
            row += [_fmt(probe.get(name, {}).get(k), "{:.3f}") for k in ("well_formed", "consistent")]
        else:
            row.append(_fmt(ents.get(name, {}).get("known_names"), "{:.3f}"))
        row.append(_fmt(cz.get("accuracy"), "{:.3f}"))
        rows.append(row)
    cons_cols = ["well-formed", "consistent mentions"] if probe else ["names from opening"]
    return _table(["system", "nats/token", "gen. PPL", "MAUVE", "rep-4", *cons_cols, "cloze acc."], rows)


def _hack_line(section: dict, metrics: tuple[str, ...]) -> list[str]:
    hack = {m: v for m, v in section.get("hackable", {}).items() if m in metrics}
    if not hack:
        return []
    return ["Hackable: " + "; ".join(f"{m} (beaten by {', '.join(v)})" for m, v in hack.items()), ""]


def write_report(results: dict, out: Path) -> Path:
    s, cfg, systems = results["sections"], results["config"]["shared"], results["config"]["systems"]
    lines = ["# latentlm compare report", ""]
    meta = s.get("meta", {})
    lines += [f"Data: `{cfg['data']}` ({meta.get('n_prompts')} openings, {cfg['max_new_tokens']} new tokens, "
              f"{cfg['seeds']} seed(s)); training texts: `{cfg['train']}`; judge: `{cfg['judge']}`; "
              f"device: {meta.get('device')}; finished {meta.get('finished')}.", "",
              "Models: " + ", ".join(f"**{k}** `{v['folder']}` {v['options']}" for k, v in systems.items()),
              "", "Intervals: 95% percentile bootstrap over samples (pooled over seeds); for statistics of the "
              "pooled samples (entropy, distinct-2, MAUVE), whose value depends on the sample's size, the spread "
              "of half-samples of the openings placed around the full sample's value (resampling texts with "
              "replacement would duplicate them and bias these).", ""]
    lines += ["## Summary", "", summary_table(results), ""]

    lk = [(k.split("/", 1)[1], v) for k, v in s.items() if k.startswith("likelihood/")]
    if lk:
        lines += ["## Likelihood", "", f"On {cfg['nll_texts']} texts of the data; AR is exact, the diffusion models "
                  f"give upper bounds ({cfg['nll_samples']} Monte Carlo samples per text, standard error shown).", ""]
        lines.append(_table(["model", "nats/token", "+- s.e.", "95% CI (texts)", "bits/char", "tokens"], [
            [n, ("" if v["exact"] else "<= ") + f"{v['nats_per_token']:.4f}", f"{v['stderr']:.4f}",
             _fmt(None, "") if not v.get("ci") else f"[{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]",
             f"{v['bits_per_char']:.4f}", str(v["n_tokens"])] for n, v in lk]))
        lines.append("")

    q = s.get("quality")
    if q:
        hack = q.get("hackable", {})
        lines += ["## Sample quality", "",
                  "Continuations of the same openings; `real text` is the true continuation (MAUVE of real text "
                  "is the data-vs-data ceiling: real continuations against other held-out stories). Metrics marked "
                  "(hackable) are beaten by a sanity sampler: read them only next to the others.", ""]
        present = [m for m in COLUMNS if any(r.get(m) is not None for r in q["rows"].values())]
        header = ["system"] + [COLUMNS[m][0] + (" (hackable)" if m in hack else "") for m in present]
        lines.append(_table(header, [[n] + [_fmt(r.get(m), COLUMNS[m][1], r.get(f"{m}_ci")) for m in present]
                                     for n, r in q["rows"].items()]))
        if hack:
            lines += ["", "Hackable: " + "; ".join(f"{m} (beaten by {', '.join(v)})" for m, v in hack.items())]
        lines.append("")

    div = s.get("diversity")
    if div:
        lines += ["## Quality against diversity", "",
                  f"Judge perplexity against word entropy along each model's diversity knob "
                  f"({cfg.get('curve_prompts')} openings, one sample each); real text's entropy on the same "
                  f"openings: {div['real_entropy']:.2f} bits. Perplexity and MAUVE at that entropy are "
                  "interpolated between the two points whose entropies bracket it (linear in log perplexity); "
                  "'not reached' when no curve crosses it.", "", "![quality vs entropy](quality_vs_entropy.png)",
                  "", _table(["model", "gen. PPL at real entropy", "MAUVE there", "knob"], [
                      [n, "not reached" if m["gen_ppl"] is None else f"{m['gen_ppl']:.2f}",
                       _fmt(m["mauve"], "{:.3f}"), m["knob"] or "-"] for n, m in div["matched"].items()]), ""]
        rows = []
        for k, v in s.items():
            if k.startswith("diversity/"):
                for knob, points in v["curves"].items():
                    rows += [[k.split("/", 1)[1], f"{knob} = {p['value']}", str(p["nfe"]), f"{p['entropy']:.2f}",
                              f"{p['gen_ppl']:.2f}", _fmt(p.get("mauve"), "{:.3f}"), f"{p['rep4']:.3f}"]
                             for p in points]
        lines += [_table(["model", "setting", "NFE", "entropy (bits)", "gen. PPL", "MAUVE", "rep-4"], rows), ""]

    c = s.get("consistency", {})
    if c or any(k.startswith("cloze/") for k in s):
        lines += ["## Long-range consistency", ""]
    if c.get("probe"):
        bins = next((list(v["by_distance"]) for v in c["probe"].values() if "by_distance" in v), [])
        lines += ["### Synthetic probe", "",
                  "Share of well-formed continuation sentences and of later mentions consistent with the facts "
                  "the opening introduced, overall and by distance in words.", ""]
        rows = []
        for n, v in c["probe"].items():
            if "skipped" in v:
                rows.append([n, "skipped: " + v["skipped"]] + [""] * (len(bins) + 1))
                continue
            rows.append([n, _fmt(v["well_formed"], "{:.3f}", v["well_formed_ci"]),
                         _fmt(v["consistent"], "{:.3f}", v["consistent_ci"])]
                        + [f"{_fmt(a, '{:.2f}')} ({m})" for a, m in v["by_distance"].values()])
        lines += [_table(["system", "well-formed", "consistent"] + [f"d {b}" for b in bins], rows), ""]
        lines += _hack_line(c, ("consistent",))
    if c.get("entities"):
        lines += ["### Entity persistence", "", "Name mentions in the continuation that are characters of the "
                  "opening, and name mentions in its second half that are new names.", ""]
        lines += [_table(["system", "names from opening", "new names, 2nd half", "mentions"], [
            [n, "skipped: " + v["skipped"], "", ""] if "skipped" in v else
            [n, _fmt(v["known_names"], "{:.3f}", v["known_names_ci"]), _fmt(v["new_names"], "{:.3f}", v["new_names_ci"]),
             str(v["mentions"])] for n, v in c["entities"].items()]), ""]
        lines += _hack_line(c, ("known_names", "new_names"))
    cl = [(k.split("/", 1)[1], v) for k, v in s.items() if k.startswith("cloze/")]
    if cl:
        lines += ["### Cloze discrimination", "", "Share of stories whose true final sentence gets fewer nats/token "
                  "(given the rest) than another story's ending, both scored the same way; chance is 0.5.", ""]
        lines += [_table(["model", "accuracy", "stories"], [
            [n, "skipped: " + v["skipped"], ""] if "skipped" in v else [n, _fmt(v["accuracy"], "{:.3f}", v["ci"]), str(v["n"])]
            for n, v in cl]), ""]
    coh = c.get("coherence", {})
    if coh.get("curves"):
        ds = list(coh["real_similarity"])
        lines += ["### Segment coherence", "", f"Cosine similarity of MiniLM embeddings of {cfg['window']}-word windows "
                  f"d windows apart, normalised: 0 = windows of different stories "
                  f"(raw {coh['shuffled_similarity']:.3f}), 1 = real text.", ""]
        lines += [_table(["system"] + [f"d = {d}" for d in ds], [
            [n] + (["skipped: " + v["skipped"]] + [""] * (len(ds) - 1) if "skipped" in v
                   else [_fmt(v.get(d), "{:.2f}") for d in ds]) for n, v in coh["curves"].items()]), ""]
        lines += _hack_line(c, tuple(f"coherence_d{d}" for d in ds))

    sweep = s.get("nfe_sweep")
    if sweep:
        keys = [k for k in ("gen_ppl", "well_formed", "consistent", "entropy", "rep4") if any(k in r for r in sweep)]
        lines += ["## Quality vs NFE", "", "![quality vs NFE](quality_vs_nfe.png)", ""]
        lines += [_table(["model", "steps", "NFE"] + keys, [
            [r["model"], str(r["steps"] or "-"), str(r["nfe"])] + [_fmt(r.get(k), "{:.3f}") for k in keys]
            for r in sweep]), ""]
    lossless = [(k.split("/", 1)[1], v) for k, v in s.items() if k.startswith("lossless/")]
    if lossless:
        lines += ["## PTP against its AR", "", "Samples of each PTP model and of its own AR sampled token by "
                  "token, same prompts and seed (the first); PTP is lossless when every one is identical.", "",
                  _table(["model", "identical samples"], [[n, f"{v['identical']} / {v['n']}"] for n, v in lossless]),
                  ""]
    sp = s.get("speed")
    if sp:
        lines += ["## Speed", "", f"One run on {meta.get('device')}; FLOPs counted by torch's flop counter on one "
                  "batch-1 generation.", "", "![latency vs length](latency_vs_length.png)", "",
                  speed_table([SpeedRow(**r) for r in sp]), ""]
    if c.get("probe"):
        lines += ["![consistency vs distance](consistency_vs_distance.png)", ""]
    sk = s.get("skipped", {})
    if sk:
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in sk.items()] + [""]
    took = sorted(results.get("seconds", {}).items(), key=lambda kv: -kv[1])
    if took:
        total = sum(v for _, v in took)
        lines += ["## Where the time went", "", f"Wall-clock of each stage, summed over every run that worked on "
                  f"it: {total / 3600:.2f} h in all.", "",
                  _table(["stage", "seconds", "share"], [[k, f"{v:,.0f}", f"{v / total:.0%}" if total else "-"]
                                                         for k, v in took if v >= 0.5]), ""]
    lines += ["Raw samples: `samples/`. All numbers: `results.json`."]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    _plots(s, out)
    return path


def _line_plot(path: Path, curves: dict[str, list[tuple]], xlabel: str, ylabel: str, log2_x: bool = False) -> None:
    """One PNG with a marked line per name (curves: name -> [(x, y), ...])."""
    import matplotlib  # optional: the [eval] extra, and only for plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, pts in curves.items():
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _entropy_plot(s: dict, out: Path) -> None:
    """quality_vs_entropy.png: judge perplexity (log) against word entropy, a line per model and knob,
    real text's entropy marked."""
    import matplotlib  # optional: the [eval] extra, and only for plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = [k for k in s if k.startswith("diversity/")]
    for i, k in enumerate(models):  # a color per model, a line style per knob
        for j, (knob, points) in enumerate(s[k]["curves"].items()):
            ax.plot([p["entropy"] for p in points], [p["gen_ppl"] for p in points], marker="o", markersize=4,
                    color=colors[i % len(colors)], linestyle=("-", "--", ":", "-.")[j % 4],
                    label=f"{k.split('/', 1)[1]} ({knob})")
    ax.axvline(s["diversity"]["real_entropy"], color="black", linestyle=":", label="real text")
    ax.set_yscale("log")
    ax.set_xlabel("word entropy (bits)")
    ax.set_ylabel("judge perplexity")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_entropy.png", dpi=120)
    plt.close(fig)


def _plots(s: dict, out: Path) -> None:
    if s.get("diversity"):
        _entropy_plot(s, out)
    sweep = s.get("nfe_sweep")
    if sweep:
        key = "gen_ppl" if any("gen_ppl" in r for r in sweep) else (
            "well_formed" if any("well_formed" in r for r in sweep) else "entropy")
        curves = {m: [(r["nfe"], r[key]) for r in sweep if r["model"] == m and key in r]
                  for m in dict.fromkeys(r["model"] for r in sweep)}
        _line_plot(out / "quality_vs_nfe.png", curves, "NFE per sample", key, log2_x=True)
    sp = s.get("speed")
    if sp:
        curves = {m: [(r["new_tokens"], r["latency_s"]) for r in sp if r["model"] == m and r["latency_s"]]
                  for m in dict.fromkeys(r["model"] for r in sp)}
        _line_plot(out / "latency_vs_length.png", curves, "new tokens", "latency, batch 1 (s)")
    probe = s.get("consistency", {}).get("probe", {})
    if probe:
        curves = {m: [(b, a) for b, (a, n) in v["by_distance"].items() if n]
                  for m, v in probe.items() if "by_distance" in v and not m.startswith("sanity")}
        _line_plot(out / "consistency_vs_distance.png", curves, "distance (words)", "consistent mentions")

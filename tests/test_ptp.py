"""Parallel Token Prediction: inverse-CDF sampling, lossless decoding, the distillation loss, bad input."""

import json
import shutil

import pytest
import torch

from latentlm.baselines.autoregressive import (
    CausalLM,
    draw_uniforms,
    generate,
    next_token_probs,
    pick,
    token_interval,
)
from latentlm.baselines.parallel_token_prediction import (
    ParallelTokenPredictor,
    PTPLossConfig,
    completion_layout,
    ptp_generate,
    ptp_loss,
)
from latentlm.cli import main
from latentlm.errors import CheckpointError, ConfigError, InputError
from latentlm.eval.models import PTPAdapter, load_language_model

V, EOT = 12, 1  # a small vocabulary: end-of-text is common, so rows end at different steps


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = CausalLM(vocab_size=V, dim=32, depth=2, n_heads=4, max_seq_len=128).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # peaked distributions, so that top-p and temperature matter
    return model


@pytest.fixture(scope="module")
def student(teacher):
    torch.manual_seed(1)
    return ParallelTokenPredictor.from_teacher(teacher, draft_tokens=6).eval()


class OracleDrafter(ParallelTokenPredictor):
    """Drafts the AR's own sample for the first ``right`` u positions of a call, then a wrong token:
    it looks each u up in the stream the sampler drew and returns the AR's token at that index."""

    def setup(self, u_all: torch.Tensor, answer: torch.Tensor, right: int) -> None:
        self.u_all, self.answer, self.right = u_all, answer, right

    def forward(self, input_ids, u, **kw):
        super().forward(input_ids, u, **kw)  # keeps the cache bookkeeping real
        logits = torch.zeros(*u.shape, self.config.vocab_size)
        for r in range(u.shape[0]):
            for j in range(u.shape[1]):
                hits = (self.u_all[r] == u[r, j]).nonzero()
                tok = int(self.answer[r, hits[0, 0]]) if len(hits) and hits[0, 0] < self.answer.shape[1] else 0
                if j >= self.right:
                    tok = (tok + 1) % self.config.vocab_size
                logits[r, j, tok] = 1.0
        return logits


def _prompts(seed: int, b: int = 3, s: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, V, (b, s), generator=g)
    m = torch.ones(b, s, dtype=torch.long)
    for r in range(1, b):  # left padding: prompts of different lengths
        m[r, : r + 1] = 0
    return x, m


SETTINGS = [(1.0, 1.0), (0.6, 1.0), (1.0, 0.7), (0.8, 0.9), (0.0, 1.0)]


def test_past_the_end_of_text_ptp_still_returns_the_ars_tokens(teacher, student):
    """stop_at_eot=False: rows go on past their end-of-text (a fixed number of tokens, for speed rows)."""
    for seed in range(3):
        x, m = _prompts(seed)
        kw = dict(attention_mask=m, stop_at_eot=False)
        ref, nfe = generate(teacher, x, 32, generator=torch.Generator().manual_seed(seed), **kw)
        out, _ = ptp_generate(student, teacher, x, 32, generator=torch.Generator().manual_seed(seed), **kw)
        assert torch.equal(out, ref) and nfe == 32
        assert ((ref[:, :-1] == EOT) & (ref[:, 1:] != EOT)).any()  # a row went on after an end-of-text


@pytest.mark.parametrize("temperature,top_p", SETTINGS)
def test_ptp_returns_the_ars_inverse_cdf_sample_token_for_token(teacher, student, temperature, top_p):
    ended_mid_row = 0
    for seed in range(6):
        x, m = _prompts(seed)
        kw = dict(temperature=temperature, top_p=top_p, attention_mask=m)
        ref, _ = generate(teacher, x, 32, generator=torch.Generator().manual_seed(seed), **kw)
        out, stats = ptp_generate(student, teacher, x, 32, generator=torch.Generator().manual_seed(seed), **kw)
        assert torch.equal(out, ref), (seed, temperature, top_p)
        assert stats.calls == 1 + 2 * stats.verify_calls
        ended_mid_row += int(((ref == EOT).float().argmax(1) < 31).sum())
    if temperature > 0:
        assert ended_mid_row > 0  # the comparison covered rows that end early


@pytest.mark.parametrize("right", [2, 6])  # right = 0: the untrained drafter above
def test_accepted_drafts_commit_several_tokens_per_call_and_stay_lossless(right):
    """A drafter right about its first ``right`` tokens: each verification commits right + 1 tokens."""
    torch.manual_seed(1)
    teacher = CausalLM(vocab_size=200, dim=32, depth=2, n_heads=4, max_seq_len=128).eval()  # few rows end
    oracle = OracleDrafter(**{k: v for k, v in teacher.config.items() if not k.startswith("_")},
                           draft_tokens=6).eval()
    for seed in range(4):
        x, m = _prompts(seed)
        kw = dict(attention_mask=m, temperature=0.9)
        ref, _ = generate(teacher, x, 30, generator=torch.Generator().manual_seed(seed), **kw)
        oracle.setup(draw_uniforms(3, 30, torch.Generator().manual_seed(seed)), ref, right)
        out, stats = ptp_generate(oracle, teacher, x, 30, generator=torch.Generator().manual_seed(seed), **kw)
        assert torch.equal(out, ref)
        # calls commit right + 1 tokens, but a row's last (cut by the length, or past its end-of-text,
        # where the oracle's answer is padding)
        assert stats.tokens_per_call.count(right + 1) >= 0.75 * len(stats.tokens_per_call)


def test_fewer_drafts_per_call_is_still_lossless(teacher, student):
    x, m = _prompts(5)
    ref, _ = generate(teacher, x, 25, generator=torch.Generator().manual_seed(5), attention_mask=m)
    for k in (1, 3):
        out, _ = ptp_generate(student, teacher, x, 25, draft_tokens=k, generator=torch.Generator().manual_seed(5),
                              attention_mask=m)
        assert torch.equal(out, ref)


def test_pick_inverts_the_cdf_and_the_interval_reproduces_the_token():
    torch.manual_seed(0)
    logits = torch.randn(200, 7) * 2
    for temperature, top_p in SETTINGS[:4]:
        probs = next_token_probs(logits, temperature, top_p)
        assert torch.allclose(probs.sum(-1), torch.ones(200, dtype=torch.float64))
        ids = pick(probs, torch.rand(200, dtype=torch.float64))
        assert (probs.gather(-1, ids[:, None]) > 0).all()  # never a token outside the nucleus
        low, high = token_interval(probs, ids)
        for frac in (0.0, 0.5, 0.999):
            assert torch.equal(pick(probs, low + frac * (high - low)), ids)
    # u ~ U[0, 1) draws each token with its probability
    probs = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64).expand(40000, 3)
    freq = torch.bincount(pick(probs, torch.rand(40000, dtype=torch.float64)), minlength=3) / 40000
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.01)


def test_a_completion_sees_its_context_and_earlier_positions_only(student):
    """The loss's layout: no u position can read the tokens it predicts."""
    torch.manual_seed(0)
    s, k = 20, student.config.draft_tokens
    ids = torch.randint(3, V, (2, s))
    starts = torch.tensor([3, 9])
    mask, positions = completion_layout(starts, s, k)
    u = torch.rand(2, 2 * k, dtype=torch.float64)
    base = student(ids, u, mask=mask, positions=positions)
    later = ids.clone()
    later[:, 10:] = (later[:, 10:] + 1) % V  # tokens after the second completion's context
    moved = student(later, u, mask=mask, positions=positions)
    assert torch.equal(base, moved)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % V  # in the second completion's context, after the first's
    moved = student(changed, u, mask=mask, positions=positions)
    assert torch.equal(base[:, :k], moved[:, :k]) and not torch.allclose(base[:, k:], moved[:, k:])
    u2 = u.clone()
    u2[:, 2] = 1 - u2[:, 2]  # the first completion's third u: its positions 0, 1 and the other completion keep
    moved = student(ids, u2, mask=mask, positions=positions)
    assert torch.equal(base[:, :2], moved[:, :2]) and torch.equal(base[:, k:], moved[:, k:])
    assert not torch.allclose(base[:, 2], moved[:, 2])


def test_distillation_loss_learns_the_teachers_picks(teacher):
    """A few steps on the teacher's own samples lower the loss and raise the accepted drafts."""
    torch.manual_seed(0)
    model = ParallelTokenPredictor.from_teacher(teacher, draft_tokens=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.full((16, 1), EOT)
    data, _ = generate(teacher, x, 47, generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": torch.cat([x, data], 1)}
    cfg = PTPLossConfig(completions=8)
    first = ptp_loss(model, batch, teacher=teacher, cfg=cfg)
    for _ in range(60):
        out = ptp_loss(model, batch, teacher=teacher, cfg=cfg)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss < 0.5 * first.loss
    assert out.metrics["accepted"] > first.metrics["accepted"] + 0.5


def test_bad_input_gets_typed_errors(teacher, student):
    x, _ = _prompts(0)
    for k in (0, -1, 7):
        with pytest.raises(InputError, match="draft_tokens"):
            ptp_generate(student, teacher, x, 8, draft_tokens=k)
    with pytest.raises(InputError, match="ParallelTokenPredictor"):
        ptp_generate(teacher, teacher, x, 8)  # an AR as the drafter
    with pytest.raises(InputError, match="CausalLM"):
        ptp_generate(student, student, x, 8)  # a PTP model as the verifier
    other = CausalLM(vocab_size=V + 5, dim=32, depth=2, n_heads=4, max_seq_len=128)
    with pytest.raises(InputError, match="vocab_size"):
        ptp_generate(student, other, x, 8)
    with pytest.raises(InputError, match="context"):
        ptp_generate(student, teacher, x, 200)
    with pytest.raises(InputError, match="top_p"):
        ptp_generate(student, teacher, x, 8, top_p=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_files):
    """A tiny AR and a PTP model distilled from it through the command line."""
    root = tmp_path_factory.mktemp("ptp")
    data = ["--data", str(synthetic_files / "train.jsonl"), "--valid", str(synthetic_files / "valid.jsonl")]
    small = ["--set", "model.dim=32", "--set", "model.depth=1", "--set", "train.batch_size=4",
             "--set", "data.seq_len=32"]
    assert main(["train", "ar", "--preset", "cpu-tiny", *small, "--set", "train.steps=4", *data,
                 "--tokenizer", str(synthetic_files / "tokenizer"), "--out", str(root / "ar")]) == 0
    assert main(["train", "ptp", "--preset", "cpu-tiny", "--set", "train.steps=3", "--set", "train.batch_size=4",
                 "--set", "data.seq_len=32", "--set", "model.draft_tokens=4", *data, "--teacher", str(root / "ar"),
                 "--out", str(root / "ptp")]) == 0
    return root


def test_a_trained_ptp_folder_generates_the_ars_text(trained, capsys, tmp_path):
    cfg = json.loads((trained / "ptp" / "config.json").read_text())
    assert cfg["_class_name"] == "ParallelTokenPredictor" and cfg["draft_tokens"] == 4
    lm = load_language_model(trained / "ptp")
    assert isinstance(lm, PTPAdapter) and lm.exact
    outs = []
    for folder in ("ar", "ptp"):
        capsys.readouterr()
        assert main(["generate", "--model", str(trained / folder), "once upon a time", "--num-samples-per-prompt", "3",
                     "--max-new-tokens", "20", "--seed", "4", "--top-p", "0.9"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    ar = load_language_model(trained / "ar")
    assert lm.nll(["the cat sat."]).nats_per_token == ar.nll(["the cat sat."]).nats_per_token  # its AR's
    # its training cost: the predictor trained, the teacher's forward paid by every step
    from latentlm.cost import run_cost

    ptp, ar_cost = run_cost(trained / "ptp"), run_cost(trained / "ar")
    assert ptp.kind == "ptp" and ptp.frozen_params == ar_cost.trained_params
    assert ptp.trained_params > 0 and ptp.flops_per_token > ar_cost.flops_per_token / 3  # at least its forward
    assert ptp.tokens == 3 * 4 * 32
    alone = shutil.copytree(trained / "ptp", tmp_path / "ptp", ignore=shutil.ignore_patterns("teacher"))
    with pytest.raises(CheckpointError, match="teacher/"):
        run_cost(alone)


def test_ptp_training_and_loading_reject_the_wrong_folders(trained, synthetic_files, tmp_path, tiny_tokenizer):
    data = ["--data", str(synthetic_files / "train.jsonl")]
    run = ["train", "ptp", "--preset", "cpu-tiny", "--set", "train.steps=1", *data, "--out", str(tmp_path / "x")]
    for teacher, message in ((trained / "ptp", "not an AR model"), (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(ConfigError, match=message):
            from latentlm.recipes import run_training

            run_training("ptp", data[1:], tmp_path / "x", preset="cpu-tiny", overrides=["train.steps=1"],
                         teacher=teacher, progress=False)
    assert main(run) == 2  # no --teacher: a clear error, no traceback
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match="not the tokenizer of the teacher"):
        run_training("ptp", data[1:], tmp_path / "x", preset="cpu-tiny", teacher=trained / "ar",
                     tokenizer=tmp_path / "tok", progress=False)
    with pytest.raises(ConfigError, match="--teacher is for PTP runs"):
        run_training("ar", data[1:], tmp_path / "x", preset="cpu-tiny", teacher=trained / "ar", progress=False)
    with pytest.raises(ConfigError, match="ParallelTokenPredictor"):  # a PTP folder used as an AR
        run_training("ar", data[1:], tmp_path / "x", preset="cpu-tiny", init_from=trained / "ptp", progress=False)
    import shutil

    broken = tmp_path / "no_teacher"
    shutil.copytree(trained / "ptp", broken)
    shutil.rmtree(broken / "teacher")
    with pytest.raises(CheckpointError, match="teacher"):
        load_language_model(broken)

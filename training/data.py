"""Packed training sequences from Parquet samples.

Each row is one sample: `doc_id` (provenance only, not read here), `input_ids` (without BOS/EOS)
and `loss_mask` (1 where the token belongs to an answer; read only for answer-only loss). The loader wraps each sample as BOS + input_ids + EOS, lays the samples of
a seeded shuffle end to end in one token stream and cuts it into sequences of seq_len + 1 tokens
that overlap by one, so every token is a target exactly once.

Per sequence the loader also gives each token's document index and its position within that
document (both restart at every BOS and at the sequence start; a sample cut by a sequence boundary
continues in the next sequence as a document without BOS). The model turns the document indices
into a block-diagonal causal attention mask and the positions into rotary angles.

Which targets count in the loss:
  * a BOS target never counts: it only ever follows an EOS and carries no information;
  * with all-token loss every other target counts, EOS included;
  * with answer-only loss a content token counts where its loss_mask is 1, and the EOS counts when
    the sample's last token does (the model learns to stop after an answer).

The shuffle is two-level so that a corpus larger than memory streams: row groups in a seeded
random order per epoch, and the rows of each row group in a seeded random order. One row group is
held at a time; write the files with modest row groups (thousands of rows) for a good mix.

A `DataPosition` (epoch, sample index in that epoch's order, tokens of the sample already used)
fully determines the rest of the stream, so a checkpoint that stores it resumes exactly.

The stream is endless unless `max_epochs` caps it: a run that trains for fewer tokens than one
epoch holds sees the start of the seeded shuffle, a seeded subset of whole samples (the last one
cut where the run ends); one that would need more than `max_epochs` passes is refused
(`DataExhausted`) instead of repeating data.

Under torchrun every rank packs the same global stream and keeps its own slice of each global
batch: the stored position is the same on all ranks, and a run may resume on another world size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist


class DataExhausted(RuntimeError):
    """The run needs more tokens than `max_epochs` passes over its data hold."""


@dataclass
class DataPosition:
    epoch: int = 0
    sample: int = 0
    offset: int = 0


@dataclass
class Batch:
    """Per sequence, all [batch, seq_len]: inputs, next-token targets, which targets count in the
    loss, each token's document index within its sequence and its position within its document."""

    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    document_ids: torch.Tensor
    positions: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def parquet_files(paths: list[str | Path]) -> list[Path]:
    """Every Parquet file named, or found recursively under a named directory, in sorted order."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("*.parquet")) if path.is_dir() else [path])
    if not files:
        raise FileNotFoundError(f"no Parquet files in {[str(p) for p in paths]}")
    return files


def _input_ids_column(parquet: pq.ParquetFile) -> int:
    """Index of the Parquet leaf column holding the `input_ids` values."""
    return next(
        i
        for i in range(parquet.metadata.num_columns)
        if parquet.schema.column(i).path.startswith("input_ids.")
    )


def max_token_id(paths: list[str | Path]) -> int:
    """The largest id in `input_ids`, from the Parquet statistics where written, else by reading."""
    largest = -1
    for file in parquet_files(paths):
        parquet = pq.ParquetFile(file)
        leaf = _input_ids_column(parquet)
        for group in range(parquet.metadata.num_row_groups):
            statistics = parquet.metadata.row_group(group).column(leaf).statistics
            if statistics is not None and statistics.has_min_max:
                largest = max(largest, int(statistics.max))
            else:
                ids = parquet.read_row_group(group, columns=["input_ids"]).column(0)
                values = ids.combine_chunks().values.to_numpy()
                largest = max(largest, int(values.max(initial=-1)))
    return largest


def stream_tokens(paths: list[str | Path]) -> int:
    """Tokens of one epoch's stream: every sample's ids plus its BOS and EOS. From the Parquet
    statistics where written (their count of non-null `input_ids` values), else by reading."""
    total = 0
    for file in parquet_files(paths):
        parquet = pq.ParquetFile(file)
        leaf = _input_ids_column(parquet)
        for group in range(parquet.metadata.num_row_groups):
            metadata = parquet.metadata.row_group(group)
            statistics = metadata.column(leaf).statistics
            if statistics is not None and statistics.num_values is not None:
                ids = statistics.num_values
            else:
                column = parquet.read_row_group(group, columns=["input_ids"]).column(0)
                ids = len(column.combine_chunks().values)
            total += ids + 2 * metadata.num_rows
    return total


def _distributed_rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _flat_lists(column) -> tuple[np.ndarray, np.ndarray]:
    """A list column as one flat int64 array and offsets starting at 0."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy()
    values = lists.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return values.astype(np.int64), offsets - offsets[0]


class PackedSequences:
    """An endless, deterministic, resumable stream of packed batches for this rank."""

    def __init__(
        self,
        paths: list[str | Path],
        seq_len: int,
        batch_size: int,
        bos_id: int,
        eos_id: int,
        answer_only_loss: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        max_epochs: int | None = None,
    ):
        self.seq_len, self.batch_size = seq_len, batch_size
        self.max_epochs = max_epochs
        self.bos_id, self.eos_id = bos_id, eos_id
        self.answer_only_loss, self.seed = answer_only_loss, seed
        default_rank, default_size = _distributed_rank_and_size()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_size if world_size is None else world_size
        self.row_groups: list[tuple[Path, int, int]] = []
        for file in parquet_files(paths):
            metadata = pq.read_metadata(file)
            self.row_groups += [
                (file, group, metadata.row_group(group).num_rows)
                for group in range(metadata.num_row_groups)
            ]
        self.samples_per_epoch = sum(rows for _, _, rows in self.row_groups)
        if self.samples_per_epoch == 0:
            raise ValueError("the Parquet files hold no samples")
        self.position = DataPosition()
        self._epoch_order: tuple[int, np.ndarray, np.ndarray] | None = None
        self._loaded: tuple[int, int, tuple[np.ndarray, ...]] | None = None

    @property
    def samples_seen(self) -> int:
        """Samples the stream has reached so far, the one it is in included."""
        return self.position.epoch * self.samples_per_epoch + self.position.sample + 1

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = DataPosition(**state)

    def _group_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's row-group order and where each group's rows start in the epoch."""
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.row_groups))
            rows = np.array([self.row_groups[g][2] for g in order])
            self._epoch_order = (epoch, order, np.concatenate([[0], np.cumsum(rows)]))
        return self._epoch_order[1], self._epoch_order[2]

    def _load_group(self, epoch: int, group: int) -> tuple[np.ndarray, ...]:
        """(ids, masks, offsets, row order) of one row group, its rows shuffled per epoch."""
        if self._loaded is None or self._loaded[:2] != (epoch, group):
            file, index, rows = self.row_groups[group]
            columns = ["input_ids", "loss_mask"] if self.answer_only_loss else ["input_ids"]
            table = pq.ParquetFile(file).read_row_group(index, columns=columns)
            ids, offsets = _flat_lists(table.column("input_ids"))
            masks = None
            if self.answer_only_loss:
                masks, mask_offsets = _flat_lists(table.column("loss_mask"))
                if not np.array_equal(mask_offsets, offsets):
                    raise ValueError(f"{file}: loss_mask and input_ids differ in length")
            row_order = np.random.default_rng([self.seed, epoch, group]).permutation(rows)
            self._loaded = (epoch, group, (ids, masks, offsets, row_order))
        return self._loaded[2]

    def _sample(self, epoch: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (BOS + ids + EOS) of one sample and whether each counts as a target."""
        order, starts = self._group_order(epoch)
        slot = int(np.searchsorted(starts, sample, side="right")) - 1
        ids, masks, offsets, row_order = self._load_group(epoch, int(order[slot]))
        row = row_order[sample - starts[slot]]
        span = slice(offsets[row], offsets[row + 1])
        tokens = np.concatenate([[self.bos_id], ids[span], [self.eos_id]])
        if self.answer_only_loss:
            answer = masks[span].astype(bool)
            eos_counts = bool(answer[-1]) if len(answer) else False
            flags = np.concatenate([[False], answer, [eos_counts]])
        else:
            flags = np.concatenate([[False], np.ones(len(tokens) - 1, dtype=bool)])
        return tokens, flags

    def _next_sequence(self) -> tuple[np.ndarray, np.ndarray]:
        """seq_len + 1 tokens and flags from the stream; the position moves to their last token,
        which starts the next sequence."""
        needed = self.seq_len + 1
        epoch, sample, offset = self.position.epoch, self.position.sample, self.position.offset
        token_pieces, flag_pieces = [], []
        while True:
            tokens, flags = self._sample(epoch, sample)
            end = min(len(tokens), offset + needed)
            token_pieces.append(tokens[offset:end])
            flag_pieces.append(flags[offset:end])
            needed -= end - offset
            if needed == 0:
                self.position = DataPosition(epoch, sample, end - 1)
                return np.concatenate(token_pieces), np.concatenate(flag_pieces)
            sample, offset = sample + 1, 0
            if sample == self.samples_per_epoch:
                epoch, sample = epoch + 1, 0
                if self.max_epochs is not None and epoch >= self.max_epochs:
                    raise DataExhausted(
                        f"the data ran out after {self.max_epochs} epoch(s) of "
                        f"{self.samples_per_epoch:,} samples; more would repeat them"
                    )

    def next_batch(self) -> Batch:
        """This rank's `batch_size` sequences of the next global batch (world_size × batch_size
        sequences of the shared stream)."""
        sequences = [self._next_sequence() for _ in range(self.world_size * self.batch_size)]
        mine = sequences[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        window = np.stack([tokens for tokens, _ in mine])
        counts = np.stack([flags for _, flags in mine])
        tokens = window[:, :-1]
        index = np.broadcast_to(np.arange(self.seq_len), tokens.shape)
        starts_document = tokens == self.bos_id
        starts_document[:, 0] = True
        document_start = np.maximum.accumulate(np.where(starts_document, index, 0), axis=1)
        return Batch(
            tokens=torch.from_numpy(tokens.copy()),
            targets=torch.from_numpy(window[:, 1:].copy()),
            loss_mask=torch.from_numpy(counts[:, 1:].copy()),
            document_ids=torch.from_numpy(np.cumsum(starts_document, axis=1) - 1),
            positions=torch.from_numpy(index - document_start),
        )

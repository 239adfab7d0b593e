"""P x K identity sampler for metric-learning losses (e.g. batch-hard triplet)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import Sampler

from reid.errors import ConfigError


class PKSampler(Sampler[int]):
    """Yield dataset indices in groups of ``p * k``: ``p`` distinct identities, ``k`` images each.

    Use with ``DataLoader(batch_size=p * k, drop_last=True, sampler=sampler)``.

    One epoch cuts every identity's (shuffled) images into chunks of ``k`` (identities
    with fewer than ``k`` images are sampled with replacement up to ``k``) and yields
    ``sum(chunks) // p`` batches. Each batch picks ``p`` identities without replacement,
    weighted by their remaining chunks (see :meth:`_pick`), so every chunk is used when
    the numbers allow; when fewer than ``p`` identities have chunks left, the exhausted
    ones are re-chunked. The epoch length is therefore fixed and known in advance.

    Randomness comes only from ``numpy.random.default_rng([seed, epoch])``: call
    :meth:`set_epoch` before every epoch (iterating does not advance it), and save
    :meth:`state_dict` with the checkpoint to resume the same sequence.

    ``p * k`` is the *global* batch. With ``num_replicas`` processes, every one draws
    the same global sequence and yields the ``rank``-th of ``num_replicas`` equal
    slices of each batch (use ``batch_size=p * k // num_replicas``): the ranks see
    distinct images, together exactly the batches of one process, and the state (and
    so a checkpoint) does not depend on the number of processes.
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        if int(p) < 1 or int(k) < 1:
            raise ValueError(f"PKSampler: p={p!r}, k={k!r}: expected both to be integers >= 1")
        if int(seed) < 0:
            raise ValueError(f"PKSampler: seed={seed!r} is invalid: expected an integer >= 0")
        if not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"PKSampler: rank={rank!r}, num_replicas={num_replicas!r}: expected 0 <= rank < "
                             "num_replicas")
        if (int(p) * int(k)) % int(num_replicas):
            raise ConfigError(
                f"data.p={p} x data.k={k} = {int(p) * int(k)} images per batch cannot be split evenly over "
                f"{num_replicas} processes; the batch is global, so choose p x k divisible by the process count"
            )
        self.p = int(p)
        self.k = int(k)
        self.seed = int(seed)
        self.epoch = 0
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.rank_batch_size = self.p * self.k // self.num_replicas
        groups: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            groups.setdefault(int(pid), []).append(index)
        if len(groups) < self.p:
            raise ConfigError(
                f"data.p={self.p}: a batch needs p distinct identities but the training set has {len(groups)}; "
                "lower data.p or use a dataset with more identities"
            )
        self._groups = [np.asarray(groups[pid], dtype=np.int64) for pid in sorted(groups)]
        total_chunks = sum(max(1, len(g) // self.k) for g in self._groups)
        self._num_batches = max(1, total_chunks // self.p)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration yields."""
        if int(epoch) < 0:
            raise ValueError(f"PKSampler.set_epoch: epoch={epoch!r} is invalid: expected an integer >= 0")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._num_batches * self.rank_batch_size

    def _chunks(self, rng: np.random.Generator, group: np.ndarray) -> list[np.ndarray]:
        if len(group) < self.k:
            picked = rng.choice(group, size=self.k, replace=True)
        else:
            picked = rng.permutation(group)
        n_chunks = len(picked) // self.k
        return [picked[i * self.k : (i + 1) * self.k] for i in range(n_chunks)]

    def _pick(self, rng: np.random.Generator, counts: np.ndarray, batches_left: int) -> np.ndarray:
        """Choose ``p`` identities for one batch.

        Identities with at least as many chunks as batches left must be taken now or
        they cannot be used up; the rest are drawn weighted by their remaining chunks.
        This uses every chunk whenever the total is a multiple of ``p`` and no identity
        has more chunks than there are batches.
        """
        forced = np.flatnonzero(counts >= batches_left)
        if len(forced) >= self.p:
            weights = counts[forced] / counts[forced].sum()
            return rng.choice(forced, size=self.p, replace=False, p=weights)
        others = np.flatnonzero((counts > 0) & (counts < batches_left))
        weights = counts[others] / counts[others].sum()
        extra = rng.choice(others, size=self.p - len(forced), replace=False, p=weights)
        return rng.permutation(np.concatenate([forced, extra]))

    def _epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues = [self._chunks(rng, group) for group in self._groups]
        batches: list[np.ndarray] = []
        for batch in range(self._num_batches):
            counts = np.array([len(q) for q in queues], dtype=np.float64)
            if np.count_nonzero(counts) < self.p:
                for ident, queue in enumerate(queues):
                    if not queue:
                        queue.extend(self._chunks(rng, self._groups[ident]))
                counts = np.array([len(q) for q in queues], dtype=np.float64)
            chosen = self._pick(rng, counts, self._num_batches - batch)
            batches.extend(queues[ident].pop() for ident in chosen)
        return np.concatenate(batches)

    def __iter__(self) -> Iterator[int]:
        batches = self._epoch_indices().reshape(self._num_batches, self.p * self.k)
        start = self.rank * self.rank_batch_size
        return iter(batches[:, start:start + self.rank_batch_size].reshape(-1).tolist())

    def state_dict(self) -> dict[str, Any]:
        """Plain-int state (JSON/torch.save friendly) needed to reproduce the sequence."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "p": self.p,
            "k": self.k,
            "num_indices": self._num_batches * self.p * self.k,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore seed and epoch; refuses a state saved for a different p/k/dataset."""
        missing = [key for key in ("seed", "epoch") if key not in state]
        if missing:
            raise ValueError(
                f"PKSampler.load_state_dict: state lacks keys {missing}: expected {sorted(self.state_dict())}"
            )
        for key, value in (("p", self.p), ("k", self.k), ("num_indices", self._num_batches * self.p * self.k)):
            if key in state and int(state[key]) != value:
                raise ValueError(
                    f"PKSampler.load_state_dict: saved {key}={state[key]} but this sampler has "
                    f"{key}={value}: the checkpoint was made with a different sampler or dataset"
                )
        if int(state["seed"]) < 0 or int(state["epoch"]) < 0:
            raise ValueError(f"PKSampler.load_state_dict: seed/epoch must be >= 0, got {state}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


class DrawKey(NamedTuple):
    """A dataset index with what its augmentation is drawn from: (seed, epoch, place in the epoch's global batches)."""

    index: int
    seed: int
    epoch: int
    position: int


class KeyedPKSampler(PKSampler):
    """A :class:`PKSampler` that yields a :class:`DrawKey` per image instead of the bare index.

    The position counts over the global batches (``p * k`` per batch, every rank's slice included), so an image's
    augmentation depends on (seed, epoch, position) alone: not on the loader worker, the pipeline, a resume, or
    the number of processes.
    """

    def __iter__(self) -> Iterator[DrawKey]:  # type: ignore[override]
        global_batch = self.p * self.k
        batches = self._epoch_indices().reshape(self._num_batches, global_batch)
        start = self.rank * self.rank_batch_size
        for batch, row in enumerate(batches):
            for offset in range(start, start + self.rank_batch_size):
                yield DrawKey(int(row[offset]), self.seed, self.epoch, batch * global_batch + offset)

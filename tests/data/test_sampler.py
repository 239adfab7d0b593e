import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from reid.data import PKSampler
from reid.errors import ConfigError

# 9 identities with 1..9 images: identities below k must be sampled with replacement
PIDS = [pid for pid in range(9) for _ in range(pid + 1)]


def _batches(sampler: PKSampler) -> list[list[int]]:
    indices = list(sampler)
    size = sampler.p * sampler.k
    assert len(indices) == len(sampler) and len(indices) % size == 0
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def test_batches_hold_p_identities_with_k_images() -> None:
    sampler = PKSampler(PIDS, p=3, k=4, seed=1)
    # chunks per identity: max(1, n // 4) -> 1,1,1,1,1,1,1,2,2 = 11 -> 11 // 3 = 3 batches
    assert len(sampler) == 3 * 12
    for batch in _batches(sampler):
        counts = Counter(PIDS[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}


def test_every_identity_and_image_is_covered() -> None:
    pids = [pid for pid in range(20) for _ in range(8)]
    sampler = PKSampler(pids, p=4, k=4)
    assert len(sampler) == 160
    indices = list(sampler)
    assert sorted(indices) == list(range(160))


def test_with_dataloader() -> None:
    dataset = TensorDataset(torch.arange(len(PIDS)), torch.tensor(PIDS))
    sampler = PKSampler(PIDS, p=2, k=3)
    loader = DataLoader(dataset, batch_size=6, sampler=sampler, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(sampler) // 6
    for _, pids in batches:
        assert sorted(Counter(pids.tolist()).values()) == [3, 3]


def test_deterministic_per_epoch_without_global_rng() -> None:
    sampler = PKSampler(PIDS, p=3, k=2, seed=5)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    np.random.seed(123)
    torch.manual_seed(123)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    other = PKSampler(PIDS, p=3, k=2, seed=5)
    other.set_epoch(1)
    assert list(other) == epoch1
    different_seed = PKSampler(PIDS, p=3, k=2, seed=6)
    different_seed.set_epoch(1)
    assert list(different_seed) != epoch1


def test_state_round_trip() -> None:
    sampler = PKSampler(PIDS, p=3, k=2, seed=7)
    sampler.set_epoch(4)
    state = sampler.state_dict()
    assert all(type(v) is int for v in state.values())
    state = json.loads(json.dumps(state))
    restored = PKSampler(PIDS, p=3, k=2, seed=0)
    restored.load_state_dict(state)
    assert restored.epoch == 4 and restored.seed == 7
    assert list(restored) == list(sampler)
    with pytest.raises(ValueError, match="saved k=2 but this sampler has k=3"):
        PKSampler(PIDS, p=3, k=3).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks keys"):
        restored.load_state_dict({"p": 3})


def test_errors() -> None:
    with pytest.raises(ConfigError, match="data.p=10: a batch needs p distinct identities but the training set has 9"):
        PKSampler(PIDS, p=10, k=2)
    with pytest.raises(ValueError, match="p=0"):
        PKSampler(PIDS, p=0, k=2)
    with pytest.raises(ValueError, match="k=0"):
        PKSampler(PIDS, p=2, k=0)
    with pytest.raises(ValueError, match="epoch=-1"):
        PKSampler(PIDS, p=2, k=2).set_epoch(-1)


def test_ranks_take_equal_slices_of_the_global_batches() -> None:
    whole = _batches(PKSampler(PIDS, p=3, k=4, seed=2))
    ranks = [PKSampler(PIDS, p=3, k=4, seed=2, num_replicas=3, rank=r) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(0)
        assert len(sampler) == len(whole) * 4 and sampler.rank_batch_size == 4
    slices = [list(sampler) for sampler in ranks]
    # Step by step the ranks' slices, in rank order, are the single process's batch.
    rebuilt = [sum((s[b * 4:(b + 1) * 4] for s in slices), []) for b in range(len(whole))]
    assert rebuilt == whole
    # The saved state does not depend on the number of processes: a checkpoint resumes under any count.
    single = PKSampler(PIDS, p=3, k=4, seed=0)
    single.load_state_dict(ranks[1].state_dict())
    assert single.seed == 2


def test_a_global_batch_that_does_not_split_evenly_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data.p=3 x data.k=3 = 9 images per batch cannot be split evenly over 2"):
        PKSampler(PIDS, p=3, k=3, num_replicas=2, rank=0)


def test_keyed_sampler_numbers_the_global_sequence_the_same_for_any_process_count() -> None:
    from reid.data import DrawKey, KeyedPKSampler

    single = KeyedPKSampler(PIDS, p=2, k=4, seed=3)
    single.set_epoch(2)
    keys = list(single)
    plain = PKSampler(PIDS, p=2, k=4, seed=3)
    plain.set_epoch(2)
    assert [key.index for key in keys] == list(plain)
    assert [key.position for key in keys] == list(range(len(keys)))
    assert {(key.seed, key.epoch) for key in keys} == {(3, 2)}
    ranks = [KeyedPKSampler(PIDS, p=2, k=4, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    per_rank = [list(sampler) for sampler in ranks]
    merged = [key for batch in range(len(keys) // 8) for keys_of_rank in per_rank
              for key in keys_of_rank[batch * 4:(batch + 1) * 4]]
    assert merged == keys and isinstance(merged[0], DrawKey)

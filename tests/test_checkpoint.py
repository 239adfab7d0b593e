"""Safe loading and atomic saving: corrupt files, pickled code and wrong architectures give clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from reid.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    load_model_file,
    safe_load,
    save_model_file,
)
from reid.errors import CheckpointError


def small_model(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Linear(8, num_classes))


ARCH = {"backbone": "resnet18", "head": "reid.models.heads.BNNeckHead", "feature_dim": 512, "num_classes": 5}


def test_model_file_round_trip(tmp_path):
    model = small_model()
    save_model_file(tmp_path / "m.pth", model, ARCH, {"epoch": 3})
    other = small_model()
    nn.init.zeros_(other[0].weight)
    meta = load_model_file(tmp_path / "m.pth", other, ARCH)
    assert meta == {"epoch": 3}
    assert torch.equal(other[0].weight, model[0].weight)


def test_truncated_file_names_the_file_and_the_previous_checkpoint(tmp_path):
    path = tmp_path / "best_model.pth"
    save_model_file(path, small_model(), ARCH, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message and "truncated or corrupt" in message and "previous checkpoint" in message


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Path(__file__).parent}/.pwned",))


def test_a_file_that_pickles_code_is_refused_and_nothing_runs(tmp_path):
    marker = Path(__file__).parent / ".pwned"
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth.*pickled python objects"):
        safe_load(path)
    assert not marker.exists()


def test_another_num_classes_is_one_clear_error(tmp_path):
    path = tmp_path / "m.pth"
    save_model_file(path, small_model(7), {**ARCH, "num_classes": 7}, {})
    with pytest.raises(CheckpointError) as info:
        load_model_file(path, small_model(5), ARCH)
    message = str(info.value)
    assert "different model" in message and "num_classes: file has 7, this model has 5" in message
    assert message.count("\n") == 0


def test_another_architecture_is_one_clear_error(tmp_path):
    path = tmp_path / "m.pth"
    save_model_file(path, small_model(), {**ARCH, "backbone": "resnet50", "feature_dim": 2048}, {})
    with pytest.raises(CheckpointError, match="backbone: file has 'resnet50', this model has 'resnet18'"):
        load_model_file(path, small_model(), ARCH)


def test_plain_state_dict_with_wrong_shapes_is_summarised(tmp_path):
    path = tmp_path / "raw.pth"
    torch.save(small_model(9).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit this model: 2 tensors differ in shape"):
        load_model_file(path, small_model(5), ARCH)


def test_atomic_write_keeps_the_previous_file_when_the_write_fails(tmp_path):
    path = tmp_path / "record.txt"
    atomic_write_text(path, "good")

    def broken(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    from reid.checkpoint import atomic_write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["record.txt"]


def test_atomic_torch_save_replaces_the_file(tmp_path):
    path = tmp_path / "c.pth"
    atomic_torch_save({"a": torch.ones(2)}, path)
    atomic_torch_save({"a": torch.zeros(2)}, path)
    assert torch.equal(safe_load(path)["a"], torch.zeros(2))

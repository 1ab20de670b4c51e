"""Units under resume: the replay archive round trip, atomic writes, which overrides a resume accepts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from hwm.checkpoints.io import CheckpointError, atomic_torch_save, atomic_write, read_checkpoint
from hwm.checkpoints.replay_archive import ReplayArchive
from hwm.checkpoints.validate import config_changes, is_safe, split_changes
from hwm.data.replay import add_rows, make_replay_buffer, sample_sequences

CAPACITY, SEQ = 12, 3


def _steps(start: int, n: int, episode: int = 5) -> TensorDict:
    """n replay rows numbered from ``start`` in episodes of ``episode`` rows."""
    idx = torch.arange(start, start + n)
    return TensorDict(
        {
            "action": idx.float().unsqueeze(-1),
            "pixels": (idx % 255).to(torch.uint8).view(-1, 1, 1, 1).expand(n, 3, 2, 2).clone(),
            "is_first": (idx % episode == 0).unsqueeze(-1),
            "is_last": (idx % episode == episode - 1).unsqueeze(-1),
        },
        batch_size=[n],
    )


def _filled(sizes: list[int], archive_dir: Path | None = None) -> tuple:
    buffer = make_replay_buffer(capacity=CAPACITY, batch_size=2, seq_len=SEQ)
    archive = ReplayArchive(buffer, CAPACITY, index=buffer.sampler)
    start, manifest = 0, []
    for n in sizes:
        add_rows(buffer, _steps(start, n))
        start += n
        if archive_dir is not None:
            manifest = archive.save(archive_dir)
    return buffer, archive, manifest


@pytest.mark.parametrize(
    "sizes", [[4, 3], [7, 9, 8], [30], [5, 5, 5, 5, 5]], ids=["partial", "wrapped", "big", "many"]
)
def test_archive_round_trip(tmp_path: Path, sizes: list[int]) -> None:
    buffer, archive, manifest = _filled(sizes, tmp_path)
    restored = make_replay_buffer(capacity=CAPACITY, batch_size=2, seq_len=SEQ)
    ReplayArchive(restored, CAPACITY, index=restored.sampler).restore(
        tmp_path, manifest, int(buffer.write_count)
    )

    assert len(restored) == len(buffer)
    assert restored.writer.state_dict() == buffer.writer.state_dict()
    n = len(buffer)
    original, copy = buffer.storage.get(torch.arange(n)), restored.storage.get(torch.arange(n))
    for key in ("action", "pixels", "is_first", "is_last"):
        assert torch.equal(original.get(key), copy.get(key)), key
    # Same storage layout, same windows and RNG -> the same sequences are sampled.
    assert torch.equal(buffer.sampler.weights, restored.sampler.weights)
    torch.manual_seed(3)
    a = sample_sequences(buffer, 2, SEQ)
    torch.manual_seed(3)
    b = sample_sequences(restored, 2, SEQ)
    assert torch.equal(a["action"], b["action"])
    # Writing continues at the same ring position.
    add_rows(buffer, _steps(sum(sizes), 2))
    add_rows(restored, _steps(sum(sizes), 2))
    assert torch.equal(
        buffer.storage.get(torch.arange(len(buffer)))["action"],
        restored.storage.get(torch.arange(len(restored)))["action"],
    )


def test_archive_writes_only_new_transitions_and_forgets_evicted_ones(tmp_path: Path) -> None:
    _, archive, manifest = _filled([5, 5, 5, 5], tmp_path)  # 20 written, capacity 12: 8..19 are kept
    assert [(c["start"], c["end"]) for c in manifest] == [(5, 10), (10, 15), (15, 20)]
    assert all(c["end"] > 20 - CAPACITY for c in manifest)
    sizes = [(tmp_path / c["file"]).stat().st_size for c in manifest]
    assert sizes[1] == sizes[2]  # each save wrote 5 transitions, not the whole buffer


def test_archive_rejects_gaps_and_damage(tmp_path: Path) -> None:
    buffer, _, manifest = _filled([6, 6], tmp_path)
    count = int(buffer.write_count)
    with pytest.raises(CheckpointError, match="missing"):
        ReplayArchive.verify(tmp_path, manifest[1:], count, CAPACITY)
    with pytest.raises(CheckpointError, match="end at transition"):
        ReplayArchive.verify(tmp_path, manifest[:1], count, CAPACITY)
    path = tmp_path / manifest[1]["file"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        ReplayArchive.verify(tmp_path, manifest, count, CAPACITY)


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "x.ckpt"
    atomic_torch_save({"v": 1}, target)

    def dies_halfway(f) -> None:
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, dies_halfway)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.ckpt"]  # no temporary file left behind


def test_read_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "none.ckpt")
    with pytest.raises(CheckpointError, match="is not a file"):
        read_checkpoint(tmp_path)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "empty.ckpt")


@pytest.mark.parametrize(
    ("key", "safe"),
    [
        ("data.total_frames", True),
        ("data.eval_every", True),
        ("model.log_every", True),
        ("model.compile", True),
        ("checkpoint.every_minutes", True),
        ("trainer.precision", True),
        ("trainer.logger.init_args.tracking_uri", True),
        ("model.world_model.init_args.deter", False),
        ("model.harmonizer_mode", False),
        ("data.batch_size", False),
        ("data.capacity", False),
        ("data.task", False),
        ("seed_everything", False),
        ("trainer.devices", False),
        ("trainer.logger.init_args.experiment_name", False),
    ],
)
def test_override_classification(key: str, safe: bool) -> None:
    assert is_safe(key) is safe


def test_config_changes_lists_leaves() -> None:
    old = {"data": {"total_frames": 400, "seed": 0}, "model": {"world_model": {"init_args": {"deter": 32}}}}
    new = {
        "data": {"total_frames": 800, "seed": 0},
        "model": {"world_model": {"init_args": {"deter": 64}}},
        "config": ["a.yaml"],
    }
    changes = config_changes(old, new)
    assert changes == [("data.total_frames", 400, 800), ("model.world_model.init_args.deter", 32, 64)]
    applied, rejected = split_changes(changes)
    assert [c[0] for c in applied] == ["data.total_frames"]
    assert [c[0] for c in rejected] == ["model.world_model.init_args.deter"]

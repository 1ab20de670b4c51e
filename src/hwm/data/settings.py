"""The checks on ``data.*`` settings that need no env: a bad value is one line (exit 2) before anything is
built."""

from __future__ import annotations

from collections.abc import Mapping


def check_settings(
    *,
    total_frames: int,
    batch_size: int,
    seq_len: int,
    num_envs: int,
    eval_envs: int,
    train_ratio: float,
    cross_episodes: bool,
    time_limit: int,
    action_repeat: int,
    from_pixels: bool,
    image_size: int,
    non_negative: Mapping[str, float],
) -> None:
    """Raises ValueError naming the ``data.*`` key of the first value out of range."""
    positive = {
        "total_frames": total_frames,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "num_envs": num_envs,
        "eval_envs": eval_envs,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"data.{name} must be >= 1; got {value}")
    if train_ratio <= 0:
        raise ValueError(f"data.train_ratio must be > 0; got {train_ratio}")
    if not cross_episodes and time_limit // action_repeat + 1 < seq_len:
        raise ValueError(
            f"data.seq_len ({seq_len}) is longer than an episode ({time_limit} frames / action_repeat "
            f"{action_repeat} = {time_limit // action_repeat} steps, plus the reset observation): no "
            "sequence could ever be sampled (data.cross_episodes: true lets windows span episodes)"
        )
    if from_pixels and image_size != 64:
        raise ValueError(
            f"data.image_size must be 64 for pixels (the DreamerV2 CNN's input); got {image_size}"
        )
    for key, amount in non_negative.items():
        if amount < 0:
            raise ValueError(f"data.{key} must be >= 0; got {amount}")

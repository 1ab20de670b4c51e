"""Evaluation media as GIFs (the MLflow UI shows them inline): an episode, and open-loop imagination.

The open-loop video is DreamerV2's "openl" view: the world model filters a few real frames (``context``),
then imagines the rest of the episode from the real actions alone, decoded beside the real frames and
their difference. It shows at a glance what the model has (and hasn't) learned about the dynamics.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from hwm.models.world_model import WorldModel


@dataclass(frozen=True)
class EvalEpisode:
    """A recorded evaluation episode: observations o_0 .. o_T [T + 1, C, H, W] uint8 and the actions
    a_0 .. a_{T-1} [T, A] between them, at ``env_frames`` into the run."""

    frames: Tensor
    action: Tensor
    env_frames: int


def to_hwc(frames: np.ndarray | Tensor) -> np.ndarray:
    """[T, C, H, W] uint8 -> [T, H, W, 3] uint8 (grey repeated to RGB)."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    assert arr.ndim == 4, f"frames {arr.shape}: expected [T, C, H, W]"
    arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def write_gif(frames: np.ndarray, path: Path, *, fps: float = 15.0, scale: int = 2) -> Path:
    """[T, H, W, 3] uint8 frames -> an endlessly looping GIF, each pixel ``scale`` x ``scale``."""
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, frames.shape
    # Imported here: only GIFs need pillow, and the GPU wheelhouse (tools/wheelhouse.py) leaves it out.
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    if scale > 1:
        size = (frames.shape[2] * scale, frames.shape[1] * scale)
        images = [im.resize(size, Image.Resampling.NEAREST) for im in images]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=False
    )
    return path


@torch.no_grad()
def open_loop(world_model: WorldModel, obs: Tensor, action: Tensor, *, context: int = 5) -> np.ndarray:
    """Real | model | difference frames [T, H, 3W, 3] of an episode's first T observations.

    ``obs`` [T, C, H, W] uint8 are o_0 .. o_{T-1} from the reset on, ``action`` [T - 1, A] the actions taken
    between them. The first ``context`` model frames are reconstructions of the filtered posterior (from
    the reset, as the replay's steps are), the rest are imagined with the prior from the real actions only.
    """
    T = obs.shape[0]
    assert action.shape[0] == T - 1, f"action {tuple(action.shape)} vs obs {tuple(obs.shape)}"
    assert obs.shape[1:] == world_model.obs_shape, f"obs {tuple(obs.shape)} vs {world_model.obs_shape}"
    context = max(1, min(context, T))
    device = next(world_model.parameters()).device
    act = action.to(device, torch.get_default_dtype())
    # Step t of the replay's layout holds the action before o_t: zeros at the reset.
    prev_action = torch.cat([torch.zeros_like(act[:1]), act]).unsqueeze(0)
    is_first = torch.zeros(1, T, 1, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    embed = world_model.encode(obs.to(device).unsqueeze(0)[:, :context])
    post = world_model.rssm.observe(embed, prev_action[:, :context], is_first[:, :context])
    feats = [world_model.feat((post["deter"], post["stoch"]))]
    state = (post["deter"][:, -1], post["stoch"][:, -1])
    for t in range(context, T):
        state, _ = world_model.rssm.img_step(state, prev_action[:, t])
        feats.append(world_model.feat(state).unsqueeze(1))
    pred = world_model.decoder(torch.cat(feats, 1)).float()  # [1, T, C, H, W], centred at 0
    model = ((pred[0] + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    real = obs.cpu()
    diff = ((real.float() - model.float()).abs()).clamp(0, 255).to(torch.uint8)
    return np.concatenate([to_hwc(real), to_hwc(model), to_hwc(diff)], axis=2)


def render_evaluation(
    world_model: WorldModel, episode: EvalEpisode, out_dir: Path, *, context: int = 5, length: int = 50
) -> list[Path]:
    """Writes ``eval_episode_<frames>.gif`` and ``open_loop_<frames>.gif`` for a recorded evaluation.

    The open loop covers the episode's first ``length`` steps (DreamerV2's view: 5 filtered, 45 imagined).
    """
    frames = int(episode.env_frames)
    paths = [write_gif(to_hwc(episode.frames), out_dir / f"eval_episode_{frames:09d}.gif")]
    if episode.action.shape[0] >= context:
        obs = episode.frames[:length]
        grid = open_loop(world_model, obs, episode.action[: obs.shape[0] - 1], context=context)
        paths.append(write_gif(grid, out_dir / f"open_loop_{frames:09d}.gif", fps=8))
    return paths


def log_media(logger: MLFlowLogger, world_model: WorldModel, recorded: list[EvalEpisode]) -> None:
    """Renders recorded evaluation episodes as GIF artifacts under ``media/`` of the logger's run."""
    with tempfile.TemporaryDirectory() as tmp:
        for episode in recorded:
            for path in render_evaluation(world_model, episode, Path(tmp)):
                try:
                    logger.experiment.log_artifact(logger.run_id, str(path), "media")
                except Exception as exc:  # a tracking outage costs a video, never the run
                    rank_zero_warn(f"hwm: evaluation video {path.name} not logged (tracking store: {exc})")

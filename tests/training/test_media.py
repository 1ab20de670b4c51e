"""Open-loop video: the model half sees real frames only in its context, then imagines from actions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hwm.models.world_model import WorldModel
from hwm.training.media import EvalEpisode, open_loop, render_evaluation

T, CONTEXT, A = 12, 4, 2


def _model() -> WorldModel:
    torch.manual_seed(0)
    wm = WorldModel(
        (3, 64, 64), A, deter=16, hidden=16, stoch=4, classes=4, cnn_depth=4, mlp_units=16, mlp_layers=1
    )
    # Untrained, the posterior barely depends on the frame and the CNN decoder on the latent: a sharper
    # posterior and a linear decoder make every latent visible in the picture.
    with torch.no_grad():
        for module in (wm.rssm.post_in_embed, wm.rssm.post_out):
            for p in module.parameters():
                p.mul_(10.0)
    feat = wm.rssm.feat_dim
    wm.decoder = torch.nn.Sequential(torch.nn.Linear(feat, 3 * 64 * 64), torch.nn.Unflatten(-1, (3, 64, 64)))
    return wm


def _grid(wm: WorldModel, obs: torch.Tensor, action: torch.Tensor) -> np.ndarray:
    torch.manual_seed(1)  # the latents are sampled: same draws for both calls
    return open_loop(wm, obs, action, context=CONTEXT)


def test_open_loop_imagines_from_actions_after_the_context(one_torch_thread_seeded) -> None:
    wm = _model()
    obs = torch.randint(0, 256, (T, 3, 64, 64), dtype=torch.uint8)  # o_0 (the reset) .. o_{T-1}
    action = torch.rand(T - 1, A) * 2 - 1
    grid = _grid(wm, obs, action)
    assert grid.shape == (T, 64, 3 * 64, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid[:, :, :64], obs.permute(0, 2, 3, 1).numpy())  # left: the real frames
    model = grid[:, :, 64:128]
    late = obs.clone()
    late[CONTEXT:] = 255 - late[CONTEXT:]
    assert np.array_equal(_grid(wm, late, action)[:, :, 64:128], model)  # frames after the context unseen
    early = obs.clone()
    early[:CONTEXT] = 255 - early[:CONTEXT]
    changed = _grid(wm, early, action)[:, :, 64:128]
    assert not np.array_equal(changed[CONTEXT:], model[CONTEXT:])  # the imagination starts from the context
    other = action.flip(0)
    assert not np.array_equal(_grid(wm, obs, other)[CONTEXT:, :, 64:128], model[CONTEXT:])


def test_render_evaluation_writes_gifs(tmp_path: Path, one_torch_thread_seeded) -> None:
    frames = torch.randint(0, 256, (T + 1, 3, 64, 64), dtype=torch.uint8)
    episode = EvalEpisode(frames, torch.zeros(T, A), 800)
    paths = render_evaluation(_model(), episode, tmp_path, context=CONTEXT)
    assert [p.name for p in paths] == ["eval_episode_000000800.gif", "open_loop_000000800.gif"]
    with Image.open(paths[0]) as im:
        assert im.n_frames == T + 1 and im.size == (128, 128)
    with Image.open(paths[1]) as im:  # the reset frame on: the replay's steps start there too
        assert im.n_frames == T + 1 and im.size == (384, 128)

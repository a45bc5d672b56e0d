"""Videos from ``evaluate``: Bullet renders off-screen, gymnasium envs get ``render_mode``, and
a video that cannot be written fails before any episode runs."""

from __future__ import annotations

import sys
from typing import ClassVar

import gymnasium
import numpy as np
import pytest
from PIL import Image

from saferl.envs import EnvError, GymVecEnv
from saferl.envs.make import render_kwargs
from saferl.evaluation import VideoBackendError, check_video_path, evaluate


class PaintedLineEnv(gymnasium.Env):
    """A point on a line that draws itself: the frame's red channel is ``10 × step``.

    Ten-step episodes; reward 1 and cost ``1[step is even]`` per step.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}
    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return (np.full(1, self.t, np.float32), 1.0, self.t >= 10, False,
                {"cost": float(self.t % 2 == 0)})

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = np.zeros((4, 6, 3), np.uint8)
        frame[..., 0] = 10 * self.t
        return frame


gymnasium.register("saferl_tests/PaintedLine-v0", entry_point=PaintedLineEnv)


def zero_policy(obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
    return np.zeros((len(obs), 1), np.float32)


def test_gymnasium_ids_that_accept_render_mode_record_every_step(tmp_path) -> None:
    assert render_kwargs("saferl_tests/PaintedLine-v0") == {"render_mode": "rgb_array"}
    path = tmp_path / "line.gif"
    result = evaluate(zero_policy, env="saferl_tests/PaintedLine-v0", episodes=2, video=path)
    np.testing.assert_array_equal(result.returns, [10.0, 10.0])
    np.testing.assert_array_equal(result.costs[:, 0], [5.0, 5.0])
    with Image.open(path) as gif:
        frames = [np.asarray(frame.convert("RGB")) for frame in _frames(gif)]
    # The first episode of copy 0: the frame before each of its 10 steps.
    assert [int(f[0, 0, 0]) for f in frames] == [10 * t for t in range(10)]


def _frames(gif: Image.Image) -> list[Image.Image]:
    out = []
    for index in range(gif.n_frames):
        gif.seek(index)
        out.append(gif.copy())
    return out


def test_a_copy_built_without_render_mode_names_the_fix() -> None:
    vec = GymVecEnv(lambda: PaintedLineEnv(), num_envs=1)
    with pytest.raises(EnvError, match="render_mode='rgb_array'"):
        vec.render(0)
    vec.close()


def test_bullet_renders_off_screen_without_a_display(tmp_path, monkeypatch) -> None:
    """Bullet-Safety-Gym's old-API ``render(mode=...)`` is asked for ``rgb_array`` frames:
    ``render()`` alone means ``"human"`` there, which opens a window (and kills the process
    without a display)."""
    monkeypatch.delenv("DISPLAY", raising=False)
    assert render_kwargs("SafetyBallRun-v0") == {}
    vec = GymVecEnv("SafetyBallRun-v0", num_envs=1)
    frame = vec.render(0)
    vec.close()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[-1] == 3
    assert frame.std() > 0  # a picture, not a blank buffer


def test_native_tasks_need_no_render_arguments() -> None:
    assert render_kwargs("saferl/BallCircle-v0") == {}


@pytest.mark.parametrize("name,error,message", [
    ("clip.avi", ValueError, "must end in .gif"),
    ("clip", ValueError, "must end in .gif"),
    ("clip.mp4", VideoBackendError, "saferl\\[video\\]"),
])
def test_unwritable_video_paths_fail_before_any_episode(name, error, message, tmp_path,
                                                         monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # ffmpeg plugin not installed

    def must_not_run(obs, deterministic=True):
        raise AssertionError("an episode ran before the video path was checked")

    with pytest.raises(error, match=message):
        check_video_path(tmp_path / name)
    with pytest.raises(error, match=message):
        evaluate(must_not_run, env="saferl_tests/PaintedLine-v0", episodes=1,
                 video=tmp_path / name)
    assert not (tmp_path / name).exists()

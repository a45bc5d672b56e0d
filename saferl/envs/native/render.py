"""A tiny numpy rasteriser for top-down frames of the native tasks (no display needed)."""

from __future__ import annotations

import numpy as np


def render_topdown(position: np.ndarray, extent: float, size: int = 256,
                   circle_radius: float | None = None, x_limit: float | None = None,
                   y_limit: float | None = None,
                   center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Draw the task's geometry and the agent into an RGB ``uint8`` image.

    Args:
        position: The agent's xy position.
        extent: Half-width of the square view in metres.
        size: Image side in pixels.
        circle_radius: Draw the target circle (Circle task).
        x_limit: Shade ``|x| > x_limit`` as unsafe (Circle task).
        y_limit: Shade ``|y| > y_limit`` as unsafe (Run task).
        center: World point at the image centre.

    Returns:
        ``[size, size, 3]`` uint8 image, +y up.
    """
    coords = (np.arange(size) + 0.5) / size * 2 * extent - extent
    x = coords[None, :] + center[0]
    y = -coords[:, None] + center[1]
    image = np.full((size, size, 3), 245, np.uint8)
    unsafe = np.zeros((size, size), bool)
    if x_limit is not None:
        unsafe |= np.abs(x) > x_limit
    if y_limit is not None:
        unsafe |= np.abs(y) > y_limit
    image[unsafe] = (250, 200, 200)
    pixel = 2 * extent / size
    if circle_radius is not None:
        ring = np.abs(np.hypot(x, y) - circle_radius) < 1.5 * pixel
        image[ring] = (120, 160, 230)
    agent = np.hypot(x - position[0], y - position[1]) < max(0.4, 3 * pixel)
    image[agent] = (30, 30, 30)
    return image

"""The closed-form matting Laplacian (Levin, Lischinski & Weiss 2008), restricted to the
unknown pixels of a trimap.

Written with numpy rather than imported from pymatting, whose numba compilation on first import
is slow and which builds the whole image's Laplacian (why: docs/quality.md). The values are the
same as pymatting's ``cf_laplacian`` (3x3 windows, regularisation ``epsilon`` added to the
covariance before dividing by the window area).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import sparse

# Windows per batch: 81 float64 pair values each, so about 26 MB of temporaries per batch.
WINDOW_BATCH = 40_000
_OFFSETS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def _window_values(colors: np.ndarray, epsilon: float) -> np.ndarray:
    """Laplacian contributions of each 3x3 window: (n, 9, 9) for colours (n, 9, 3)."""
    centered = colors - colors.mean(axis=1, keepdims=True)
    covariance = np.matmul(centered.transpose(0, 2, 1), centered)
    covariance += epsilon * np.eye(3)
    covariance /= 9.0
    projected = np.matmul(centered, np.linalg.inv(covariance))  # (n, 9, 3)
    affinity = np.matmul(projected, centered.transpose(0, 2, 1))  # (n, 9, 9)
    affinity += 1.0
    affinity *= -1.0 / 9.0
    affinity += np.eye(9)
    result: np.ndarray = affinity
    return result


def unknown_system(
    image: np.ndarray, trimap: np.ndarray, epsilon: float = 1e-7
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The linear system ``L_uu x = rhs`` of closed-form matting for the unknown pixels.

    ``image`` is HxWx3 float (0..1), ``trimap`` HxW uint8 with 0 (background), 255
    (foreground) and 128 (unknown). Returns ``L_uu`` (csr, float32) over the unknown pixels in
    row-major order, and ``rhs = -L_uk @ alpha_known``.
    """
    h, w = trimap.shape
    unknown = trimap == 128
    # Every window that holds an unknown pixel: the centres within one pixel of the band, away
    # from the border (windows are whole, as in pymatting).
    centres = cv2.dilate(unknown.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    centres[0, :] = centres[-1, :] = False
    centres[:, 0] = centres[:, -1] = False
    cy, cx = np.nonzero(centres)
    count = int(np.count_nonzero(unknown))
    index = np.full(h * w, -1, np.int64)  # pixel -> row of the system (-1: known)
    index[unknown.ravel()] = np.arange(count)
    known_fg = (trimap == 255).ravel().astype(np.float64)
    flat = image.reshape(-1, 3).astype(np.float64)
    matrix = sparse.csr_matrix((count, count), dtype=np.float32)
    rhs = np.zeros(count, np.float64)
    for start in range(0, cy.size, WINDOW_BATCH):
        ys, xs = cy[start : start + WINDOW_BATCH], cx[start : start + WINDOW_BATCH]
        pixels = (ys[:, None] + _OFFSETS[:, 0]) * w + (xs[:, None] + _OFFSETS[:, 1])  # (n, 9)
        values = _window_values(flat[pixels], epsilon)
        rows = np.broadcast_to(index[pixels][:, :, None], values.shape)
        cols = np.broadcast_to(pixels[:, None, :], values.shape)
        keep = rows >= 0
        rows, cols, values = rows[keep], cols[keep], values[keep]
        col_rows = index[cols]
        inner = col_rows >= 0
        matrix = matrix + sparse.csr_matrix(
            (values[inner].astype(np.float32), (rows[inner], col_rows[inner])), shape=(count, count)
        )
        # Known columns move to the right-hand side (only foreground ones are non-zero).
        outer = ~inner
        rhs -= np.bincount(
            rows[outer], weights=values[outer] * known_fg[cols[outer]], minlength=count
        )
    return matrix, rhs

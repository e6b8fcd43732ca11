"""The motion model of a track: a Kalman filter on the segment's centroid and size, with the
camera's own motion taken out and OC-SORT's observation-centric re-update after a gap.

State ``(x, y, s, vx, vy, vs)``: centroid (pixels), size ``s = sqrt(area)`` and their
velocities per frame, constant-velocity model (SORT, Bewley et al. 2016; the noise scaled by
the object's size as in ByteTrack's ``KalmanFilterXYAH``). Three additions, each a function:

* **Camera motion** — :func:`camera_motion` fits one similarity transform (rotation, scale,
  translation) to the optical flow of the background (pixels no thing segment claims) with
  RANSAC: the flow field's global component. :func:`apply_camera` moves every track's state
  (and its last observation) with it before the prediction, so the filter's velocity is the
  object's own motion and a parked car stays put while the camera pans or drives past.
* **Uncertainty that grows with time lost** — :func:`predict` adds process noise every frame,
  so the position covariance of a track lost for g frames grows with g (≈ g³ through the
  velocity term): the gate of re-identification widens as the track ages.
* **Observation-centric re-update** (OC-SORT, Cao et al., CVPR 2023, Sec. 3.2 "ORU") — a track
  found again after a gap of g frames re-estimates its velocity from the virtual trajectory
  between its last observation and the new one, ``(z − z_last) / g``, instead of keeping the
  velocity that coasted (and drifted) through the gap: :func:`reupdate_after_gap`.

Arrays: a state's ``mean`` is ``(6,) float64``, ``cov`` ``(6, 6)``; batched functions take
``(N, 6)`` means and ``(N, 6, 6)`` covariances.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

STATE_DIM = 6
OBS_DIM = 3
_F = np.eye(STATE_DIM)
_F[:OBS_DIM, OBS_DIM:] = np.eye(OBS_DIM)
_H = np.eye(OBS_DIM, STATE_DIM)


@dataclass(frozen=True)
class MotionNoise:
    """Noise of the filter, as fractions of the object's size (pixels per pixel of size).

    ``position``/``velocity``: process noise per frame of the centroid and its velocity;
    ``observation``: of a measured centroid (mask noise, partial occlusion); ``size_factor``
    scales all three for the size component (sizes change slower than positions move);
    ``min_size``: sizes below it count as it for the noise; ``size_observation``: noise of a
    measured size (an occluder halves the visible size from one frame to the next).
    """

    position: float = 0.05
    velocity: float = 0.5
    observation: float = 0.1
    initial_velocity: float = 0.5
    size_factor: float = 0.5
    min_size: float = 10.0
    size_observation: float = 0.3

    def _observation_std(self, s) -> np.ndarray:
        """Std of a measured (x, y, size) at size ``s`` (scalar or ``(N, 1)``): the visible size of
        a partly hidden object drops at once, so a measured size is far less sure than a centroid."""
        s = np.maximum(s, self.min_size)
        return s * np.array([self.observation, self.observation, self.size_observation])

    def _scale(self, s: float) -> np.ndarray:
        s = max(float(s), self.min_size)  # a sliver's centroid is noisy by a pixel or two, whatever its size
        return np.array([s, s, self.size_factor * s])


@dataclass
class MotionState:
    """One track's filter: ``mean`` ``(6,)``, ``cov`` ``(6, 6)``, and ``anchor`` ``(3,)`` — its
    last observation ``(x, y, s)`` carried along with the camera (the start of ORU's virtual
    trajectory)."""

    mean: np.ndarray
    cov: np.ndarray
    anchor: np.ndarray

    @property
    def position(self) -> np.ndarray:
        return self.mean[:2]

    @property
    def size(self) -> float:
        return float(self.mean[2])

    def copy(self) -> "MotionState":
        return MotionState(self.mean.copy(), self.cov.copy(), self.anchor.copy())

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "cov": self.cov.ravel().tolist(), "anchor": self.anchor.tolist()}

    @classmethod
    def from_json(cls, record: dict) -> "MotionState":
        return cls(np.asarray(record["mean"], np.float64), np.asarray(record["cov"], np.float64).reshape(6, 6),
                   np.asarray(record["anchor"], np.float64))


def initiate(z: np.ndarray, noise: MotionNoise) -> MotionState:
    """A new track at observation ``z = (x, y, s)``, at rest with a wide velocity prior."""
    z = np.asarray(z, np.float64)
    scale = noise._scale(z[2])
    std = np.concatenate([noise.observation * scale, noise.initial_velocity * scale])
    return MotionState(np.concatenate([z, np.zeros(OBS_DIM)]), np.diag(std ** 2), z.copy())


def predict(state: MotionState, noise: MotionNoise, steps: int = 1) -> MotionState:
    """The state ``steps`` frames later (constant velocity, process noise added every frame)."""
    means, covs, anchors = predict_batch(state.mean[None], state.cov[None], state.anchor[None], None, noise, steps)
    return MotionState(means[0], covs[0], anchors[0])


def predict_batch(means: np.ndarray, covs: np.ndarray, anchors: np.ndarray, transform: np.ndarray | None,
                  noise: MotionNoise, steps: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many tracks at once: the camera ``transform`` applied (:func:`apply_camera`), then
    ``steps`` frames of :func:`predict`. ``means`` ``(N, 6)``, ``covs`` ``(N, 6, 6)``,
    ``anchors`` ``(N, 3)``; returns new arrays of the same shapes (one numpy pass per step,
    not one per track: 40 tracks cost what one does)."""
    means, covs, anchors = (np.array(a, np.float64, copy=True) for a in (means, covs, anchors))
    if transform is not None:
        jac, shift, scale = _camera_jacobian(transform)
        means = means @ jac.T
        means[:, :2] += shift
        covs = jac @ covs @ jac.T
        anchors[:, :2] = anchors[:, :2] @ jac[:2, :2].T + shift
        anchors[:, 2] *= scale
    factors = np.array([1.0, 1.0, noise.size_factor])
    for _ in range(max(int(steps), 0)):
        size = np.maximum(means[:, 2], noise.min_size)[:, None] * factors
        q = np.concatenate([noise.position * size, noise.velocity * size], axis=1) ** 2
        means = means @ _F.T
        covs = _F @ covs @ _F.T
        covs[:, np.arange(STATE_DIM), np.arange(STATE_DIM)] += q
    means[:, 2] = np.maximum(means[:, 2], 1.0)
    return means, covs, anchors


def update(state: MotionState, z: np.ndarray, noise: MotionNoise) -> MotionState:
    """The Kalman update with observation ``z = (x, y, s)``; the anchor becomes ``z``."""
    z = np.asarray(z, np.float64)
    r = np.diag(noise._observation_std(z[2]) ** 2)
    s = _H @ state.cov @ _H.T + r
    gain = np.linalg.solve(s, _H @ state.cov).T
    mean = state.mean + gain @ (z - _H @ state.mean)
    cov = (np.eye(STATE_DIM) - gain @ _H) @ state.cov
    return MotionState(mean, 0.5 * (cov + cov.T), z.copy())


def update_batch(means: np.ndarray, covs: np.ndarray, zs: np.ndarray, noise: MotionNoise) -> tuple[np.ndarray, np.ndarray]:
    """:func:`update` for ``N`` tracks at once: ``means`` ``(N, 6)``, ``covs`` ``(N, 6, 6)``,
    observations ``zs`` ``(N, 3)`` → the updated ``(means, covs)`` (the anchors become ``zs``).

    The same operations as :func:`update`, stacked: numpy runs the same BLAS / LAPACK kernel on
    every matrix of a stack as on a single one, so the result is bit for bit :func:`update`'s
    (tests/test_association_fast_paths.py), at one numpy call per step instead of one per track.
    """
    means, covs, zs = (np.asarray(a, np.float64) for a in (means, covs, zs))
    r = noise._observation_std(zs[:, 2:3]) ** 2
    s = _H @ covs @ _H.T + r[:, :, None] * np.eye(OBS_DIM)
    gain = np.swapaxes(np.linalg.solve(s, _H @ covs), 1, 2)
    innovation = zs - (_H @ means[:, :, None])[:, :, 0]
    new_means = means + (gain @ innovation[:, :, None])[:, :, 0]
    new_covs = (np.eye(STATE_DIM) - gain @ _H) @ covs
    return new_means, 0.5 * (new_covs + np.swapaxes(new_covs, 1, 2))


def reupdate_after_gap(state: MotionState, z: np.ndarray, gap: int, noise: MotionNoise) -> MotionState:
    """OC-SORT's observation-centric re-update for a track found again after ``gap`` ≥ 2 frames.

    OC-SORT replays the filter along the virtual trajectory that joins the last observation
    and the new one; with a constant-velocity model that trajectory's velocity is
    ``(z − anchor) / gap`` (both in the current camera frame), so the state restarts at ``z``
    with that velocity, its uncertainty that of a velocity measured over ``gap`` frames.
    """
    z = np.asarray(z, np.float64)
    scale = noise._scale(z[2])
    velocity = (z - state.anchor) / max(gap, 1)
    velocity_std = np.sqrt(2.0) * noise.observation * scale / max(gap, 1) + noise.velocity * scale
    cov = np.diag(np.concatenate([noise.observation * scale, velocity_std]) ** 2)
    return MotionState(np.concatenate([z, velocity]), cov, z.copy())


# ---------------------------------------------------------------- camera motion
def camera_motion(flow: np.ndarray, labels: np.ndarray | None = None, background: np.ndarray | None = None,
                  samples: int = 1500, threshold_px: float = 2.0) -> np.ndarray | None:
    """The camera's motion from the previous frame to this one: a ``(2, 3)`` similarity transform
    ``p_now = A @ (p_prev, 1)``, or ``None`` when the background has too few flow samples.

    ``flow``: ``(H, W, 2) float32`` from this frame to the previous one (pixel p of this frame
    was at p + flow(p)); ``labels``: ``(H, W)`` compact index map and ``background``: ``(K + 1,)
    bool``, which of its values to fit on (VOID and stuff, not things); ``None`` for all pixels. A regular subsample of about ``samples`` pixels; RANSAC with an inlier
    threshold of ``threshold_px`` pixels, so moving objects and bad flow do not bend the fit.
    """
    height, width = flow.shape[:2]
    stride = max(1, int(np.sqrt(height * width / max(samples, 1))))
    ys, xs = np.mgrid[stride // 2:height:stride, stride // 2:width:stride]
    if labels is not None and background is not None:
        keep = np.asarray(background, bool)[labels[ys, xs]]
        ys, xs = ys[keep], xs[keep]
    if ys.size < 12:
        return None
    now = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32)
    prev = now + flow[ys, xs].reshape(-1, 2)
    transform, inliers = cv2.estimateAffinePartial2D(prev, now, method=cv2.RANSAC,
                                                     ransacReprojThreshold=threshold_px, maxIters=200,
                                                     confidence=0.99, refineIters=5)
    if transform is None or inliers is None or int(inliers.sum()) < 12:
        return None
    return transform.astype(np.float64)


def _camera_jacobian(transform: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(6, 6)`` map of a state under a ``(2, 3)`` similarity, its shift ``(2,)`` and scale."""
    linear, shift = transform[:, :2], transform[:, 2]
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    jac = np.eye(STATE_DIM)
    jac[:2, :2] = jac[3:5, 3:5] = linear
    jac[2, 2] = jac[5, 5] = scale
    return jac, shift, scale


def apply_camera(state: MotionState, transform: np.ndarray | None) -> MotionState:
    """The state moved by a camera ``transform`` (``(2, 3)`` similarity; ``None`` = no motion):
    positions mapped, velocities rotated and scaled, sizes scaled, covariance propagated."""
    if transform is None:
        return state
    means, covs, anchors = predict_batch(state.mean[None], state.cov[None], state.anchor[None], transform,
                                         MotionNoise(), steps=0)
    return MotionState(means[0], covs[0], anchors[0])


# ---------------------------------------------------------------- association terms
def _innovation_cov(means: np.ndarray, covs: np.ndarray, noise: MotionNoise) -> np.ndarray:
    """``(N, 3, 3)``: the covariance of the predicted observation, observation noise included."""
    r = noise._observation_std(means[:, 2:3]) ** 2
    return covs[:, :OBS_DIM, :OBS_DIM] + np.einsum("ni,ij->nij", r, np.eye(OBS_DIM))


def mahalanobis_sq(means: np.ndarray, covs: np.ndarray, z: np.ndarray, noise: MotionNoise) -> np.ndarray:
    """Squared Mahalanobis distances ``(N, M)`` of observations ``z`` ``(M, 3)`` under the
    predicted observation distributions of ``N`` states (``means`` ``(N, 6)``, ``covs``
    ``(N, 6, 6)``), the observation noise included (at each track's size)."""
    means, covs, z = np.asarray(means, np.float64), np.asarray(covs, np.float64), np.asarray(z, np.float64)
    if not len(means) or not len(z):
        return np.zeros((len(means), len(z)))
    inv = np.linalg.inv(_innovation_cov(means, covs, noise))
    d = z[None, :, :] - means[:, None, :OBS_DIM]
    return np.einsum("nmi,nij,nmj->nm", d, inv, d)


def motion_affinity(d2: np.ndarray) -> np.ndarray:
    """A squared Mahalanobis distance over the 3 observed dimensions made a [0, 1] affinity:
    ``exp(−½ d² / 3)``, the likelihood relative to the mode as a geometric mean per dimension
    (the form of :func:`operators.association.affinity.gaussian_affinity`)."""
    return np.exp(-0.5 * np.asarray(d2) / OBS_DIM)


def outside_frame(state: MotionState, height: int, width: int, margin: float = 0.5) -> bool:
    """Whether the predicted centroid lies more than ``margin`` × size beyond the frame's edge:
    the object has left (the centroid of a box half out sits on the edge)."""
    x, y, s = state.mean[:3]
    pad = margin * max(s, 1.0)
    return bool(x < -pad or y < -pad or x > width - 1 + pad or y > height - 1 + pad)

"""Dense optical flow operators. Contract: ``estimator(current, previous)`` with two
``(H, W, 3) uint8`` RGB frames returns ``(H, W, 2) float32`` flow *current → previous*
(see :mod:`operators.formats.flo`)."""

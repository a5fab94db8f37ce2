"""`edgetl shift`: does a folder of new images look like what the run's model was trained and calibrated on?

- settings.py: ShiftSettings;
- activations.py: the one pass over an image set (logits, penultimate features, int8 range coverage);
- reference.py: the training side (class means and covariance of the train split, the val split's pass), cached
  in the run directory;
- tests.py: the scores and tests (Mahalanobis, MMD permutation test, coverage, accuracy);
- run.py: the stage, writing RUN/shift.json and RUN/shift.png.
"""

from edgetl.shift.settings import ShiftSettings

__all__ = ["ShiftSettings"]

"""A trained success classifier as the reward of a real robot: ``(reward, success)`` from one observation.

The file comes from ``fleetrl reward train`` (:func:`fleetrl.learners.reward_classifier.save_classifier`). As in
HIL-SERL (arXiv 2410.21845), the reward is sparse: 1 and success when the classifier's success probability
reaches the threshold, else 0. The threshold stored in the file was chosen on validation frames for few false
successes; give ``threshold`` to override it (HIL-SERL's robots use 0.7 to 0.85).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch

from fleetrl.learners.reward_classifier import load_classifier


class ClassifierReward:
    """Scores ``obs[image_key]`` (uint8 ``[S, S, 3]``) with a saved success classifier, on the CPU.

    Attributes: ``threshold``, ``image_key``, ``image_size``, ``meta`` (the file's meta) and ``last_probability``
    (the probability of the last scored observation; None before the first).
    """

    def __init__(self, path: str | os.PathLike, threshold: float | None = None, image_key: str = "image") -> None:
        self.model, self.meta = load_classifier(path)
        self.threshold = float(self.meta["threshold"] if threshold is None else threshold)
        if not 0 < self.threshold < 1:
            raise ValueError(f"reward_threshold: must be in (0, 1), got {self.threshold}")
        self.image_key = image_key
        self.image_size = self.model.image_size
        self.last_probability: float | None = None

    def probability(self, obs: Mapping[str, np.ndarray]) -> float:
        """The classifier's success probability for ``obs``."""
        if self.image_key not in obs:
            raise ValueError(f"{self.image_key}: the success classifier needs this observation key, expected shape "
                             f"{(self.image_size,) * 2 + (3,)}; got keys {sorted(obs)}")
        image = np.asarray(obs[self.image_key])
        expected = (self.image_size, self.image_size, 3)
        if image.shape != expected:
            raise ValueError(f"{self.image_key}: the success classifier expects images of shape {expected}, got "
                             f"{image.shape}")
        with torch.no_grad():
            logit = self.model(torch.from_numpy(np.ascontiguousarray(image))[None])
            self.last_probability = float(torch.sigmoid(logit)[0])
        return self.last_probability

    def __call__(self, obs: Mapping[str, np.ndarray]) -> tuple[float, bool]:
        """``(1.0, True)`` when the success probability is ``>= threshold``, else ``(0.0, False)``."""
        success = self.probability(obs) >= self.threshold
        return (1.0, True) if success else (0.0, False)

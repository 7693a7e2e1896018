"""On-disk episode datasets (HDF5): the format ``fleetrl collect`` writes and offline-RL loaders read.

One file holds many episodes. :class:`EpisodeFileWriter` streams episodes into a temporary file beside the target and
atomically renames it onto the target only when every episode is written and flushed, so a crash, a full disk or
Ctrl-C never leaves a half-written file and never harms an existing one. :func:`read_episodes` reads the file back
lazily, one episode at a time, and turns every kind of damage into a :class:`DatasetError` naming the file.
The layout is documented in ``docs/datasets.md``.

Layout of the package: :mod:`~fleetrl.datasets.episode` holds the format constants, :class:`DatasetError` and
:class:`Episode` with its validation; :mod:`~fleetrl.datasets.guarded_file` the file object the writer hands to
HDF5; :mod:`~fleetrl.datasets.writer` :class:`EpisodeFileWriter`; :mod:`~fleetrl.datasets.reader` the readers.
:mod:`~fleetrl.datasets.robomimic` and :mod:`~fleetrl.datasets.rlds` turn other formats (robomimic HDF5, RLDS/TFDS
directories) into :class:`Episode` objects.
Everything public is re-exported here: import from ``fleetrl.datasets``.
"""

from fleetrl.datasets.episode import (
    EPISODE_RESERVED,
    EPISODES,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_COMPRESSION,
    OBSERVATIONS,
    ROOT_RESERVED,
    STEP_KEYS,
    SUPPORTED_VERSIONS,
    DatasetError,
    Episode,
)
from fleetrl.datasets.reader import dataset_info, load_episodes, read_episodes
from fleetrl.datasets.rlds import read_rlds  # imports tensorflow_datasets only when called
from fleetrl.datasets.robomimic import read_robomimic
from fleetrl.datasets.writer import EpisodeFileWriter

__all__ = [
    "EPISODES",
    "EPISODE_RESERVED",
    "FORMAT",
    "FORMAT_VERSION",
    "IMAGE_COMPRESSION",
    "OBSERVATIONS",
    "ROOT_RESERVED",
    "STEP_KEYS",
    "SUPPORTED_VERSIONS",
    "DatasetError",
    "Episode",
    "EpisodeFileWriter",
    "dataset_info",
    "load_episodes",
    "read_episodes",
    "read_rlds",
    "read_robomimic",
]

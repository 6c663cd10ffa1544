"""Numbers from the CLAP authors' public release (OpenCLAP, MIT) that clap-data must match.

``openclap_dataset_statistics_32.json`` is the q01/q99 normalisation table of the released
checkpoints (embodiment → action/state → q01/q99, 14 values each, 32-frame chunks). It ships with
the package so that ``--stats openclap`` works in any installation.
"""

from __future__ import annotations

import json
from importlib import resources

OPENCLAP_STATS = "openclap_dataset_statistics_32.json"


def openclap_stats_table() -> dict:
    return json.loads(resources.files(__package__).joinpath(OPENCLAP_STATS).read_text())

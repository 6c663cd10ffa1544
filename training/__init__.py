"""Policy training on exported shards (CLAP-NTP; CLAP-RF + Knowledge Matching), installed as ``clap_data.training``.

``NTPPolicy`` (:mod:`clap_data.training.ntp_policy`) and ``RFPolicy`` (:mod:`clap_data.training.rf_policy`) are
exported lazily, so that importing the shard loader or the data helpers does not import ``transformers``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NTPPolicy", "RFPolicy"]


def __getattr__(name: str) -> Any:
    if name == "NTPPolicy":
        from clap_data.training.ntp_policy import NTPPolicy

        return NTPPolicy
    if name == "RFPolicy":
        from clap_data.training.rf_policy import RFPolicy

        return RFPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

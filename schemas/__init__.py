"""The unified dataset schema: one definition of features, dtypes, names and version.

Writers, readers and tests import it from here (``clap_data.schemas``) so that the layout of a
clap-data dataset is stated exactly once.
"""

from clap_data.schemas.unified_v1 import (
    ARM_MASK_NAMES,
    CAMERA_NAMES,
    CLAP_META_PATH,
    POSE14_NAMES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    TOKEN_COLUMNS,
    UnknownSchemaError,
    camera_feature_key,
    data_arrow_schema,
    frame_features,
    read_clap_meta,
    video_feature,
)

__all__ = [
    "ARM_MASK_NAMES",
    "CAMERA_NAMES",
    "CLAP_META_PATH",
    "POSE14_NAMES",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "TOKEN_COLUMNS",
    "UnknownSchemaError",
    "camera_feature_key",
    "data_arrow_schema",
    "frame_features",
    "read_clap_meta",
    "video_feature",
]

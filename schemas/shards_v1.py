"""The training-shard schema: what ``clap-data export`` writes and ``clap_data.training`` reads, stated once.

One row is one training sample: the chunk that starts at frame ``t`` of one episode (METHOD.md §5, §6). A shard
folder holds ``train/`` and ``heldout/`` (the shared provenance split, :mod:`clap_data.splits`), each a set of
``shard-NNNNN.parquet`` files, and ``manifest.json`` beside them (counts, tokenizer identities, statistics ids,
mixing weights, seed).

Images are stored compressed (JPEG bytes, resized to the export's image size) in one binary column per unified
camera, null where the dataset lacks that camera. Tokens are stored in storage order (left arm's ``Nq`` codes,
then the right arm's, as ``action_tokens``) and in their text form (right arm first, METHOD.md §3). The action
chunk is the normalised ``[32, 14]`` model input of the Act-VAE (relative to the state at ``t``, the dataset's
statistics), flattened row-major, for the RF head.
"""

from __future__ import annotations

import pyarrow as pa

SHARDS_SCHEMA_NAME = "clap-data/shards"
SHARDS_SCHEMA_VERSION = 1
TRAIN_SPLIT = "train"
HELDOUT_SPLIT = "heldout"
SHARD_MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{index:05d}.parquet"
CHUNK_STEPS = 32
ACTION_DIM = 14
NUM_TOKENS = 16  # 2 arms × Nq = 8 with the release Act-VAE; an export of another Act-VAE has 2·Nq

# provenance
SAMPLE_ID = "sample_id"  # "<dataset id>/<source episode id>/<frame>": stable across re-exports
DATASET = "dataset"  # the source dataset's provenance id (source/dataset_id)
EPISODE_INDEX = "episode_index"
SOURCE_EPISODE_ID = "source_episode_id"
FRAME_INDEX = "frame_index"
# language and embodiment
EMBODIMENT = "embodiment"  # the dataset's robot_type ("human" for human video)
INSTRUCTION = "instruction"
SUBTASK = "subtask"
# images: one JPEG column per unified camera
IMAGE_PREFIX = "image."
CAMERAS_IN_PROMPT_ORDER = ("head", "wrist_right", "wrist_left")  # METHOD.md §5
# tokens
TOKENS = "tokens"  # int16[2·Nq] (16 with the release Act-VAE), storage order
TOKENS_TEXT = "tokens_text"  # "<ACT_i>"×2·Nq, right arm first
TOKEN_SOURCE = "token_source"  # "action_tokens" or "pseudo_tokens"
PADDED = "padded"  # the chunk (or t + gap) ran past the episode's end
# continuous targets
STATE = "state"  # float32[14], absolute
ACTIONS = "actions"  # float32[32·14], normalised chunk, row-major
ARM_MASK = "arm_mask"  # bool[2], left/right active


def image_column(camera: str) -> str:
    return IMAGE_PREFIX + camera


def shard_arrow_schema(cameras: tuple[str, ...] = CAMERAS_IN_PROMPT_ORDER, num_tokens: int = NUM_TOKENS) -> pa.Schema:
    """The Arrow schema of a shard; every shard of an export has the same one (cameras and ``num_tokens`` = 2·Nq
    of the export's Act-VAE included)."""
    return pa.schema([
        (SAMPLE_ID, pa.string()),
        (DATASET, pa.string()),
        (EPISODE_INDEX, pa.int64()),
        (SOURCE_EPISODE_ID, pa.string()),
        (FRAME_INDEX, pa.int64()),
        (EMBODIMENT, pa.string()),
        (INSTRUCTION, pa.string()),
        (SUBTASK, pa.string()),
        *((image_column(camera), pa.binary()) for camera in cameras),
        (TOKENS, pa.list_(pa.int16(), num_tokens)),
        (TOKENS_TEXT, pa.string()),
        (TOKEN_SOURCE, pa.string()),
        (PADDED, pa.bool_()),
        (STATE, pa.list_(pa.float32(), ACTION_DIM)),
        (ACTIONS, pa.list_(pa.float32(), CHUNK_STEPS * ACTION_DIM)),
        (ARM_MASK, pa.list_(pa.bool_(), 2)),
    ])

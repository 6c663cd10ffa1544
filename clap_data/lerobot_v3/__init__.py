"""Writing and reading the LeRobot v3.0 layout, split like lerobot's own datasets package:
``layout`` (paths and file rolling), ``stats`` (feature statistics), ``writer`` (assemble a
dataset from staged episodes), ``reader`` (summaries for ``clap-data info``)."""

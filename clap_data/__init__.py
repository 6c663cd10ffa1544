"""clap-data: heterogeneous robot datasets and human video → one tokenized LeRobot v3 corpus."""

__version__ = "0.1.0"

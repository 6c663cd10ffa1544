"""The ``clap-data`` command line: parses arguments, calls a pipeline, prints a summary.

One module per family of commands; importing them registers their commands on the shared app.
"""

from clap_data.cli import dataset_commands  # noqa: F401, I001  (registers ingest, info, normstats, chunk first)
from clap_data.cli import act_vae_commands  # noqa: F401  (registers train, tokenize, detokenize, eval, sweep, predict)
from clap_data.cli import vd_vae_commands  # noqa: F401  (registers train vd-vae on the train verb)
from clap_data.cli import pseudolabel_commands  # noqa: F401  (registers pseudolabel vd-vae)
from clap_data.cli import ntp_commands  # noqa: F401  (registers train ntp, eval ntp and predict ntp)
from clap_data.cli import rf_commands  # noqa: F401  (registers train rf)
from clap_data.cli import stats_commands  # noqa: F401  (registers sql and stats)
from clap_data.cli import export_commands  # noqa: F401  (registers export)
from clap_data.cli import report_commands  # noqa: F401  (registers report)
from clap_data.cli import hub_commands  # noqa: F401  (registers publish)
from clap_data.cli import serve_commands  # noqa: F401  (registers serve)
from clap_data.cli import edit_commands  # noqa: F401  (registers merge and adopt)
from clap_data.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()

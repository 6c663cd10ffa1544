"""``clap-data report``: one self-contained HTML page about tokenized datasets.

``queries`` reads the numbers through the corpus views and token statistics (DuckDB, streaming), ``figures``
draws them (matplotlib, Agg, PNG bytes), ``act_vae_views`` adds what needs the Act-VAE checkpoint (its codebook
in 2-D, decoded chunks), ``html`` lays the page out and ``build`` puts it together and writes it atomically.
"""

from clap_data.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]

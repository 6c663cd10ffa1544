"""Source adapters: one module per dataset family, all following :mod:`clap_data.sources.base`."""

"""Ray Data pipelines, one module per job (installed as ``clap_data.pipelines``)."""

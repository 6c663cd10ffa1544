"""Frame pairs, training and evaluation of the VD-VAE (METHOD.md §4); its modules live in clap_data.models."""

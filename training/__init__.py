"""Policy training on exported shards (CLAP-NTP, CLAP-RF + Knowledge Matching), installed as
``clap_data.training``. Nothing is implemented here yet: see the README's roadmap."""

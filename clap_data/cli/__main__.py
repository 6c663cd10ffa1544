from clap_data.cli import main

main()

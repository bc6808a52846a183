"""One module per ``isnet`` subcommand, each exposing ``add_parser(subparsers)``."""

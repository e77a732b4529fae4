"""One module per `meissonic` subcommand."""

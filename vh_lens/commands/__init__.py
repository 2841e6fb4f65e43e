"""Subcommands of the vh-lens command line."""

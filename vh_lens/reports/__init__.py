"""HTML reports written by the command line."""

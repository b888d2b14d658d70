"""The `feedback` command line."""

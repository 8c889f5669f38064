"""Command-line interface: thin wrappers that parse, load configs and call the library."""

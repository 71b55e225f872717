"""Entry points: thin command-line wrappers around `components`."""

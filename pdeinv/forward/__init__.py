"""Forward models (plain Firedrake) wrapped as parameter-to-observable maps."""

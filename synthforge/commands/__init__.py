"""Command implementations behind the one ``synthforge`` entry point (argv parsing lives only here)."""

"""The doctor: checks that this machine can run the example, one line per finding with its fix
(standard library only: it runs before anything is installed)."""

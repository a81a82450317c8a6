"""The command layer: one module per ``glioseg`` subcommand, above every engine.

Each module's ``run(args)`` reads the parsed arguments, calls the engines with typed values,
prints what the user asked for and returns the exit code; ``glioseg.cli`` parses and imports
the one module a command line needs.
"""

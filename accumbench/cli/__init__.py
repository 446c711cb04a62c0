"""The command line: `app` holds the Typer app and its commands (train, sweep, report, pick-best,
check-ga), `inference` the predict and export commands, `command_line` Click's errors as one line and
RunConfig's fields as options. Each command parses, calls one library function and maps errors to exit codes."""

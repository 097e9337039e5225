"""``kas serve``: the local HTTP front end over the same library the CLI uses (imported by that command
alone, so every other command starts as fast as before)."""

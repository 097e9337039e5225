"""Allow ``python -m kas`` for environments where the console script is not on PATH."""

from kas.cli import main
from kas.cli.completion import COMPLETE_VAR

if __name__ == "__main__":
    # Click would derive the completion variable from the program name ("python -m kas"), so the shell
    # scripts' _KAS_COMPLETE would be ignored and a TAB would print the help instead of completions.
    main(complete_var=COMPLETE_VAR)

"""Allow ``python -m kas`` for environments where the console script is not on PATH."""

from kas.cli import main

if __name__ == "__main__":
    main()

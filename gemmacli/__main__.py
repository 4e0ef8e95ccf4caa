"""`python -m gemmacli`: the same entry point as the `gemmacli` script."""

from gemmacli.cli.core import main

if __name__ == "__main__":
    main()

"""`python -m edgetl`: the same CLI as the `edgetl` script (and the entry point torchrun launches)."""

from edgetl.cli import main

if __name__ == "__main__":
    main()

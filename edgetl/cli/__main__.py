"""`python -m edgetl.cli`, as the tests and older notes run it: the same as `python -m edgetl`."""

from edgetl.cli import main

if __name__ == "__main__":
    main()

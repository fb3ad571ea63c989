"""`python -m bench.science run …` (see the package docstring)."""

from bench.science.cli import main

if __name__ == "__main__":
    main()

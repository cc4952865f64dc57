"""`python -m tracer_cli ...` runs the same CLI as the `tracer` console script (torchrun uses this)."""

from tracer_cli.cli import main

if __name__ == "__main__":
    main()

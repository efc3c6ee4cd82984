"""`python -m spectra_cli` runs the command line."""

from spectra_cli.main import main

main()

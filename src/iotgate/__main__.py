"""`python -m iotgate`: the iotgate command."""

from iotgate.cli import main

main()

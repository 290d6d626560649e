"""The ``agents-persistence`` command line and its demo (a simulated agent fleet)."""

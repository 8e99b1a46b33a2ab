"""`evaluate` metric modules shipped with the package; load them with `evaluate.load(<folder>)`."""

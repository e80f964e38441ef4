"""`kiln tune`: hyperparameter search with Ray Tune, every trial a `kiln train` with overrides."""

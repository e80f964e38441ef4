"""The training engine: plain functions (loop.py) driven by fit() (trainer.py), with callbacks."""

"""growbench: a reproducibility benchmark suite for methods that grow neural networks."""

__version__ = "0.1.0"

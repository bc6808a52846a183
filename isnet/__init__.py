"""isnet: chest X-ray classifiers that attend to the lungs, and the evidence that they do."""

__version__ = "0.1.0"

"""isnet: chest X-ray classifiers that attend to the lungs, and the evidence that they do."""

import logging

__version__ = "0.1.0"

# the library reports progress and problems through the ``isnet`` logger (``logging.getLogger(__name__)`` in each
# module); it prints nothing unless the application configures logging (the ``isnet`` command does: isnet.cli)
logging.getLogger(__name__).addHandler(logging.NullHandler())

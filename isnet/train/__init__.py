"""Training: the trainer loop, checkpoints, and the pluggable method interface it calls."""

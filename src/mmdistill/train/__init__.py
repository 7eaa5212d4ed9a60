"""Training, evaluation, checkpoints and latency measurement."""

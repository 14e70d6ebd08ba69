"""Fine-tuning our potentials on DFT labels: data, optimizers, the trainer and checkpoints."""

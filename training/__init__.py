"""Training: ALPRO pre-training and fine-tuning, and the synthetic corpus they run on."""

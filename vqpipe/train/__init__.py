"""Fine-tuning: MOS readers, dataset mixing, one train loop per method, Ray Train wrappers."""

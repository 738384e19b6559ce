"""Training: data as device tensors, augmentation, models, optimizers, the epoch loop and its loggers."""

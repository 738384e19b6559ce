"""Using a trained run: images prepared as MNIST was, eval, predict and export."""

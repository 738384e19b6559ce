"""mnist-cli: train, evaluate and run small image classifiers on MNIST and FashionMNIST."""

__version__ = "0.1.0"

"""mnist-cli: train, evaluate and run small image classifiers on MNIST, FashionMNIST, the MNIST family and your own image folders."""

__version__ = "0.1.0"

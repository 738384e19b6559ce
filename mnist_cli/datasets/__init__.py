"""Datasets: the MNIST family's IDX files, users' own image folders, and image files made into model inputs."""

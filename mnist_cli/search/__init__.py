"""Hyperparameter search: the Optuna loop behind hparams_search=optuna, its study, and the launchers."""

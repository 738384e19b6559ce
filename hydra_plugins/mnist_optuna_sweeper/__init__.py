"""mnist-cli's Optuna sweeper for Hydra: `hydra/sweeper=mnist_optuna` (what hparams_search=optuna selects)."""

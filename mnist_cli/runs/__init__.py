"""Run folders: their files, checkpoints, metrics, resuming, and the leaderboard over many runs."""

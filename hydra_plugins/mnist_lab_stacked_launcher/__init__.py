"""A Hydra launcher that hands jobs differing only in stackable keys to the app as one batch
(`hydra/launcher=stacked`), so that it can train them as one model; see launcher.py."""

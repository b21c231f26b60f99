"""The operator side: the Ray cluster a stack runs on, deploying to it, waiting until healthy,
draining, stopping, status."""

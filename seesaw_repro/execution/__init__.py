"""Runs as folders on disk, and the executors that train them: here, or through Slurm."""

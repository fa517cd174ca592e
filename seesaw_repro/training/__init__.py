"""What a run's training loop adds to mmengine's: hooks that leave its state on disk,
and the LVIS metric over the numpy evaluator."""

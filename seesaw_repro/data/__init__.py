"""Inputs of runs: the generated tiny LVIS and MNIST-LT datasets, the paper's
pretrained backbones."""

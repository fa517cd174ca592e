"""Registered mmdet modules: the losses, TSD, HTC-Lite, CARAFE, DCNv2, test-time
augmentation, and Tables 10-11's long-tailed classifier."""

"""Reward data over quality tables: preference pairs, per-group normalisation, calibration to
a MOS scale and a calibrated ensemble (``vqpipe pairs | calibrate | fuse``, ``vqpipe filter
--normalize``)."""

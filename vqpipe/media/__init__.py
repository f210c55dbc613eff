"""Decoding images (Pillow) and sampling video frames (decord / PyAV), with input limits.

Runs in the CPU decode stage of a job (:mod:`vqpipe.media.device_decode`: JPEGs decoded on
the accelerator instead, ``decode=gpu``).
"""

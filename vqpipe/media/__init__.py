"""Decoding images (Pillow) and sampling video frames (decord / PyAV), with input limits.

Filled by the pipeline issue; runs in the CPU decode stage of a job.
"""
